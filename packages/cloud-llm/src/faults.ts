/**
 * Fault injection for tests and benchmarks: an added round-trip latency with uniform jitter, a share
 * of requests answered with an error status, drawn from a seeded generator so runs repeat, and a
 * stream that goes quiet after its headers (a cloud that accepts and then hangs).
 */
import { Random } from '@floe/model';

export interface FaultOptions {
  /** Added to every /v1 request before it is handled (ms). */
  latencyMs: number;
  /** Uniform extra latency in [0, jitterMs) (ms). */
  jitterMs: number;
  /** Share of /v1 requests answered with `errorStatus` instead (0-1). */
  errorRate: number;
  errorStatus: number;
  /** A streamed answer sends its headers, then nothing for this long (ms). */
  streamStallMs: number;
  seed: number;
}

export const NO_FAULTS: FaultOptions = {
  latencyMs: 0,
  jitterMs: 0,
  errorRate: 0,
  errorStatus: 500,
  streamStallMs: 0,
  seed: 0,
};

export class Faults {
  private options: FaultOptions;
  private random: Random;

  constructor(options: Partial<FaultOptions> = {}) {
    this.options = checkFaults({ ...NO_FAULTS, ...options });
    this.random = new Random(this.options.seed);
  }

  get current(): FaultOptions {
    return { ...this.options };
  }

  set(options: Partial<FaultOptions>): void {
    this.options = checkFaults({ ...this.options, ...options });
    if (options.seed !== undefined) this.random = new Random(options.seed);
  }

  /** The delay to wait, and whether to fail, for one request. */
  draw(): { delayMs: number; fail: boolean } {
    const { latencyMs, jitterMs, errorRate } = this.options;
    return { delayMs: latencyMs + this.random.next() * jitterMs, fail: this.random.next() < errorRate };
  }
}

function checkFaults(options: FaultOptions): FaultOptions {
  const bad = (what: string) => {
    throw new Error(`fault injection: ${what}`);
  };
  if (!(options.latencyMs >= 0) || !(options.jitterMs >= 0) || !(options.streamStallMs >= 0)) {
    bad('latency, jitter and stream stall are milliseconds >= 0');
  }
  if (!(options.errorRate >= 0 && options.errorRate <= 1)) bad('the error rate is a share in [0, 1]');
  if (!Number.isInteger(options.errorStatus) || options.errorStatus < 400 || options.errorStatus > 599) {
    bad('the error status is an HTTP error code (400-599)');
  }
  return options;
}
