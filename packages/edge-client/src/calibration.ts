/**
 * A device measures what training costs it, with the job's own shapes: six short ONNX Runtime runs, each
 * in a process of its own so that its memory is its own (calibration-probe.ts), at the top layer only
 * and at all layers, and at each micro-batch. The planner's cost model is fitted to them:
 *
 *   step seconds  = batch * factor(microBatch) * (base + perLayer * k)
 *   memory (MiB)  = fixed + perLayer * k + microBatch * (perRow + perRowLayer * k)
 *
 * with k the number of adapted top layers. Measured on this machine the model explains the runs it was
 * not fitted to within a few percent (`pnpm bench planner` checks every tier's plan end to end).
 */
import type { LlamaConfig } from '@floe/model';
import { probeInChild, type ProbeRequest, type ProbeResult } from './calibration-probe.js';
import type { TrainingCost } from './planner.js';

export interface CalibrationOptions {
  model: string;
  config: LlamaConfig;
  seqLen: number;
  targetModules: string[];
  threads?: number;
  /** Measurements of each configuration (default 2). */
  passes?: number;
  /**
   * Steps per measured run (default 20): the first only measures warm-up; memory is read at the end,
   * after as many steps as a round takes, because the JS heap collects garbage lazily.
   */
  steps?: number;
  onProgress?: (done: number, total: number, what: string) => void;
}

const mean = (xs: readonly number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;

export function median(xs: readonly number[]): number {
  const sorted = [...xs].sort((a, b) => a - b);
  const middle = Math.floor(sorted.length / 2);
  return sorted.length % 2
    ? (sorted[middle] as number)
    : ((sorted[middle - 1] as number) + (sorted[middle] as number)) / 2;
}

/**
 * Seconds of a step in the steady state: the median of the steps after the first (which warms caches
 * up), so that a step slowed by another process on a shared machine does not move the estimate.
 */
function stepSeconds(result: ProbeResult): number {
  const steps = result.computeSeconds.length > 1 ? result.computeSeconds.slice(1) : result.computeSeconds;
  return median(steps);
}

/** Multiply-adds x 2 of a training step per token: the frozen forward, and the backward down to `k` layers. */
export function trainingFlopsPerToken(config: LlamaConfig, seqLen: number, k: number): number {
  const h = config.hidden_size;
  const kv = (config.num_key_value_heads / config.num_attention_heads) * h;
  const perLayer = 2 * (h * h + 2 * h * kv + h * h + 3 * h * config.intermediate_size) + 4 * seqLen * h;
  const head = 2 * h * config.vocab_size;
  // backward through frozen weights needs input gradients only: about the forward's cost again
  return config.num_hidden_layers * perLayer + head + k * perLayer + head;
}

export async function calibrate(options: CalibrationOptions): Promise<TrainingCost> {
  const layers = options.config.num_hidden_layers;
  const threads = options.threads ?? 2;
  const batchSize = 8;
  const request = (k: number, microBatch: number): ProbeRequest => ({
    model: options.model,
    seqLen: options.seqLen,
    microBatch,
    batchSize,
    rank: 8,
    alpha: 16,
    targetModules: options.targetModules,
    layers: k === layers ? null : Array.from({ length: k }, (_, i) => layers - k + i),
    steps: options.steps ?? 20,
    slowdown: 1,
    threads,
  });
  const runs: [number, number][] = [
    [layers, 8],
    [1, 8],
    [layers, 2],
    [1, 2],
    [layers, 4],
    [layers, 1],
  ];
  // every configuration twice, the second pass after all the others, so that a slow spell of a shared
  // machine moves one measurement of each rather than all measurements of one
  const passes = options.passes ?? 2;
  const measured = new Map<string, ProbeResult[]>();
  let done = 0;
  for (let pass = 0; pass < passes; pass++) {
    for (const [k, m] of runs) {
      options.onProgress?.(done++, runs.length * passes, `${k} layer(s), micro-batch ${m}`);
      const key = `${k}/${m}`;
      measured.set(key, [...(measured.get(key) ?? []), await probeInChild(request(k, m))]);
    }
  }
  options.onProgress?.(done, done, 'done');
  // one result per configuration: the mean of each pass's steady step times and memory
  const results = new Map<string, ProbeResult>();
  for (const [key, list] of measured) {
    const steady = mean(list.map(stepSeconds));
    results.set(key, {
      buildSeconds: mean(list.map((r) => r.buildSeconds)),
      stepSeconds: [],
      computeSeconds: [mean(list.map((r) => r.computeSeconds[0] ?? steady)), steady],
      baselineMiB: 0,
      peakMiB: mean(list.map((r) => r.peakMiB - r.baselineMiB)),
    });
  }
  const get = (k: number, m: number) => results.get(`${k}/${m}`) as ProbeResult;
  const span = Math.max(1, layers - 1);

  // time: two layer counts at micro-batch 8 give base and per-layer cost; other micro-batches a factor
  const [all8, one8] = [stepSeconds(get(layers, 8)) / batchSize, stepSeconds(get(1, 8)) / batchSize];
  const perLayer = layers > 1 ? (all8 - one8) / span : 0;
  const base = one8 - perLayer;
  const microBatchFactor: Record<number, number> = { 8: 1 };
  for (const m of [4, 2, 1]) microBatchFactor[m] = stepSeconds(get(layers, m)) / batchSize / all8;

  // memory: four corners (1 or all layers, micro-batch 2 or 8) fix the four coefficients
  const memory = (k: number, m: number) => get(k, m).peakMiB - get(k, m).baselineMiB;
  const slopeAll = (memory(layers, 8) - memory(layers, 2)) / 6; // perRow + perRowLayer * L
  const slopeOne = (memory(1, 8) - memory(1, 2)) / 6; // perRow + perRowLayer
  const perRowLayer = layers > 1 ? (slopeAll - slopeOne) / span : 0;
  const perRow = slopeOne - perRowLayer;
  const fixedAll = memory(layers, 8) - 8 * slopeAll; // fixed + perLayer * L
  const fixedOne = memory(1, 8) - 8 * slopeOne; // fixed + perLayer
  const memoryPerLayer = layers > 1 ? (fixedAll - fixedOne) / span : 0;

  const flops = trainingFlopsPerToken(options.config, options.seqLen, layers) * options.seqLen * batchSize;
  return {
    seqLen: options.seqLen,
    threads,
    secondsPerRow: { base, perLayer },
    microBatchFactor,
    memoryMiB: { fixed: fixedOne - memoryPerLayer, perLayer: memoryPerLayer, perRow, perRowLayer },
    buildSeconds: mean([...results.values()].map((r) => r.buildSeconds)),
    warmupSeconds: mean([...results.values()].map((r) => (r.computeSeconds[0] ?? 0) - stepSeconds(r))),
    hostGflops: flops / (all8 * batchSize) / 1e9,
  };
}
