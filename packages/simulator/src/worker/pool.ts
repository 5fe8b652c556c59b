/**
 * A client's worker thread, kept for the whole simulation and given one task at a time; started from
 * source (through tsx) when the simulation runs from source, from the build otherwise.
 */
import { Worker } from 'node:worker_threads';
import type { WorkerEvent, WorkerScores, WorkerTask } from './protocol.js';

const fromSource = import.meta.url.endsWith('.ts');

export interface WorkerResult {
  scores: WorkerScores;
  rule?: string | undefined;
}

export class ClientWorker {
  private readonly worker: Worker;
  private current:
    | {
        task: WorkerTask;
        onEvent: (event: WorkerEvent) => void;
        resolve: (r: WorkerResult) => void;
        reject: (e: Error) => void;
      }
    | undefined;
  private failure: Error | undefined;

  constructor(readonly clientId: string) {
    const main = new URL(fromSource ? './main.ts' : './main.js', import.meta.url);
    // Node 20 does not apply --import to workers: from source, the worker registers tsx itself first
    this.worker = fromSource
      ? new Worker(
          `import(${JSON.stringify(import.meta.resolve('tsx/esm/api'))})` +
            `.then(({ register }) => { register(); return import(${JSON.stringify(main.href)}); })`,
          { eval: true, execArgv: ['--conditions=floe-source'] },
        )
      : new Worker(main);
    this.worker.on('message', (event: WorkerEvent) => {
      const current = this.current;
      if (!current) return;
      if (event.type === 'result') {
        this.current = undefined;
        current.resolve({ scores: event.scores, rule: event.rule });
      } else if (event.type === 'error') {
        this.current = undefined;
        current.reject(new Error(`${clientId} (${current.task.kind}): ${event.message}`));
      } else current.onEvent(event);
    });
    const fail = (error: Error) => {
      this.failure = error;
      this.current?.reject(error);
      this.current = undefined;
    };
    this.worker.on('error', (error) =>
      fail(new Error(`${clientId}: worker failed: ${error.message}`, { cause: error })),
    );
    this.worker.on('exit', (code) => fail(new Error(`${clientId}: worker exited with ${code}`)));
  }

  /** Runs `task` (one at a time); `onEvent` sees its events, the promise resolves with its result. */
  run(task: WorkerTask, onEvent: (event: WorkerEvent) => void): Promise<WorkerResult> {
    if (this.failure) return Promise.reject(this.failure);
    if (this.current) return Promise.reject(new Error(`${this.clientId}: a ${this.current.task.kind} task is running`));
    return new Promise((resolve, reject) => {
      this.current = { task, onEvent, resolve, reject };
      this.worker.postMessage(task);
    });
  }

  async close(): Promise<void> {
    this.worker.removeAllListeners('exit');
    await this.worker.terminate();
  }
}
