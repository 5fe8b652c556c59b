/**
 * The streamed round (two passes over a source, running sums) against the batch round that holds every
 * update: the same clusters, state and metrics, and the same cluster adapters, for every strategy, with
 * and without clustering and clipping.
 */
import { describe, expect, it } from 'vitest';
import {
  type LoraAdapter,
  type LoraFactors,
  type ModelArchitecture,
  Random,
  adapterModuleShapes,
  loraProduct,
  relativeFrobeniusError,
} from '@floe/shared';
import {
  type FederationSpec,
  type RoundUpdate,
  aggregateRound,
  aggregateRoundStreamed,
  foldable,
  initialAdapter,
  strategyFold,
} from '../src/index.js';

const ARCH: ModelArchitecture = {
  hiddenSize: 32,
  intermediateSize: 48,
  numHiddenLayers: 2,
  numAttentionHeads: 4,
  numKeyValueHeads: 4,
  headDim: 8,
};
const TARGETS = ['q_proj', 'v_proj', 'down_proj'];

function spec(overrides: Partial<FederationSpec>): FederationSpec {
  return {
    strategy: 'flexlora',
    clustering: false,
    maxRank: 8,
    alpha: 16,
    targetModules: TARGETS,
    baseModel: { id: 'tiny', sha256: '0'.repeat(64), architecture: ARCH },
    clientsPerRound: 40,
    ...overrides,
  };
}

/** Clients of two populations: one moves the attention modules, the other the MLP. */
function updates(count: number, ranks: readonly number[], seed: number): RoundUpdate[] {
  const random = new Random(seed);
  return Array.from({ length: count }, (_, i) => {
    const rank = ranks[i % ranks.length] as number;
    const group = i % 2;
    const modules = new Map<string, LoraFactors>();
    for (const [path, [out, inn]] of adapterModuleShapes(ARCH, TARGETS)) {
      const lift = (group === 0) === /q_proj|v_proj/.test(path) ? 1 : 0.05;
      modules.set(path, {
        rank,
        inFeatures: inn,
        outFeatures: out,
        A: Float32Array.from({ length: rank * inn }, () => random.normal() * 0.3),
        B: Float32Array.from({ length: out * rank }, () => random.normal() * lift * (i === 3 ? 40 : 1)),
      });
    }
    return {
      clientId: `client-${String(i).padStart(3, '0')}`,
      numSamples: 10 + ((i * 7) % 50),
      adapter: { alpha: 16, modules },
      metrics: { loss: 1 + (i % 5) / 10 },
      assignment: { clientId: `client-${String(i).padStart(3, '0')}`, rank, clusterId: 0 },
    };
  });
}

function sourceOf(all: RoundUpdate[]): { source: () => AsyncIterable<RoundUpdate>; passes: () => number } {
  let passes = 0;
  return {
    source: async function* () {
      passes++;
      for (const u of all) {
        await Promise.resolve();
        yield u;
      }
    },
    passes: () => passes,
  };
}

function expectSameAdapters(actual: Map<number, LoraAdapter>, expected: Map<number, LoraAdapter>): void {
  expect([...actual.keys()].sort()).toEqual([...expected.keys()].sort());
  for (const [id, adapter] of expected) {
    const got = actual.get(id) as LoraAdapter;
    expect([...got.modules.keys()].sort()).toEqual([...adapter.modules.keys()].sort());
    for (const [path, f] of adapter.modules) {
      const g = got.modules.get(path) as LoraFactors;
      expect(g.rank).toBe(f.rank);
      expect(relativeFrobeniusError(loraProduct(g, 16).data, loraProduct(f, 16).data)).toBeLessThan(1e-4);
    }
  }
}

