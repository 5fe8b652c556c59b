/** Paired, stratified percentile bootstrap intervals (bootstrap.ts). */
import { describe, expect, it } from 'vitest';
import { type ItemScores, Random, pairedBootstrap } from '../src/index.js';

const outcomes = (right: readonly boolean[]): ItemScores => ({ sums: right.map(Number), weights: right.map(() => 1) });
const coin = (n: number, seed: number): boolean[] => {
  const random = new Random(seed);
  return Array.from({ length: n }, () => random.next() < 0.5);
};

describe('pairedBootstrap', () => {
  it('takes a figure as the mean over strata of sum(sums) / sum(weights), resampling within each stratum', () => {
    // stratum 1: 3 bits over 2 bytes and 1 over 2 -> 1 bit per byte; stratum 2: 6 / 3 = 2. Pooled: 10 / 7
    const prose = [
      { sums: [3, 1], weights: [2, 2] },
      { sums: [6], weights: [3] },
    ];
    const { value } = pairedBootstrap({ edge: prose }, []);
    expect(value['edge']!.mean).toBe(1.5);
    // stratum 1 resampled is 0.5, 1 or 1.5 (a quarter, half, a quarter); stratum 2 is always drawn whole
    expect(value['edge']!.low).toBe(1.25);
    expect(value['edge']!.high).toBe(1.75);
  });

  it('gives a difference of exactly zero to identical methods and exactly one to right against wrong', () => {
    const a = [outcomes(coin(80, 1)), outcomes(coin(40, 2))];
    const right = a.map((s) => ({ sums: s.sums.map(() => 1), weights: s.weights }));
    const wrong = a.map((s) => ({ sums: s.sums.map(() => 0), weights: s.weights }));
    const { difference } = pairedBootstrap({ a, b: a, right, wrong }, [
      ['a', 'b'],
      ['right', 'wrong'],
    ]);
    expect(difference['a-b']).toEqual({ mean: 0, low: 0, high: 0 });
    expect(difference['right-wrong']).toEqual({ mean: 1, low: 1, high: 1 });
  });

  it('resolves a small difference that the two methods do not share, as only pairing can', () => {
    // b is a with 6 of 300 wrong answers made right: +0.02, on items both otherwise agree on
    const right = coin(300, 3);
    const wrongs = right.flatMap((r, i) => (r ? [] : [i])).slice(0, 6);
    const better = right.map((r, i) => r || wrongs.includes(i));
    const { value, difference } = pairedBootstrap({ b: [outcomes(better)], a: [outcomes(right)] }, [['b', 'a']]);
    const d = difference['b-a']!;
    expect(d.mean).toBeCloseTo(0.02, 12);
    expect(d.low).toBeGreaterThan(0);
    // each method's own interval is far wider than the difference: unpaired, the two would overlap
    expect(value['a']!.high).toBeGreaterThan(value['b']!.low);
  });

  it('narrows as the items grow: four times the items, about half the width', () => {
    const width = (n: number) => {
      const v = pairedBootstrap({ a: [outcomes(coin(n, 4))] }, [], { resamples: 4000 }).value['a']!;
      return v.high - v.low;
    };
    const ratio = width(100) / width(400);
    expect(ratio).toBeGreaterThan(1.6);
    expect(ratio).toBeLessThan(2.5);
  });

  it('refuses methods scored on different items and pairs naming no method', () => {
    const a = [outcomes(coin(10, 5))];
    expect(() => pairedBootstrap({ a, b: [outcomes(coin(11, 5))] }, [])).toThrow(/same items/);
    expect(() => pairedBootstrap({ a, b: [outcomes(coin(10, 5)), outcomes(coin(10, 6))] }, [])).toThrow(/same items/);
    expect(() => pairedBootstrap({ a }, [['a', 'z']])).toThrow(/no method z/);
    expect(() => pairedBootstrap({}, [])).toThrow(RangeError);
  });
});
