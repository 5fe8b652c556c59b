import { describe, expect, it } from 'vitest';
import { PretrainData } from '../src/index.js';

describe('pretraining batches', () => {
  const data = new PretrainData(0, 64);

  it('are a function of (seed, step): a resumed run sees the same data', () => {
    expect(new PretrainData(0, 64).batch(17, 4)).toEqual(data.batch(17, 4));
    expect(data.batch(18, 4)).not.toEqual(data.batch(17, 4));
  });

  it('start every row with BOS and predict the next byte', () => {
    const batch = data.batch(3, 32);
    for (const [r, row] of batch.inputIds.entries()) {
      expect(row[0]).toBe(256);
      expect(row.length).toBe(64);
      expect(batch.targets[r]!.slice(0, -1)).toEqual(row.slice(1));
      expect(batch.weights[r]!.every((w) => w === 1)).toBe(true);
    }
  });

  it('mix the tasks roughly by their weights, examples starting at an example boundary', () => {
    const decoder = new TextDecoder();
    let arithmetic = 0;
    const rows = 2000;
    for (const row of data.batch(5, rows).inputIds) {
      const text = decoder.decode(Uint8Array.from(row.slice(1)));
      if (/^-?\d+[+\-*]\d+=-?\d+\n/.test(text)) arithmetic++;
    }
    expect(arithmetic / rows).toBeGreaterThan(0.25);
    expect(arithmetic / rows).toBeLessThan(0.35);
  });
});
