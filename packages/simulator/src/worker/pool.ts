/**
 * Worker threads for a simulation's clients, kept for the whole run: a few (about two per core), each
 * hosting some of the clients and running their tasks side by side. A worker's start-up (tsx, the
 * workspace's modules, ORT) costs seconds of CPU; one per client made start-up a minute of a 2-core
 * run (decision 0023). Started from source (through tsx) when the simulation runs from source, from
 * the build otherwise.
 */
import { Worker } from 'node:worker_threads';
import type { WorkerEvent, WorkerMessage, WorkerScores, WorkerTask } from './protocol.js';

const fromSource = import.meta.url.endsWith('.ts');

export interface WorkerResult {
  scores: WorkerScores;
  rule?: string | undefined;
}

interface Pending {
  task: WorkerTask;
  onEvent: (event: WorkerEvent) => void;
  resolve: (result: WorkerResult) => void;
  reject: (error: Error) => void;
}

class HostWorker {
  readonly worker: Worker;
  readonly pending = new Map<number, Pending>();
  failure: Error | undefined;

  constructor(index: number) {
    const main = new URL(fromSource ? './main.ts' : './main.js', import.meta.url);
    // Node 20 does not apply --import to workers: from source, the worker registers tsx itself first
    this.worker = fromSource
      ? new Worker(
          `import(${JSON.stringify(import.meta.resolve('tsx/esm/api'))})` +
            `.then(({ register }) => { register(); return import(${JSON.stringify(main.href)}); })`,
          { eval: true, execArgv: ['--conditions=floe-source'] },
        )
      : new Worker(main);
    this.worker.on('message', ({ id, event }: WorkerMessage) => {
      const pending = id === undefined ? undefined : this.pending.get(id);
      if (!pending || id === undefined) return;
      if (event.type === 'result') {
        this.pending.delete(id);
        pending.resolve({ scores: event.scores, rule: event.rule });
      } else if (event.type === 'error') {
        this.pending.delete(id);
        pending.reject(new Error(`${pending.task.client.id} (${pending.task.kind}): ${event.message}`));
      } else pending.onEvent(event);
    });
    const fail = (error: Error) => {
      this.failure = error;
      for (const pending of this.pending.values()) pending.reject(error);
      this.pending.clear();
    };
    this.worker.on('error', (error) => fail(new Error(`worker ${index} failed: ${error.message}`, { cause: error })));
    this.worker.on('exit', (code) => fail(new Error(`worker ${index} exited with ${code}`)));
  }
}

export class WorkerPool {
  private readonly hosts: HostWorker[];
  private readonly hostOf = new Map<string, HostWorker>();
  private nextId = 0;

  constructor(size: number) {
    this.hosts = Array.from({ length: Math.max(1, size) }, (_, i) => new HostWorker(i));
  }

  /** Runs `task` on its client's worker (clients are dealt to workers in turn as they first appear). */
  run(task: WorkerTask, onEvent: (event: WorkerEvent) => void): Promise<WorkerResult> {
    const host =
      this.hostOf.get(task.client.id) ?? this.hosts.find((_, i) => i === this.hostOf.size % this.hosts.length);
    if (!host) return Promise.reject(new Error('the pool has no workers'));
    this.hostOf.set(task.client.id, host);
    if (host.failure) return Promise.reject(host.failure);
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      host.pending.set(id, { task, onEvent, resolve, reject });
      host.worker.postMessage({ id, task });
    });
  }

  /**
   * Ends the workers. Each is asked to exit at its next turn of the event loop rather than terminated:
   * onnxruntime-node runs a session synchronously on the worker's thread, and a worker terminated in the
   * middle of a run aborts the whole process (a C++ exception from the binding when it calls back into
   * JavaScript). One that does not exit within 10 s is terminated anyway.
   */
  async close(): Promise<void> {
    await Promise.all(
      this.hosts.map(async (h) => {
        h.worker.removeAllListeners('exit');
        const exited = new Promise<void>((resolve) => h.worker.once('exit', () => resolve()));
        h.worker.postMessage({ close: true });
        const timer = setTimeout(() => void h.worker.terminate(), 10_000);
        await exited;
        clearTimeout(timer);
      }),
    );
  }
}
