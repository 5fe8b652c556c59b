/**
 * Training speed of the two engines side by side, in one run: LoRA r=8 fine-tuning of edge-small
 * and full pretraining of the cloud config, with the ORT matmul ceiling measured beside them.
 *
 * FLOPs per token: pretraining 6N (forward 2N, backward 4N); LoRA fine-tuning 4N (forward 2N and
 * the input gradients 2N; frozen weights get no weight gradient, LoRA terms are negligible).
 * Attention-score FLOPs are left out of both, as is usual.
 */
import {
  LORA_MODULES,
  MODEL_PRESETS,
  type LlamaConfig,
  OrtTrainer,
  Random,
  type Trainer,
  type TrainBatch,
  createTfjsTrainer,
  initLora,
  initWeights,
  measureMatmulGflops,
  parameterCount,
  selectTfjsBackend,
} from '@floe/model';
import type { BenchResult } from '../lib/bench-report.js';

const THREADS = 2;

function corpusBatch(random: Random, rows: number, seq: number): TrainBatch {
  const ids = Array.from({ length: rows }, () => Array.from({ length: seq + 1 }, () => 32 + random.integer(95)));
  return {
    inputIds: ids.map((r) => r.slice(0, -1)),
    targets: ids.map((r) => r.slice(1)),
    weights: ids.map((r) => r.slice(1).map(() => 1)),
  };
}

async function tokensPerSecond(trainer: Trainer, batch: TrainBatch, steps: number): Promise<number> {
  // two warm-up steps: ORT's first runs also grow its memory arena
  for (let i = 0; i < 2; i++) await trainer.step(batch);
  const start = performance.now();
  for (let i = 0; i < steps; i++) await trainer.step(batch);
  const tokens = batch.inputIds.reduce((n, r) => n + r.length, 0);
  return (steps * tokens) / ((performance.now() - start) / 1000);
}

interface Workload {
  name: string;
  config: LlamaConfig;
  lora: boolean;
  rows: number;
  /** ORT rows per gradient run; rows / microBatch runs are accumulated per step. */
  microBatch: number;
  seq: number;
  /** The matmul shape [rows x k] x [k x n] of its MLP, for the ceiling. */
  ceilingShape: [number, number, number];
  flopsPerToken: number;
  ortSteps: number;
  tfjsSteps: number;
}

export async function run(): Promise<BenchResult> {
  const selection = await selectTfjsBackend();
  console.log(`tfjs backend: ${selection.backend}; ORT intra-op threads: ${THREADS}`);
  const small = MODEL_PRESETS['edge-small'];
  const cloud = MODEL_PRESETS.cloud;
  const workloads: Workload[] = [
    {
      name: 'edge-small LoRA r=8',
      config: small,
      lora: true,
      rows: 8,
      microBatch: 8,
      seq: 128,
      ceilingShape: [1024, 128, 352],
      flopsPerToken: 4 * parameterCount(small),
      ortSteps: 5,
      tfjsSteps: 1,
    },
    {
      name: 'cloud pretraining',
      config: cloud,
      lora: false,
      rows: 16,
      microBatch: 8,
      seq: 128,
      ceilingShape: [1024, 256, 608],
      flopsPerToken: 6 * parameterCount(cloud),
      ortSteps: 3,
      tfjsSteps: 1,
    },
  ];

  const rows: BenchResult['rows'] = [];
  const results: Record<string, unknown> = {};
  for (const w of workloads) {
    const ceiling = await measureMatmulGflops(...w.ceilingShape, THREADS);
    console.log(`${w.name}: ORT matmul ceiling ${w.ceilingShape.join('x')} ${ceiling.toFixed(1)} GFLOP/s`);
    const weights = initWeights(w.config, 1);
    const adapter = w.lora
      ? initLora(w.config, { r: 8, lora_alpha: 16, target_modules: [...LORA_MODULES] }, 2)
      : undefined;
    const batch = corpusBatch(new Random(3), w.rows, w.seq);
    const options = { learningRate: 1e-3, maxGradNorm: 1, weightDecay: 0.01, adapter };

    const ortTrainer = await OrtTrainer.create(w.config, weights, {
      ...options,
      microBatch: w.microBatch,
      seqLen: w.seq,
      threads: THREADS,
    });
    const ortTokPerSec = await tokensPerSecond(ortTrainer, batch, w.ortSteps);
    await ortTrainer.dispose();
    const rssAfterOrt = process.resourceUsage().maxRSS / 1024;
    console.log(`${w.name}: ORT ${ortTokPerSec.toFixed(0)} tok/s`);

    const tfjsTrainer = createTfjsTrainer(w.config, weights, options);
    const tfjsTokPerSec = await tokensPerSecond(tfjsTrainer, batch, w.tfjsSteps);
    await tfjsTrainer.dispose();
    const rssAfterTfjs = process.resourceUsage().maxRSS / 1024;
    console.log(`${w.name}: tfjs ${tfjsTokPerSec.toFixed(1)} tok/s`);

    const ortGflops = (ortTokPerSec * w.flopsPerToken) / 1e9;
    const tfjsGflops = (tfjsTokPerSec * w.flopsPerToken) / 1e9;
    results[w.name] = {
      parameters: parameterCount(w.config),
      tokensPerStep: w.rows * w.seq,
      flopsPerToken: w.flopsPerToken,
      ortTrainTokPerSec: ortTokPerSec,
      tfjsTrainTokPerSec: tfjsTokPerSec,
      speedup: ortTokPerSec / tfjsTokPerSec,
      ortEffectiveGflops: ortGflops,
      tfjsEffectiveGflops: tfjsGflops,
      matmulCeilingShape: w.ceilingShape,
      matmulCeilingGflops: ceiling,
      ortFractionOfMatmulCeiling: ortGflops / ceiling,
      peakRssMiBAfterOrt: rssAfterOrt,
      peakRssMiBAfterTfjs: rssAfterTfjs,
    };
    rows.push({
      workload: w.name,
      'ORT tok/s': Math.round(ortTokPerSec),
      [`tfjs (${selection.backend}) tok/s`]: +tfjsTokPerSec.toFixed(1),
      speedup: +(ortTokPerSec / tfjsTokPerSec).toFixed(1),
      'ORT GFLOP/s': +ortGflops.toFixed(1),
      'tfjs GFLOP/s': +tfjsGflops.toFixed(2),
      'ceiling GFLOP/s': +ceiling.toFixed(1),
      'ORT / ceiling': `${((100 * ortGflops) / ceiling).toFixed(0)}%`,
      'peak RSS MiB': Math.round(rssAfterTfjs),
    });
  }
  return {
    rows,
    data: {
      tfjsBackend: selection.backend,
      ortThreads: THREADS,
      setup:
        'LoRA: 8 x 128 tokens per step, r=8 alpha 16 on all 7 linear kinds; pretraining: 16 x 128 tokens per step (ORT: 2 accumulated micro-batches of 8); AdamW with clipping; ceiling: ORT on a chain of the workload MLP matmuls, same thread count, same run; peak RSS: process maximum so far',
      workloads: results,
    },
  };
}
