/**
 * What the attack tests need beyond the protocol's own client: a raw engine.io websocket (to send what
 * no Floe client would), a /healthz watcher, and the server process's peak resident memory.
 */
import { readFile } from 'node:fs/promises';
import { Worker } from 'node:worker_threads';
import WebSocket from 'ws';

export interface RawSocket {
  ws: WebSocket;
  /** Text and binary messages received, in order. */
  received: (string | Buffer)[];
  closed: Promise<{ code: number; reason: string }>;
}

/**
 * Opens the socket.io endpoint as a bare websocket. Resolves with the HTTP status when the upgrade is
 * refused, else with the socket once engine.io's open packet arrived.
 */
export function rawSocket(url: string, headers: Record<string, string> = {}): Promise<RawSocket | { status: number }> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`${url.replace(/^http/, 'ws')}/socket.io/?EIO=4&transport=websocket`, { headers });
    const received: (string | Buffer)[] = [];
    const closed = new Promise<{ code: number; reason: string }>((done) =>
      ws.on('close', (code, reason) => done({ code, reason: reason.toString() })),
    );
    ws.on('unexpected-response', (_request, response) => {
      resolve({ status: response.statusCode ?? 0 });
      ws.terminate();
    });
    ws.on('error', (error) => {
      if (ws.readyState !== WebSocket.CLOSED) reject(error);
    });
    ws.on('message', (data: Buffer, isBinary) => {
      received.push(isBinary ? data : data.toString());
      if (received.length === 1) resolve({ ws, received, closed });
    });
  });
}

/** Joins the default namespace on an open raw socket and waits for the server's connect packet. */
export async function joinNamespace(socket: RawSocket): Promise<void> {
  socket.ws.send('40');
  const until = Date.now() + 5000;
  while (!socket.received.some((m) => typeof m === 'string' && m.startsWith('40'))) {
    if (Date.now() > until) throw new Error(`no namespace connect: ${JSON.stringify(socket.received.slice(0, 3))}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

/** Sends one socket.io binary event (`event`, one binary argument) as a socket.io client would. */
export function sendBinaryEvent(socket: RawSocket, event: string, bytes: Uint8Array): void {
  socket.ws.send(`451-${JSON.stringify([event, { _placeholder: true, num: 0 }])}`);
  socket.ws.send(bytes);
}

/** The binary payloads received so far (server frames). */
export function binaryFrames(socket: RawSocket): Uint8Array[] {
  return socket.received.filter((m): m is Buffer => typeof m !== 'string').map((b) => new Uint8Array(b));
}

export interface HealthWatch {
  stop(): Promise<{ samples: number; p99Ms: number; maxMs: number; failures: number }>;
}

// in a worker thread: the test's own thread blocks while it builds and sends attack payloads, and that
// wait must not be charged to the server
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
    try {
      const response = await fetch(workerData.url + '/healthz', { signal: AbortSignal.timeout(10000) });
      await response.arrayBuffer();
      if (!response.ok) failures++;
    } catch {
      failures++;
    }
    latencies.push(performance.now() - started);
    await new Promise((resolve) => setTimeout(resolve, workerData.everyMs));
  }
  parentPort.postMessage({ latencies, failures });
})();
`;

/** Asks `/healthz` every `everyMs` from a worker thread until stopped, timing each answer. */
export function watchHealth(url: string, everyMs = 25): HealthWatch {
  const worker = new Worker(HEALTH_WATCHER, { eval: true, workerData: { url, everyMs } });
  const result = new Promise<{ latencies: number[]; failures: number }>((resolve, reject) => {
    worker.once('message', resolve);
    worker.once('error', reject);
  });
  return {
    async stop() {
      worker.postMessage('stop');
      const { latencies, failures } = await result;
      await worker.terminate();
      const sorted = [...latencies].sort((a, b) => a - b);
      const p99 = sorted[Math.min(sorted.length - 1, Math.floor(0.99 * sorted.length))] ?? Infinity;
      return { samples: sorted.length, p99Ms: p99, maxMs: sorted.at(-1) ?? Infinity, failures };
    },
  };
}

/** The process's peak resident set (VmHWM), MiB: Linux only. */
export async function peakRssMiB(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  const match = /^VmHWM:\s+(\d+) kB/m.exec(status);
  if (!match) throw new Error(`no VmHWM in /proc/${pid}/status`);
  return Number(match[1]) / 1024;
}