describe('aggregateRoundStreamed', () => {
  for (const strategy of ['fedavg', 'hetlora', 'flexlora'] as const) {
    for (const clustering of [false, true]) {
      for (const clipUpdates of ['off', 'median'] as const) {
        it(`equals the batch round: ${strategy}, clustering ${clustering ? 'on' : 'off'}, clipping ${clipUpdates}`, async () => {
          const job = spec({ strategy, clustering, clipUpdates });
          const all = updates(40, strategy === 'fedavg' ? [8] : [2, 4, 8], 7);
          const state = { centroids: [], clusterOf: {} };
          const start = initialAdapter(job, 'seed');
          const stored = () => start;
          const batch = await aggregateRound(job, state, stored, all, 1);
          const { source, passes } = sourceOf(all);
          const streamed = await aggregateRoundStreamed(job, state, stored, source, 1);
          expect(passes()).toBe(clustering || clipUpdates === 'median' ? 2 : 1);
          expect(streamed.clusterIds).toEqual(batch.clusterIds);
          expect(streamed.state).toEqual(batch.state);
          expect(streamed.metrics).toEqual(batch.metrics);
          if (clustering) expect(new Set(streamed.clusterIds).size).toBe(2);
          expectSameAdapters(streamed.adapters, batch.adapters);
        });
      }
    }
  }

  for (const strategy of ['hetlora', 'flexlora'] as const) {
    it(`equals the batch round for three clients, one adapting layer 0 only, weighted equally: ${strategy}`, async () => {
      // three updates stack rank 24 < 32 (past maxRank + 8): flexlora's exact factorization, not a sketch
      const all = updates(3, [8], 13);
      const partial = all[1]!;
      partial.adapter = {
        alpha: 16,
        modules: new Map([...partial.adapter.modules].filter(([path]) => path.includes('layers.0.'))),
      };
      const job = spec({ strategy, weighting: 'equal' });
      const state = { centroids: [], clusterOf: {} };
      const batch = await aggregateRound(job, state, () => undefined, all, 0);
      const { source } = sourceOf(all);
      const streamed = await aggregateRoundStreamed(job, state, () => undefined, source, 0);
      expectSameAdapters(streamed.adapters, batch.adapters);
      expect(streamed.metrics).toEqual(batch.metrics);
    });
  }

  it('reads a round whole when its combiner needs every update at once', async () => {
    const job = spec({ robustAggregation: 'median' });
    expect(foldable(job)).toBe(false);
    const all = updates(9, [4], 3);
    const { source, passes } = sourceOf(all);
    const streamed = await aggregateRoundStreamed(job, { centroids: [], clusterOf: {} }, () => undefined, source, 0);
    expect(passes()).toBe(1);
    const batch = await aggregateRound(job, { centroids: [], clusterOf: {} }, () => undefined, all, 0);
    expectSameAdapters(streamed.adapters, batch.adapters);
  });

  it('refuses a source that changes between its passes', async () => {
    const all = updates(6, [4], 5);
    let call = 0;
    const source = async function* () {
      call++;
      for (const u of call === 1 ? all : all.slice(1)) yield await Promise.resolve(u);
    };
    await expect(
      aggregateRoundStreamed(spec({ clustering: true }), { centroids: [], clusterOf: {} }, () => undefined, source, 0),
    ).rejects.toThrow(/changed between passes/);
  });
});

describe('strategyFold', () => {
  it('keeps fedavg to one rank, and folds flexlora in chunks to the same sum as in one', async () => {
    const fold = strategyFold('fedavg', 16, { maxRank: 8 });
    const [a, b] = updates(2, [4, 8], 9);
    await fold.add({ clientId: 'a', numSamples: 1, adapter: a!.adapter });
    await expect(fold.add({ clientId: 'b', numSamples: 1, adapter: b!.adapter })).rejects.toMatchObject({
      code: 'shape_mismatch',
    });
    const all = updates(23, [2, 8], 11);
    const results = [];
    for (const chunk of [1, 5, 64]) {
      const flex = strategyFold('flexlora', 16, { maxRank: 8, chunk });
      for (const u of all) await flex.add({ clientId: u.clientId, numSamples: u.numSamples, adapter: u.adapter });
      results.push((await flex.finish()).forRank(8));
    }
    expectSameAdapters(new Map([[0, results[0]!]]), new Map([[0, results[2]!]]));
    expectSameAdapters(new Map([[0, results[1]!]]), new Map([[0, results[2]!]]));
  });
});
