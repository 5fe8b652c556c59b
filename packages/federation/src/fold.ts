/**
 * A strategy's weighted mean built one update at a time, in memory that does not grow with the number
 * of updates: running sums of A and of B (fedavg, hetlora at the job's largest rank) or of the products
 * (flexlora, a dense sum per module, added a chunk of updates at a time through the same stacked
 * product as the batch path). Robust combiners (median, trimmed mean) need every update at once and
 * have no fold.
 */
import {
  AdapterMathError,
  type Kernels,
  type LoraAdapter,
  type LoraFactors,
  type StackScratch,
  type StrategyName,
  factorizeDense,
  factorizeLargeSum,
  matrix,
  padRank,
  weightedProductSum,
} from '@floe/shared';
import { type Aggregate, type ClientUpdate, STRATEGIES } from './strategy.js';

export interface StrategyFold {
  add(update: ClientUpdate): Promise<void>;
  /** The aggregate of everything added; the fold is spent. */
  finish(): Promise<Aggregate>;
}

export interface FoldOptions {
  /** The largest rank of the job: hetlora pads to it, flexlora factorizes at it. */
  maxRank: number;
  kernels?: Kernels;
  /** Flexlora: updates per stacked product (memory: this many updates of one module at a time). */
  chunk?: number;
}

function checkedWeight(weight: number): number {
  if (!(Number.isFinite(weight) && weight >= 0)) {
    throw new AdapterMathError('invalid_argument', `weight ${String(weight)}; weights must be finite and >= 0`);
  }
  return weight;
}

function meanOf(sum: Float64Array, total: number): Float32Array {
  if (!(total > 0 && Number.isFinite(total))) throw new AdapterMathError('invalid_argument', 'the weights sum to zero');
  return Float32Array.from(sum, (x) => x / total);
}

interface FactorSums {
  shape: Omit<LoraFactors, 'A' | 'B'>;
  A: Float64Array;
  B: Float64Array;
  total: number;
}

/** fedavg (one rank for all) and hetlora (zero-padded to `maxRank`): the weighted mean of A and of B. */
function factorFold(name: 'fedavg' | 'hetlora', alpha: number, maxRank: number): StrategyFold {
  const sums = new Map<string, FactorSums>();
  return {
    async add({ adapter, numSamples }) {
      await Promise.resolve();
      const weight = checkedWeight(numSamples);
      for (const [path, own] of adapter.modules) {
        let entry = sums.get(path);
        const rank = name === 'hetlora' ? maxRank : own.rank;
        if (name === 'hetlora' && own.rank > maxRank) {
          throw new AdapterMathError('shape_mismatch', `${path} has rank ${own.rank}, above the job's ${maxRank}`);
        }
        if (!entry) {
          const { inFeatures, outFeatures } = own;
          entry = {
            shape: { rank, inFeatures, outFeatures },
            A: new Float64Array(rank * inFeatures),
            B: new Float64Array(outFeatures * rank),
            total: 0,
          };
          sums.set(path, entry);
        }
        if (own.rank !== entry.shape.rank && name === 'fedavg') {
          throw new AdapterMathError(
            'shape_mismatch',
            `fedavg needs one rank for ${path}; got ${entry.shape.rank}, ${own.rank}`,
          );
        }
        if (own.inFeatures !== entry.shape.inFeatures || own.outFeatures !== entry.shape.outFeatures) {
          throw new AdapterMathError('shape_mismatch', `${path} changed shape between updates`);
        }
        const f = own.rank === rank ? own : padRank(own, rank);
        for (let i = 0; i < f.A.length; i++) entry.A[i] = (entry.A[i] as number) + weight * (f.A[i] as number);
        for (let i = 0; i < f.B.length; i++) entry.B[i] = (entry.B[i] as number) + weight * (f.B[i] as number);
        entry.total += weight;
      }
    },
    async finish() {
      await Promise.resolve();
      if (sums.size === 0) throw new AdapterMathError('invalid_argument', 'nothing to aggregate: no updates');
      const modules = new Map<string, LoraFactors>();
      for (const path of [...sums.keys()].sort()) {
        const entry = sums.get(path) as FactorSums;
        // hetlora at maxRank: past the largest rank present the components are zero, as the batch mean's padding
        modules.set(path, { ...entry.shape, A: meanOf(entry.A, entry.total), B: meanOf(entry.B, entry.total) });
      }
      const adapter: LoraAdapter = { alpha, modules };
      if (name === 'hetlora') return { forRank: (rank) => STRATEGIES.hetlora.resize(adapter, rank) };
      return {
        forRank(rank) {
          const own = [...modules.values()][0]?.rank;
          if (rank !== own) {
            throw new AdapterMathError('invalid_argument', `fedavg aggregated rank ${String(own)}, not ${rank}`);
          }
          return adapter;
        },
      };
    },
  };
}

