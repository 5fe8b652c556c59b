import { describe, expect, it } from 'vitest';
import type { LoraAdapter } from '@floe/shared';
import { clipToMedian, combineVectors, updateProblems, updateWeight } from '../src/index.js';

const v = (...values: number[]) => Float32Array.from(values);

describe('robust aggregation', () => {
  const honest = [v(1, 10), v(2, 11), v(3, 12), v(4, 13)];
  const liar = v(1000, -1000);

  it('leaves out a liar coordinate by coordinate (trimmed mean, median) or whole (near_median)', () => {
    const all = [...honest, liar];
    const w = [1, 1, 1, 1, 1];
    const mean = combineVectors(all, w, { combiner: 'mean', trimFraction: 0 });
    expect(mean[0]).toBeCloseTo(202, 4);
    expect(mean[1]).toBeCloseTo(-190.8, 4);
    expect([...combineVectors(all, w, { combiner: 'trimmed_mean', trimFraction: 0.2 })]).toEqual([3, 11]);
    expect([...combineVectors(all, w, { combiner: 'median', trimFraction: 0 })]).toEqual([3, 11]);
    // the 3 of 5 nearest the median (3, 11): (2, 11), (3, 12), then (1, 10) and (4, 13) tie; the first is kept
    const near = combineVectors(all, w, { combiner: 'near_median', trimFraction: 0.2 });
    expect([...near]).toEqual([2, 11]);
  });

  it('weighs a claimed sample count only as far as the job trusts it', () => {
    expect(updateWeight({}, 2 ** 31 - 1)).toBe(100_000);
    expect(updateWeight({ maxSamplesPerUpdate: 500 }, 2 ** 31 - 1)).toBe(500);
    expect(updateWeight({ weighting: 'equal' }, 2 ** 31 - 1)).toBe(1);
    expect(updateWeight({}, 40)).toBe(40);
  });

  it('clips each module to the round median of its norms', () => {
    const adapter = (scale: number): LoraAdapter => ({
      alpha: 4,
      modules: new Map([['m', { rank: 1, inFeatures: 2, outFeatures: 2, A: v(3 * scale, 4 * scale), B: v(1, 0) }]]),
    });
    const clipped = clipToMedian([adapter(1), adapter(1), adapter(100)], 'factors', () => 0);
    expect([...(clipped[2]?.modules.get('m')?.A ?? [])]).toEqual([3, 4]);
    expect([...(clipped[0]?.modules.get('m')?.A ?? [])]).toEqual([3, 4]);
  });

  it('refuses a factor over the bound where factors are averaged, whatever the product', () => {
    const zeroB: LoraAdapter = {
      alpha: 4,
      modules: new Map([['m', { rank: 1, inFeatures: 2, outFeatures: 2, A: v(3e3, 4e3), B: v(0, 0) }]]),
    };
    const expected = { modules: new Map([['m', [2, 2] as const]]), rank: 1, alpha: 4, maxNorm: 1 };
    expect(updateProblems(zeroB, expected)).toEqual([]);
    expect(updateProblems(zeroB, { ...expected, maxFactorNorm: 1e3 })).toEqual([
      { code: 'factor_norm_too_large', module: 'm', factor: 'A', norm: 5e3, maxNorm: 1e3 },
    ]);
  });
});
