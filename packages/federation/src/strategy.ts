/**
 * Aggregation strategies, in the spirit of Flower's Strategy: a small object per strategy, the math in
 * pure functions of `@floe/shared`. Every client trains the job's target modules at its own rank with
 * the job's alpha (scale alpha / r); a strategy turns the round's accepted updates into the adapter each
 * client receives next round, at that client's rank.
 */
import {
  AdapterMathError,
  type LoraAdapter,
  type LoraFactors,
  type StrategyName,
  type Kernels,
  type StackScratch,
  factorize,
  factorizeLargeSum,
  loraProduct,
  normalizedWeights,
  padRank,
  truncateRank,
} from '@floe/shared';
import { type RobustOptions, combineVectors } from './robust.js';

const MEAN: RobustOptions = { combiner: 'mean', trimFraction: 0 };

export interface ClientUpdate {
  clientId: string;
  /** The aggregation weight (the samples behind the update, as far as the job trusts the claim). */
  numSamples: number;
  adapter: LoraAdapter;
}

export interface Aggregate {
  /** The aggregated adapter at `rank`, what a client of that rank starts its next round from. */
  forRank(rank: number): LoraAdapter;
}

export interface AggregateOptions {
  /** Replaces the weighted mean by a robust rule (robust.ts); default the mean. */
  robust?: RobustOptions;
  /** The largest rank `forRank` will be asked for (flexlora computes only that many components). */
  maxRank?: number;
  /** Kernels for the products of large rounds (native ones in the server's aggregation worker). */
  kernels?: Kernels;
}

export interface Strategy {
  readonly name: StrategyName;
  aggregate(updates: readonly ClientUpdate[], alpha: number, options?: AggregateOptions): Promise<Aggregate>;
  /**
   * A stored aggregate (what `forRank(maxRank)` returned) as a client of `rank` receives it; equal to
   * `forRank(rank)` of the aggregate it came from.
   */
  resize(adapter: LoraAdapter, rank: number): LoraAdapter;
}

/** Every module path any update adapts (devices may adapt only some layers), sorted. */
function modulePaths(updates: readonly ClientUpdate[]): string[] {
  if (updates.length === 0) throw new AdapterMathError('invalid_argument', 'nothing to aggregate: no updates');
  return [...new Set(updates.flatMap((u) => [...u.adapter.modules.keys()]))].sort();
}

/** The weighted mean (or a robust combination) of A and of B over factors that share one rank and shape. */
function meanFactors(factors: readonly LoraFactors[], weights: readonly number[], robust: RobustOptions): LoraFactors {
  return {
    ...(factors[0] as LoraFactors),
    A: combineVectors(
      factors.map((f) => f.A),
      weights,
      robust,
    ),
    B: combineVectors(
      factors.map((f) => f.B),
      weights,
      robust,
    ),
  };
}

/**
 * `combine` applied, per adapted module, to the factors of the clients that adapt it and their
 * sample-count weights.
 */
function perModule<T>(
  updates: readonly ClientUpdate[],
  combine: (path: string, factors: LoraFactors[], weights: number[]) => T,
): Map<string, T> {
  return new Map(
    modulePaths(updates).map((path) => {
      const holders = updates.filter((u) => u.adapter.modules.has(path));
      return [
        path,
        combine(
          path,
          holders.map((u) => u.adapter.modules.get(path) as LoraFactors),
          holders.map((u) => u.numSamples),
        ),
      ];
    }),
  );
}

/** perModule with an asynchronous `combine`, modules one after another. */
async function perModuleAsync<T>(
  updates: readonly ClientUpdate[],
  combine: (path: string, factors: LoraFactors[], weights: number[]) => Promise<T>,
): Promise<Map<string, T>> {
  const out = new Map<string, T>();
  for (const [path, value] of perModule(updates, (path, factors, weights) => ({ path, factors, weights }))) {
    out.set(path, await combine(path, value.factors, value.weights));
  }
  return out;
}

function mapModules(adapter: LoraAdapter, change: (f: LoraFactors) => LoraFactors): LoraAdapter {
  return { alpha: adapter.alpha, modules: new Map([...adapter.modules].map(([path, f]) => [path, change(f)])) };
}

