/**
 * Percentile bootstrap intervals for methods scored on the same held-out items, and for their
 * differences: every resample draws the same items for every method (a paired bootstrap), so what the
 * methods share (an item every method gets wrong) does not widen the interval of their difference.
 */
import { Random } from './random.js';

/**
 * What each item of one stratum (a client's held-out split) contributed to a figure: the figure is
 * sum(sums) / sum(weights), e.g. a prose window's bits and bytes, or an example's 1 (right) or 0 and 1.
 */
export interface ItemScores {
  sums: readonly number[];
  weights: readonly number[];
}

export interface Interval {
  /** The figure on the items as they are. */
  mean: number;
  low: number;
  high: number;
}

export interface BootstrapOptions {
  resamples?: number;
  seed?: number;
  /** Two-sided coverage of the intervals (default 0.95). */
  level?: number;
}

/** A method's figure: the mean over strata of each stratum's sum(sums) / sum(weights). */
function figure(strata: readonly ItemScores[], picks?: readonly (readonly number[])[]): number {
  let total = 0;
  strata.forEach((items, s) => {
    let sum = 0;
    let weight = 0;
    for (const i of picks?.[s] ?? items.sums.keys()) {
      sum += items.sums[i] as number;
      weight += items.weights[i] as number;
    }
    total += weight > 0 ? sum / weight : 0;
  });
  return total / strata.length;
}

/**
 * Intervals of each method's figure and of the differences `pairs` names (`a - b`, keyed `a-b`), by
 * resampling the items of every stratum with replacement (strata are kept: a client is never drawn
 * twice or left out). All methods must hold the same strata with the same item counts.
 */
export function pairedBootstrap(
  methods: Readonly<Record<string, readonly ItemScores[]>>,
  pairs: readonly (readonly [string, string])[],
  options: BootstrapOptions = {},
): { value: Record<string, Interval>; difference: Record<string, Interval> } {
  const names = Object.keys(methods);
  const reference = methods[names[0] as string] ?? [];
  if (reference.length === 0) throw new RangeError('a bootstrap needs at least one method with one stratum');
  const sizes = reference.map((items) => items.sums.length);
  for (const name of names) {
    const strata = methods[name] as readonly ItemScores[];
    const same =
      strata.length === sizes.length &&
      strata.every((items, s) => items.sums.length === sizes[s] && items.weights.length === sizes[s]);
    if (!same) throw new RangeError(`${name} was not scored on the same items as ${names[0] as string}`);
  }
  for (const [a, b] of pairs) {
    if (!methods[a] || !methods[b]) throw new RangeError(`no method ${methods[a] ? b : a} to compare`);
  }
  const random = new Random(options.seed ?? 0);
  const resamples = options.resamples ?? 2000;
  const tail = (1 - (options.level ?? 0.95)) / 2;
  const draws: Record<string, number[]> = Object.fromEntries(names.map((name) => [name, []]));
  for (let r = 0; r < resamples; r++) {
    const picks = sizes.map((n) => Array.from({ length: n }, () => random.integer(n)));
    for (const name of names) draws[name]!.push(figure(methods[name] as readonly ItemScores[], picks));
  }
  const interval = (point: number, samples: number[]): Interval => {
    const sorted = [...samples].sort((x, y) => x - y);
    return {
      mean: point,
      low: sorted[Math.floor(tail * (sorted.length - 1))] as number,
      high: sorted[Math.ceil((1 - tail) * (sorted.length - 1))] as number,
    };
  };
  const point = (name: string) => figure(methods[name] as readonly ItemScores[]);
  return {
    value: Object.fromEntries(names.map((name) => [name, interval(point(name), draws[name]!)])),
    difference: Object.fromEntries(
      pairs.map(([a, b]) => [
        `${a}-${b}`,
        interval(
          point(a) - point(b),
          draws[a]!.map((x, r) => x - (draws[b]![r] as number)),
        ),
      ]),
    ),
  };
}
