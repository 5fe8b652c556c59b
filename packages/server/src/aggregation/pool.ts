/**
 * Aggregation off the event loop: a piscina pool of worker threads (decision 0026). While a round of a
 * thousand updates is decoded, clustered and factorized, the main thread keeps answering heartbeats,
 * REST and new updates.
 */
import { Piscina } from 'piscina';
import type { AggregationInput, AggregationOutput } from './round-aggregation.js';

const fromSource = import.meta.url.endsWith('.ts');

export class AggregationPool {
  private readonly pool: Piscina<AggregationInput, AggregationOutput>;

  constructor(threads = 1) {
    this.pool = new Piscina({
      filename: new URL(fromSource ? './worker-from-source.mjs' : './worker.js', import.meta.url).href,
      // one worker from the start: loading it (and ONNX Runtime) is not paid by the first round
      minThreads: 1,
      maxThreads: Math.max(1, threads),
      idleTimeout: 60_000,
      ...(fromSource ? { execArgv: ['--conditions=floe-source'] } : {}),
    });
  }

  aggregate(input: AggregationInput): Promise<AggregationOutput> {
    // the frames are copied into the worker (transferring would detach the store's buffers)
    return this.pool.run(input);
  }

  async close(): Promise<void> {
    await this.pool.destroy();
  }
}