/** Keeps or zero-pads components so that every module has `rank`. */
function prefixRank(f: LoraFactors, rank: number): LoraFactors {
  return rank <= f.rank ? truncateRank(f, rank) : padRank(f, rank);
}

/** FedAvg: every client at the same rank; the weighted mean of A and of B. */
export const fedavg: Strategy = {
  name: 'fedavg',
  async aggregate(updates, alpha, { robust = MEAN } = {}) {
    await Promise.resolve();
    const modules = perModule(updates, (path, all, weights) => {
      const rank = all[0]?.rank as number;
      if (all.some((f) => f.rank !== rank)) {
        throw new AdapterMathError(
          'shape_mismatch',
          `fedavg needs one rank for ${path}; got ${[...new Set(all.map((f) => f.rank))].join(', ')}`,
        );
      }
      return meanFactors(all, weights, robust);
    });
    return {
      forRank(rank) {
        const own = [...modules.values()][0]?.rank;
        if (rank !== own)
          throw new AdapterMathError('invalid_argument', `fedavg aggregated rank ${String(own)}, not ${rank}`);
        return { alpha, modules };
      },
    };
  },
  resize(adapter, rank) {
    for (const f of adapter.modules.values()) {
      if (f.rank !== rank) throw new AdapterMathError('invalid_argument', `fedavg holds rank ${f.rank}, not ${rank}`);
    }
    return adapter;
  },
};

/** HetLoRA: zero-pad every client to the largest rank, weighted mean, truncate back to each client's rank. */
export const hetlora: Strategy = {
  name: 'hetlora',
  async aggregate(updates, alpha, { robust = MEAN } = {}) {
    await Promise.resolve();
    const modules = perModule(updates, (_path, all, weights) => {
      const maxRank = Math.max(...all.map((f) => f.rank));
      return meanFactors(
        all.map((f) => padRank(f, maxRank)),
        weights,
        robust,
      );
    });
    return {
      forRank: (rank) => hetlora.resize({ alpha, modules }, rank),
    };
  },
  resize: (adapter, rank) => mapModules(adapter, (f) => prefixRank(f, rank)),
};

/**
 * FlexLoRA: the weighted mean of the clients' products dW_k = (alpha / r_k) B_k A_k, then for each
 * client the truncated SVD of that mean at the client's rank. Exact aggregation of the products; a
 * weak device's low rank caps only its own copy.
 */
export const flexlora: Strategy = {
  name: 'flexlora',
  async aggregate(updates, alpha, { robust = MEAN, maxRank, kernels } = {}) {
    // One SVD per module, at the largest rank asked for; each client rank is a rescaled prefix (see resize).
    const scratch: StackScratch = {};
    const full = await perModuleAsync(updates, async (_path, all, weights) => {
      const { outFeatures, inFeatures } = all[0] as LoraFactors;
      const rank = Math.min(outFeatures, inFeatures, maxRank ?? Infinity);
      if (robust.combiner === 'mean') {
        return (await factorizeLargeSum(all, normalizedWeights(weights), rank, alpha, kernels, scratch)).factors;
      }
      // a coordinate-wise rule needs every product's entries: dense, O(clients x out x in)
      const products = all.map((f) => loraProduct(f, alpha).data);
      const data = combineVectors(products, weights, robust);
      return factorize({ rows: outFeatures, cols: inFeatures, data }, rank, alpha).factors;
    });
    const byRank = new Map<number, LoraAdapter>();
    return {
      forRank(rank) {
        let adapter = byRank.get(rank);
        if (!adapter) {
          adapter = flexlora.resize({ alpha, modules: full }, rank);
          byRank.set(rank, adapter);
        }
        return adapter;
      },
    };
  },
  resize(adapter, rank) {
    // SVD-ordered components: rank r keeps the first r, rescaled by sqrt(r / R) because the factors
    // carry sqrt(rank / alpha) (see factorize); the product of the kept components is unchanged.
    return mapModules(adapter, (f) => {
      const resized = prefixRank(f, rank);
      const scale = Math.sqrt(rank / f.rank);
      return { ...resized, A: resized.A.map((x) => x * scale), B: resized.B.map((x) => x * scale) };
    });
  },
};

export const STRATEGIES: Record<StrategyName, Strategy> = { fedavg, hetlora, flexlora };
