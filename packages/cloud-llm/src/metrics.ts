/** Prometheus metrics of the stand-in (prom-client), one registry per app. */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

export class CloudMetrics {
  readonly registry = new Registry();
  readonly requests = new Counter({
    name: 'floe_cloud_requests_total',
    help: 'Requests answered, by route and status',
    labelNames: ['route', 'status'],
    registers: [this.registry],
  });
  readonly promptTokens = new Counter({
    name: 'floe_cloud_prompt_tokens_total',
    help: 'Prompt tokens submitted (times n)',
    registers: [this.registry],
  });
  readonly prefixCachedTokens = new Counter({
    name: 'floe_cloud_prefix_cached_tokens_total',
    help: 'Prompt tokens taken from the prefix cache instead of prefilled',
    registers: [this.registry],
  });
  readonly completionTokens = new Counter({
    name: 'floe_cloud_completion_tokens_total',
    help: 'Tokens generated',
    registers: [this.registry],
  });
  readonly runs = new Histogram({
    name: 'floe_cloud_model_run_seconds',
    help: 'Wall time of one model run, by kind (prefill or decode)',
    labelNames: ['kind'],
    buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1],
    registers: [this.registry],
  });
  readonly batchRows = new Histogram({
    name: 'floe_cloud_batch_rows',
    help: 'Sequences in one decode run',
    buckets: [1, 2, 4, 8, 16, 32],
    registers: [this.registry],
  });
  readonly running = new Gauge({
    name: 'floe_cloud_running_sequences',
    help: 'Sequences in the batch',
    registers: [this.registry],
  });
  readonly waiting = new Gauge({
    name: 'floe_cloud_waiting_sequences',
    help: 'Sequences queued for the batch',
    registers: [this.registry],
  });
  readonly injectedFaults = new Counter({
    name: 'floe_cloud_injected_faults_total',
    help: 'Requests failed on purpose by fault injection',
    registers: [this.registry],
  });

  constructor() {
    collectDefaultMetrics({ register: this.registry, prefix: 'floe_cloud_process_' });
  }
}
