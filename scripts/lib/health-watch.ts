/**
 * /healthz latency seen from a worker thread while something else runs (an attack, a large round):
 * the caller's own thread may block, and that wait must not be charged to the server.
 */
import { Worker } from 'node:worker_threads';

export interface HealthSummary {
  samples: number;
  p99Ms: number;
  maxMs: number;
  failures: number;
}

export interface HealthRecord {
  /** Latency figures; `within` keeps only the requests sent inside those [start, end] epoch-ms windows. */
  summary(within?: readonly (readonly [number, number])[]): HealthSummary;
}

export interface HealthWatch {
  stop(): Promise<HealthRecord>;
}

const HEALTH_WATCHER = `
const { parentPort, workerData } = require('node:worker_threads');
const latencies = [];
let failures = 0;
let running = true;
parentPort.on('message', () => { running = false; });
(async () => {
  // one unrecorded request first: a fresh server's first answer pays for compiling the route
  await fetch(workerData.url + '/healthz').then((r) => r.arrayBuffer(), () => undefined);
  while (running) {
    const started = performance.now();
    const sentAt = Date.now();
    try {
      const response = await fetch(workerData.url + '/healthz', { signal: AbortSignal.timeout(10000) });
      await response.arrayBuffer();
      if (!response.ok) failures++;
    } catch {
      failures++;
    }
    latencies.push([sentAt, performance.now() - started]);
    await new Promise((resolve) => setTimeout(resolve, workerData.everyMs));
  }
  parentPort.postMessage({ latencies, failures });
})();
`;

/** Asks `/healthz` every `everyMs` from a worker thread until stopped, timing each answer. */
export function watchHealth(url: string, everyMs = 25): HealthWatch {
  const worker = new Worker(HEALTH_WATCHER, { eval: true, workerData: { url, everyMs } });
  const result = new Promise<{ latencies: [number, number][]; failures: number }>((resolve, reject) => {
    worker.once('message', resolve);
    worker.once('error', reject);
  });
  return {
    async stop() {
      worker.postMessage('stop');
      const { latencies, failures } = await result;
      await worker.terminate();
      return {
        summary(within) {
          const kept = within
            ? latencies.filter(([at]) => within.some(([from, to]) => at >= from && at <= to))
            : latencies;
          const sorted = kept.map(([, ms]) => ms).sort((a, b) => a - b);
          const p99 = sorted[Math.min(sorted.length - 1, Math.floor(0.99 * sorted.length))] ?? Infinity;
          return { samples: sorted.length, p99Ms: p99, maxMs: sorted.at(-1) ?? Infinity, failures };
        },
      };
    },
  };
}
