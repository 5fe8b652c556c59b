/** Codec throughput and aggregation math for edge-small-shaped adapters. */
import {
  decodeAdapterUpdate,
  encodeAdapterUpdate,
  factorize,
  loraProduct,
  matrix,
  weightedMean,
  type AdapterUpdate,
  type LoraFactors,
} from '@floe/shared';
import type { BenchResult } from '../lib/bench-report.js';

function randomFactors(rank: number, inFeatures: number, outFeatures: number): LoraFactors {
  const fill = (n: number) => Float32Array.from({ length: n }, () => Math.random() * 2 - 1);
  return { rank, inFeatures, outFeatures, A: fill(rank * inFeatures), B: fill(outFeatures * rank) };
}

/** Median milliseconds of `fn` over `repeats` runs after one warm-up. */
function time(fn: () => void, repeats: number): number {
  fn();
  const samples: number[] = [];
  for (let i = 0; i < repeats; i++) {
    const start = performance.now();
    fn();
    samples.push(performance.now() - start);
  }
  samples.sort((a, b) => a - b);
  return samples[Math.floor(samples.length / 2)]!;
}

export function run(): Promise<BenchResult> {
  const rows: BenchResult['rows'] = [];
  const data: Record<string, number> = {};

  const modules = new Map<string, LoraFactors>();
  for (let layer = 0; layer < 4; layer++)
    for (const kind of ['q_proj', 'k_proj', 'v_proj', 'o_proj'])
      modules.set(`model.layers.${layer}.self_attn.${kind}`, randomFactors(64, 128, 128));
  const update: AdapterUpdate = {
    jobId: 'bench',
    round: 0,
    numSamples: 1,
    plan: { rank: 64, targetModules: ['q_proj', 'k_proj', 'v_proj', 'o_proj'] },
    adapter: { alpha: 16, modules },
    metrics: {},
  };
  const mib = 1;
  let bytes = encodeAdapterUpdate(update);
  const encodeMs = time(() => (bytes = encodeAdapterUpdate(update)), 30);
  const decodeMs = time(() => decodeAdapterUpdate(bytes), 30);
  const f16Ms = time(() => decodeAdapterUpdate(encodeAdapterUpdate(update, 'f16')), 10);
  rows.push({
    case: 'encode 1 MiB update (f32)',
    ms: +encodeMs.toFixed(2),
    'MiB/s': +(mib / (encodeMs / 1000)).toFixed(0),
  });
  rows.push({
    case: 'decode 1 MiB update (f32, validated)',
    ms: +decodeMs.toFixed(2),
    'MiB/s': +(mib / (decodeMs / 1000)).toFixed(0),
  });
  rows.push({
    case: 'encode+decode 1 MiB update (f16)',
    ms: +f16Ms.toFixed(2),
    'MiB/s': +(mib / (f16Ms / 1000)).toFixed(0),
  });
  Object.assign(data, {
    encodeMiBPerSec: mib / (encodeMs / 1000),
    decodeMiBPerSec: mib / (decodeMs / 1000),
    encodedBytes: bytes.byteLength,
  });

  // flexlora on one 352 x 128 module (down_proj of edge-small): products, weighted mean, SVD at rank 8
  for (const clients of [10, 100]) {
    const factors = Array.from({ length: clients }, () => randomFactors(8, 352, 128));
    const weights = factors.map(() => 1 + Math.floor(Math.random() * 100));
    const ms = time(() => {
      const mean = weightedMean(
        factors.map((f) => loraProduct(f, 16).data),
        weights,
      );
      factorize(matrix(128, 352, mean), 8, 16);
    }, 5);
    rows.push({ case: `flexlora down_proj 128x352, ${clients} clients`, ms: +ms.toFixed(2), 'MiB/s': '' });
    data[`flexloraModuleMs_${clients}`] = ms;
  }
  const svdMs = time(
    () => factorize(matrix(128, 352, randomFactors(128, 352, 128).A.subarray(0, 128 * 352)), 8, 16),
    5,
  );
  rows.push({ case: 'truncated SVD 128x352 (ml-matrix)', ms: +svdMs.toFixed(2), 'MiB/s': '' });
  data['svdMs'] = svdMs;
  return Promise.resolve({ rows, data });
}
