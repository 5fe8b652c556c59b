/** Seeded randomness: the same seed gives the same draws; a shuffle is a permutation of a copy. */
import { describe, expect, it } from 'vitest';
import { Random } from '../src/index.js';

describe('Random.shuffled', () => {
  it('returns every item once, in an order fixed by the seed, and leaves its input alone', () => {
    const items = Array.from({ length: 20 }, (_, i) => `item-${i}`);
    const first = new Random(7).shuffled(items);
    expect([...first].sort()).toEqual([...items].sort());
    expect(first).toEqual(new Random(7).shuffled(items));
    expect(first).not.toEqual(items);
    expect(new Random(8).shuffled(items)).not.toEqual(first);
    expect(items[0]).toBe('item-0');
  });

  it('draws Fisher-Yates swaps from the last position down, one integer per position', () => {
    // the partitions the checkpoints were pretrained on depend on this exact order of draws
    const random = new Random(3);
    const draws = [4, 3, 2, 1].map((i) => random.integer(i + 1));
    const expected = ['a', 'b', 'c', 'd', 'e'];
    [4, 3, 2, 1].forEach((i, k) => {
      const j = draws[k] as number;
      [expected[i], expected[j]] = [expected[j] as string, expected[i] as string];
    });
    expect(new Random(3).shuffled(['a', 'b', 'c', 'd', 'e'])).toEqual(expected);
  });
});
