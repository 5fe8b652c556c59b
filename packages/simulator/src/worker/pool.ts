/**
 * Worker threads for a simulation's clients: one per client and task, started from source (through
 * tsx) when the simulation runs from source, from the build otherwise.
 */
import { Worker } from 'node:worker_threads';
import type { WorkerEvent, WorkerScores, WorkerTask } from './protocol.js';

const fromSource = import.meta.url.endsWith('.ts');

export interface WorkerResult {
  scores: WorkerScores;
  rule?: string | undefined;
}

/** Runs `task` in a worker thread; `onEvent` sees every event, the promise resolves with the result. */
export function runWorker(task: WorkerTask, onEvent: (event: WorkerEvent) => void): Promise<WorkerResult> {
  const main = new URL(fromSource ? './main.ts' : './main.js', import.meta.url);
  // Node 20 does not apply --import to workers: from source, the worker registers tsx itself first
  const worker = fromSource
    ? new Worker(
        `import(${JSON.stringify(import.meta.resolve('tsx/esm/api'))})` +
          `.then(({ register }) => { register(); return import(${JSON.stringify(main.href)}); })`,
        { eval: true, workerData: task, execArgv: ['--conditions=floe-source'] },
      )
    : new Worker(main, { workerData: task });
  return new Promise((resolve, reject) => {
    let result: WorkerResult | undefined;
    worker.on('message', (event: WorkerEvent) => {
      if (event.type === 'result') result = { scores: event.scores, rule: event.rule };
      onEvent(event);
    });
    worker.on('error', (error) =>
      reject(new Error(`${task.client.id} (${task.kind}): ${error.message}`, { cause: error })),
    );
    worker.on('exit', (code) => {
      if (result) resolve(result);
      else reject(new Error(`${task.client.id} (${task.kind}): worker exited with ${code} before its result`));
    });
  });
}
