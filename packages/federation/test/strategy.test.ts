import { beforeAll, describe, expect, it } from 'vitest';
import {
  type LoraAdapter,
  type LoraFactors,
  frobeniusNorm,
  loraProduct,
  relativeFrobeniusError,
  weightedMean,
} from '@floe/shared';
import { type Aggregate, type ClientUpdate, fedavg, flexlora, hetlora, updateProblems } from '../src/index.js';

const MODULES: Record<string, [number, number]> = {
  'model.layers.0.self_attn.q_proj': [24, 16],
  'model.layers.0.mlp.down_proj': [16, 40],
};

let state = 12345;
function next(): number {
  state = (Math.imul(state, 1103515245) + 12345) >>> 0;
  return state / 2 ** 32 - 0.5;
}

function adapterOfRank(rank: number, alpha = 8): LoraAdapter {
  const modules = new Map<string, LoraFactors>();
  for (const [path, [out, inn]] of Object.entries(MODULES)) {
    modules.set(path, {
      rank,
      inFeatures: inn,
      outFeatures: out,
      A: Float32Array.from({ length: rank * inn }, next),
      B: Float32Array.from({ length: out * rank }, next),
    });
  }
  return { alpha, modules };
}

function client(id: string, rank: number, numSamples: number): ClientUpdate {
  return { clientId: id, numSamples, adapter: adapterOfRank(rank) };
}

/** The exact target: the sample-weighted mean of the clients' products. */
function meanProduct(updates: ClientUpdate[], path: string): Float32Array {
  return weightedMean(
    updates.map((u) => loraProduct(u.adapter.modules.get(path)!, 8).data),
    updates.map((u) => u.numSamples),
  );
}

describe('fedavg', () => {
  it('takes the sample-weighted mean of A and of B at the common rank', async () => {
    const updates = [client('a', 4, 10), client('b', 4, 30)];
    const result = (await fedavg.aggregate(updates, 8)).forRank(4);
    for (const path of Object.keys(MODULES)) {
      const f = result.modules.get(path)!;
      const [a, b] = updates.map((u) => u.adapter.modules.get(path)!);
      expect(f.A[5]).toBeCloseTo(0.25 * a!.A[5]! + 0.75 * b!.A[5]!, 6);
      expect(f.B[7]).toBeCloseTo(0.25 * a!.B[7]! + 0.75 * b!.B[7]!, 6);
    }
  });

  it('refuses clients of different ranks', async () => {
    await expect(fedavg.aggregate([client('a', 2, 1), client('b', 4, 1)], 8)).rejects.toThrow(/one rank/);
  });
});

describe('hetlora', () => {
  it('zero-pads to the largest rank, averages, and truncates back per client', async () => {
    const updates = [client('weak', 2, 1), client('strong', 6, 1)];
    const agg = await hetlora.aggregate(updates, 8);
    const path = 'model.layers.0.self_attn.q_proj';
    const strong = agg.forRank(6).modules.get(path)!;
    const weakB = updates[0]!.adapter.modules.get(path)!.B;
    const strongB = updates[1]!.adapter.modules.get(path)!.B;
    expect(strong.B[0 * 6 + 1]).toBeCloseTo((weakB[0 * 2 + 1]! + strongB[0 * 6 + 1]!) / 2, 6);
    expect(strong.B[0 * 6 + 4]).toBeCloseTo(strongB[0 * 6 + 4]! / 2, 6); // the weak client padded with zero
    expect(agg.forRank(2).modules.get(path)!.rank).toBe(2);
  });
});

describe('flexlora', () => {
  const updates = [client('weak', 2, 50), client('medium', 4, 30), client('strong', 8, 20)];
  let agg: Aggregate;
  beforeAll(async () => {
    agg = await flexlora.aggregate(updates, 8);
  });

  it('at enough rank, reproduces the weighted mean of the products exactly', () => {
    for (const path of Object.keys(MODULES)) {
      const exact = meanProduct(updates, path);
      // the mean of products of ranks 2 + 4 + 8 has rank <= 14
      expect(relativeFrobeniusError(loraProduct(agg.forRank(14).modules.get(path)!, 8).data, exact)).toBeLessThan(1e-5);
    }
  });

  it('gives each client the best approximation at its own rank, better than hetlora', async () => {
    const het = await hetlora.aggregate(updates, 8);
    for (const rank of [2, 4, 8]) {
      for (const path of Object.keys(MODULES)) {
        const exact = meanProduct(updates, path);
        const flexError = relativeFrobeniusError(loraProduct(agg.forRank(rank).modules.get(path)!, 8).data, exact);
        const hetError = relativeFrobeniusError(loraProduct(het.forRank(rank).modules.get(path)!, 8).data, exact);
        expect(flexError).toBeLessThan(hetError);
      }
    }
  });

  it('derives every rank from one decomposition: lower ranks are prefixes of higher ones, rescaled', () => {
    const path = 'model.layers.0.mlp.down_proj';
    const r4 = agg.forRank(4).modules.get(path)!;
    const r8 = agg.forRank(8).modules.get(path)!;
    const scale = Math.sqrt(4 / 8);
    for (let i = 0; i < 40; i++) expect(r4.A[i]).toBeCloseTo(r8.A[i]! * scale, 5);
    expect(agg.forRank(4)).toBe(agg.forRank(4));
  });
});

describe('update validation', () => {
  const expected = { modules: new Map(Object.entries(MODULES)), rank: 4, alpha: 8, maxNorm: 1e3 };

  it('accepts an update of the planned rank and shapes', () => {
    expect(updateProblems(adapterOfRank(4), expected)).toEqual([]);
  });

  it('names every problem: wrong rank, missing or foreign modules, alpha, norm', () => {
    expect(updateProblems(adapterOfRank(2), expected).map((p) => p.code)).toEqual(['wrong_shape', 'wrong_shape']);
    const partial = adapterOfRank(4);
    partial.modules.delete('model.layers.0.mlp.down_proj');
    partial.modules.set('model.layers.9.self_attn.v_proj', partial.modules.get('model.layers.0.self_attn.q_proj')!);
    expect(
      updateProblems(partial, expected)
        .map((p) => p.code)
        .sort(),
    ).toEqual(['missing_module', 'unexpected_module']);
    expect(updateProblems({ ...adapterOfRank(4), alpha: 16 }, expected).map((p) => p.code)).toEqual(['wrong_alpha']);
    const huge = adapterOfRank(4);
    huge.modules.get('model.layers.0.self_attn.q_proj')!.B.fill(1e4);
    const problems = updateProblems(huge, expected);
    expect(problems).toHaveLength(1);
    expect(problems[0]).toMatchObject({ code: 'norm_too_large', module: 'model.layers.0.self_attn.q_proj' });
    expect(frobeniusNorm(loraProduct(huge.modules.get('model.layers.0.self_attn.q_proj')!, 8).data)).toBeGreaterThan(
      1e3,
    );
  });
});
