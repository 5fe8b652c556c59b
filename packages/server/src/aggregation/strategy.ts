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
  factorize,
  loraProduct,
  matrix,
  padRank,
  truncateRank,
  weightedMean,
} from '@floe/shared';

export interface ClientUpdate {
  clientId: string;
  /** The aggregation weight: the number of training samples behind the update. */
  numSamples: number;
  adapter: LoraAdapter;
}

export interface Aggregate {
  /** The aggregated adapter at `rank`, what a client of that rank starts its next round from. */
  forRank(rank: number): LoraAdapter;
}

export interface Strategy {
  readonly name: StrategyName;
  aggregate(updates: readonly ClientUpdate[], alpha: number): Aggregate;
}

function modulePaths(updates: readonly ClientUpdate[]): string[] {
  const first = updates[0];
  if (!first) throw new AdapterMathError('invalid_argument', 'nothing to aggregate: no updates');
  const paths = [...first.adapter.modules.keys()].sort();
  for (const u of updates) {
    const own = [...u.adapter.modules.keys()].sort();
    if (own.join('|') !== paths.join('|')) {
      throw new AdapterMathError(
        'shape_mismatch',
        `client ${u.clientId} adapts other modules than client ${first.clientId}`,
      );
    }
  }
  return paths;
}

/** The weighted mean of A and of B over factors that share one rank and shape. */
function meanFactors(factors: readonly LoraFactors[], weights: readonly number[]): LoraFactors {
  return {
    ...(factors[0] as LoraFactors),
    A: weightedMean(
      factors.map((f) => f.A),
      weights,
    ),
    B: weightedMean(
      factors.map((f) => f.B),
      weights,
    ),
  };
}

/** `combine` applied, per adapted module, to the clients' factors and their sample-count weights. */
function perModule<T>(
  updates: readonly ClientUpdate[],
  combine: (path: string, factors: LoraFactors[], weights: number[]) => T,
): Map<string, T> {
  const weights = updates.map((u) => u.numSamples);
  return new Map(
    modulePaths(updates).map((path) => [
      path,
      combine(
        path,
        updates.map((u) => u.adapter.modules.get(path) as LoraFactors),
        weights,
      ),
    ]),
  );
}

/** FedAvg: every client at the same rank; the weighted mean of A and of B. */
export const fedavg: Strategy = {
  name: 'fedavg',
  aggregate(updates, alpha) {
    const modules = perModule(updates, (path, all, weights) => {
      const rank = all[0]?.rank as number;
      if (all.some((f) => f.rank !== rank)) {
        throw new AdapterMathError(
          'shape_mismatch',
          `fedavg needs one rank for ${path}; got ${[...new Set(all.map((f) => f.rank))].join(', ')}`,
        );
      }
      return meanFactors(all, weights);
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
};

/** HetLoRA: zero-pad every client to the largest rank, weighted mean, truncate back to each client's rank. */
export const hetlora: Strategy = {
  name: 'hetlora',
  aggregate(updates, alpha) {
    const modules = perModule(updates, (_path, all, weights) => {
      const maxRank = Math.max(...all.map((f) => f.rank));
      return meanFactors(
        all.map((f) => padRank(f, maxRank)),
        weights,
      );
    });
    return {
      forRank(rank) {
        const out = new Map<string, LoraFactors>();
        for (const [path, f] of modules) out.set(path, rank <= f.rank ? truncateRank(f, rank) : padRank(f, rank));
        return { alpha, modules: out };
      },
    };
  },
};

/**
 * FlexLoRA: the weighted mean of the clients' products dW_k = (alpha / r_k) B_k A_k, then for each
 * client the truncated SVD of that mean at the client's rank. Exact aggregation of the products; a
 * weak device's low rank caps only its own copy.
 */
export const flexlora: Strategy = {
  name: 'flexlora',
  aggregate(updates, alpha) {
    // One SVD per module, at full rank R; rank r takes the first r components, rescaled by sqrt(r / R)
    // because the factors carry sqrt(rank / alpha) (see factorize).
    const full = perModule(updates, (_path, all, weights) => {
      const products = all.map((f) => loraProduct(f, alpha));
      const { rows, cols } = products[0] as { rows: number; cols: number };
      const mean = weightedMean(
        products.map((p) => p.data),
        weights,
      );
      return factorize(matrix(rows, cols, mean), Math.min(rows, cols), alpha).factors;
    });
    const byRank = new Map<number, LoraAdapter>();
    return {
      forRank(rank) {
        let adapter = byRank.get(rank);
        if (!adapter) {
          const modules = new Map<string, LoraFactors>();
          for (const [path, f] of full) {
            const resized = rank <= f.rank ? truncateRank(f, rank) : padRank(f, rank);
            const scale = Math.sqrt(rank / f.rank);
            modules.set(path, { ...resized, A: resized.A.map((x) => x * scale), B: resized.B.map((x) => x * scale) });
          }
          adapter = { alpha, modules };
          byRank.set(rank, adapter);
        }
        return adapter;
      },
    };
  },
};

export const STRATEGIES: Record<StrategyName, Strategy> = { fedavg, hetlora, flexlora };
