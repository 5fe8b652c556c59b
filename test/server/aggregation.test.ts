import { describe, expect, it } from 'vitest';
import { ortKernels } from '@floe/server';
import { factorizeLargeSum, jsMatMul, loraProduct, relativeFrobeniusError } from '@floe/shared';
import { randomFactors, rng } from '../../packages/shared/test/fixtures.js';

describe("the aggregation workers' ORT kernels", () => {
  it('multiply as the reference loops do, in both layouts', async () => {
    const kernels = await ortKernels(1);
    const a = Float32Array.from({ length: 7 * 5 }, (_, i) => Math.sin(i));
    const b = Float32Array.from({ length: 5 * 3 }, (_, i) => Math.cos(i));
    const expected = jsMatMul(a, 7, 5, b, 3) as Float32Array;
    expect(relativeFrobeniusError(await kernels.matmul(a, 7, 5, b, 3), expected)).toBeLessThan(1e-6);
    const at = new Float32Array(5 * 7);
    for (let i = 0; i < 7; i++) for (let k = 0; k < 5; k++) at[k * 7 + i] = a[i * 5 + k]!;
    expect(relativeFrobeniusError(await kernels.matmul(at, 7, 5, b, 3, true), expected)).toBeLessThan(1e-6);
  });

  it('factorize a round of 300 mixed-rank updates as the JavaScript route does', async () => {
    const kernels = await ortKernels(1);
    const terms = Array.from({ length: 300 }, (_, k) => randomFactors([2, 4, 8][k % 3]!, 40, 48, rng(k + 1)));
    const weights = terms.map((_, k) => (1 + (k % 5)) / 900);
    // one scratch for every call, as flexlora shares it across modules: later sums use a prefix of it
    const scratch = {};
    for (const [rank, count] of [
      [8, 300],
      [40, 120],
    ] as const) {
      const reference = await factorizeLargeSum(terms.slice(0, count), weights.slice(0, count), rank, 16);
      const native = await factorizeLargeSum(
        terms.slice(0, count),
        weights.slice(0, count),
        rank,
        16,
        kernels,
        scratch,
      );
      expect(
        relativeFrobeniusError(loraProduct(native.factors, 16).data, loraProduct(reference.factors, 16).data),
      ).toBeLessThan(1e-4);
    }
  });
});
