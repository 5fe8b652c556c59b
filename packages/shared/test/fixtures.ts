import { type AdapterUpdate, type LoraAdapter, type LoraFactors, Random } from '../src/index.js';

/** A seeded uniform source so every test input is reproducible. */
export function rng(seed: number): () => number {
  const random = new Random(seed);
  return () => random.next();
}

export function randomArray(length: number, random: () => number, scale = 1): Float32Array {
  const out = new Float32Array(length);
  for (let i = 0; i < length; i++) out[i] = (random() * 2 - 1) * scale;
  return out;
}

export function randomFactors(
  rank: number,
  inFeatures: number,
  outFeatures: number,
  random: () => number,
): LoraFactors {
  return {
    rank,
    inFeatures,
    outFeatures,
    A: randomArray(rank * inFeatures, random),
    B: randomArray(outFeatures * rank, random),
  };
}

/** An adapter shaped like edge-small (hidden 128, MLP 352) on the attention projections and down_proj. */
export function randomAdapter(rank: number, layers: number, random: () => number, withMlp = true): LoraAdapter {
  const modules = new Map<string, LoraFactors>();
  for (let layer = 0; layer < layers; layer++) {
    const prefix = `model.layers.${String(layer)}`;
    for (const kind of ['q_proj', 'k_proj', 'v_proj', 'o_proj']) {
      modules.set(`${prefix}.self_attn.${kind}`, randomFactors(rank, 128, 128, random));
    }
    if (withMlp) modules.set(`${prefix}.mlp.down_proj`, randomFactors(rank, 352, 128, random));
  }
  return { alpha: 16, modules };
}

export function adapterBytes(adapter: LoraAdapter): number {
  let bytes = 0;
  for (const f of adapter.modules.values()) bytes += f.A.byteLength + f.B.byteLength;
  return bytes;
}

export function update(adapter: LoraAdapter): AdapterUpdate {
  const rank = [...adapter.modules.values()][0]?.rank ?? 1;
  return {
    jobId: 'job-1',
    round: 3,
    numSamples: 128,
    plan: { rank, targetModules: ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'down_proj'] },
    adapter,
    metrics: { loss: 1.25, train_seconds: 4.5 },
  };
}