interface ProductSums {
  rows: number;
  cols: number;
  /** The dense sum, made only once the stacked rank reaches min(rows, cols) (before, the factors are exact). */
  sum: Float64Array | undefined;
  total: number;
  pending: LoraFactors[];
  weights: number[];
  /** Sum of the pending terms' ranks. */
  pendingRank: number;
}

/**
 * flexlora: the weighted mean of the products, factorized once at `maxRank`. While the stacked rank of
 * a module's updates stays below min(rows, cols) they are kept and factorized exactly as the batch path
 * does (`factorizeLargeSum`); past it they go into a dense sum, a chunk at a time. Memory per module:
 * the dense sum or fewer factors than it has entries.
 */
function productFold(alpha: number, maxRank: number, kernels: Kernels, chunk: number): StrategyFold {
  const sums = new Map<string, ProductSums>();
  const scratch: StackScratch = {};
  const flush = async (entry: ProductSums) => {
    if (entry.pending.length === 0) return;
    const part = await weightedProductSum(entry.pending, entry.weights, alpha, kernels, scratch);
    const sum = (entry.sum ??= new Float64Array(entry.rows * entry.cols));
    for (let i = 0; i < part.length; i++) sum[i] = (sum[i] as number) + (part[i] as number);
    entry.pending = [];
    entry.weights = [];
    entry.pendingRank = 0;
  };
  return {
    async add({ adapter, numSamples }) {
      const weight = checkedWeight(numSamples);
      for (const [path, f] of adapter.modules) {
        let entry = sums.get(path);
        if (!entry) {
          const { outFeatures: rows, inFeatures: cols } = f;
          entry = { rows, cols, sum: undefined, total: 0, pending: [], weights: [], pendingRank: 0 };
          sums.set(path, entry);
        }
        if (f.outFeatures !== entry.rows || f.inFeatures !== entry.cols) {
          throw new AdapterMathError('shape_mismatch', `${path} changed shape between updates`);
        }
        entry.pending.push(f);
        entry.weights.push(weight);
        entry.pendingRank += f.rank;
        entry.total += weight;
        const dense = entry.sum !== undefined || entry.pendingRank >= Math.min(entry.rows, entry.cols);
        if (dense && entry.pending.length >= chunk) await flush(entry);
      }
    },
    async finish() {
      if (sums.size === 0) throw new AdapterMathError('invalid_argument', 'nothing to aggregate: no updates');
      const full = new Map<string, LoraFactors>();
      for (const path of [...sums.keys()].sort()) {
        const entry = sums.get(path) as ProductSums;
        const rank = Math.min(entry.rows, entry.cols, maxRank);
        if (entry.sum === undefined && entry.pendingRank < Math.min(entry.rows, entry.cols)) {
          // a low stacked rank: the exact factorization of the batch path
          const weights = entry.weights.map((w) => w / entry.total);
          full.set(path, (await factorizeLargeSum(entry.pending, weights, rank, alpha, kernels, scratch)).factors);
          continue;
        }
        await flush(entry);
        const mean = meanOf(entry.sum as Float64Array, entry.total);
        full.set(path, (await factorizeDense(matrix(entry.rows, entry.cols, mean), rank, alpha, kernels)).factors);
      }
      const byRank = new Map<number, LoraAdapter>();
      return {
        forRank(rank) {
          let adapter = byRank.get(rank);
          if (!adapter) byRank.set(rank, (adapter = STRATEGIES.flexlora.resize({ alpha, modules: full }, rank)));
          return adapter;
        },
      };
    },
  };
}

/** Bytes of running sums a fold of one cluster keeps, for a job's shapes (flexlora's dense sums at most). */
export function foldBytes(strategy: StrategyName, shapes: Iterable<[number, number]>, maxRank: number): number {
  let floats = 0;
  for (const [out, inn] of shapes) floats += strategy === 'flexlora' ? out * inn : maxRank * (out + inn);
  return 8 * floats;
}

export function strategyFold(name: StrategyName, alpha: number, options: FoldOptions): StrategyFold {
  if (name === 'flexlora') return productFold(alpha, options.maxRank, options.kernels ?? {}, options.chunk ?? 32);
  return factorFold(name, alpha, options.maxRank);
}
