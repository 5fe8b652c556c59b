/**
 * What stands between a round's accepted updates and the strategy's math when some clients lie: the
 * weight an update gets (its claimed sample count, capped, or one each), clipping of each module's norms
 * to the round's median, and coordinate-wise rules (trimmed mean, median) that a minority cannot move
 * far. Coordinates are the entries of whatever the strategy averages: the factors under fedavg and
 * hetlora, the products under flexlora.
 */
import {
  AdapterMathError,
  type JobSpec,
  type LoraAdapter,
  type LoraFactors,
  frobeniusNorm,
  weightedMean,
} from '@floe/shared';

export type Combiner = 'mean' | 'trimmed_mean' | 'median' | 'near_median';

export interface RobustOptions {
  combiner: Combiner;
  /** Share of values dropped at each end of every coordinate by `trimmed_mean`. */
  trimFraction: number;
}

export const DEFAULT_MAX_SAMPLES_PER_UPDATE = 100_000;
export const DEFAULT_MAX_FACTOR_NORM = 1e3;

export type RobustSpec = Partial<
  Pick<
    JobSpec,
    'weighting' | 'maxSamplesPerUpdate' | 'clipUpdates' | 'robustAggregation' | 'trimFraction' | 'maxFactorNorm'
  >
>;

export function robustOptions(spec: RobustSpec): RobustOptions {
  return { combiner: spec.robustAggregation ?? 'mean', trimFraction: spec.trimFraction ?? 0.2 };
}

/** The aggregation weight of an update that claims `numSamples`, under the job's trust in such claims. */
export function updateWeight(spec: RobustSpec, numSamples: number): number {
  if (spec.weighting === 'equal') return 1;
  return Math.min(numSamples, spec.maxSamplesPerUpdate ?? DEFAULT_MAX_SAMPLES_PER_UPDATE);
}

/** Combines same-length vectors coordinate by coordinate; `weights` count only for `mean`. */
export function combineVectors(
  vectors: readonly Float32Array[],
  weights: readonly number[],
  options: RobustOptions,
): Float32Array {
  if (options.combiner === 'mean' || vectors.length <= 2) return weightedMean(vectors, weights);
  if (options.combiner === 'near_median') {
    // the weighted mean of the vectors nearest the coordinate-wise median: a minority far from the
    // honest majority (scaled, flipped, foreign, colluding) is left out whole, not only at the extremes
    const center = combineVectors(vectors, weights, { combiner: 'median', trimFraction: 0 });
    const distance = vectors.map((v) => {
      let sum = 0;
      for (let i = 0; i < v.length; i++) sum += ((v[i] as number) - (center[i] as number)) ** 2;
      return sum;
    });
    const keep = Math.max(1, Math.ceil((1 - 2 * options.trimFraction) * vectors.length));
    const nearest = distance
      .map((d, k) => [d, k] as const)
      .sort((a, b) => a[0] - b[0])
      .slice(0, keep)
      .map(([, k]) => k);
    return weightedMean(
      nearest.map((k) => vectors[k] as Float32Array),
      nearest.map((k) => weights[k] as number),
    );
  }
  const n = vectors.length;
  const length = (vectors[0] as Float32Array).length;
  if (vectors.some((v) => v.length !== length)) {
    throw new AdapterMathError('shape_mismatch', 'coordinate-wise aggregation needs vectors of one length');
  }
  const trim = options.combiner === 'median' ? 0 : Math.min(Math.floor(options.trimFraction * n), (n - 1) >> 1);
  const column = new Float64Array(n);
  const out = new Float32Array(length);
  for (let i = 0; i < length; i++) {
    for (let k = 0; k < n; k++) column[k] = (vectors[k] as Float32Array)[i] as number;
    column.sort();
    if (options.combiner === 'median') {
      out[i] =
        n % 2 === 1 ? (column[n >> 1] as number) : 0.5 * ((column[n / 2 - 1] as number) + (column[n / 2] as number));
    } else {
      let sum = 0;
      for (let k = trim; k < n - trim; k++) sum += column[k] as number;
      out[i] = sum / (n - 2 * trim);
    }
  }
  return out;
}

/** The median of `values`; the two middle values are halved before adding, so 1e308s do not overflow. */
export function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const n = sorted.length;
  return n % 2 === 1 ? (sorted[n >> 1] as number) : (sorted[n / 2 - 1] as number) / 2 + (sorted[n / 2] as number) / 2;
}

function scaled(values: Float32Array, factor: number): Float32Array {
  return factor === 1 ? values : values.map((v) => v * factor);
}

/** A module's norms as clipping reads them: of A and of B (factor space), or of the product. */
export type ModuleNorms = Map<string, { a: number; b: number; product: number }>;

/** Each module's norms of one adapter (`product` only in the product space). */
export function moduleNorms(
  adapter: LoraAdapter,
  space: 'factors' | 'product',
  productNorm: (f: LoraFactors) => number,
): ModuleNorms {
  return new Map(
    [...adapter.modules].map(([path, f]) => [
      path,
      {
        a: frobeniusNorm(f.A),
        b: frobeniusNorm(f.B),
        product: space === 'product' ? productNorm(f) : Infinity,
      },
    ]),
  );
}

/** Per module, the median of each norm over the adapters that adapt it: what clipping caps to. */
export function clipLimits(norms: readonly ModuleNorms[]): ModuleNorms {
  const paths = [...new Set(norms.flatMap((n) => [...n.keys()]))];
  return new Map(
    paths.map((path) => {
      const held = norms.map((n) => n.get(path)).filter((x) => x !== undefined);
      return [
        path,
        {
          a: median(held.map((x) => x.a)),
          b: median(held.map((x) => x.b)),
          product: median(held.map((x) => x.product)),
        },
      ];
    }),
  );
}

/** `adapter` with each module scaled down to `limits` (B scaled for the product, A and B for factors). */
export function clipWith(
  adapter: LoraAdapter,
  limits: ModuleNorms,
  space: 'factors' | 'product',
  productNorm: (f: LoraFactors) => number,
): LoraAdapter {
  const cap = (value: number, limit: number) => (value > limit && value > 0 ? limit / value : 1);
  return {
    alpha: adapter.alpha,
    modules: new Map(
      [...adapter.modules].map(([path, f]) => {
        const limit = limits.get(path) ?? { a: Infinity, b: Infinity, product: Infinity };
        if (space === 'product') return [path, { ...f, B: scaled(f.B, cap(productNorm(f), limit.product)) }];
        return [
          path,
          { ...f, A: scaled(f.A, cap(frobeniusNorm(f.A), limit.a)), B: scaled(f.B, cap(frobeniusNorm(f.B), limit.b)) },
        ];
      }),
    ),
  };
}

/**
 * Every module's norms scaled down to the median of the round: under fedavg/hetlora the norms of A and
 * of B (what they average), under flexlora the norm of the product `normOf` (scaling B scales it).
 */
export function clipToMedian(
  adapters: readonly LoraAdapter[],
  space: 'factors' | 'product',
  productNorm: (f: LoraFactors) => number,
): LoraAdapter[] {
  const norms = adapters.map((a) => moduleNorms(a, space, productNorm));
  const limits = clipLimits(norms);
  return adapters.map((adapter) => clipWith(adapter, limits, space, productNorm));
}
