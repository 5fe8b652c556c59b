import { describe, expect, it } from 'vitest';
import {
  AdapterMathError,
  adapterFromTensors,
  adapterToTensors,
  factorize,
  factorizeLargeSum,
  factorizeSum,
  factorizeTop,
  frobeniusNorm,
  jsMatMul,
  loraProductNorm,
  loraProduct,
  matrix,
  moduleKind,
  moduleLayer,
  padRank,
  relativeFrobeniusError,
  truncateRank,
  weightedMean,
} from '../src/index.js';
import { randomArray, randomFactors, rng } from './fixtures.js';

/** Straight from the definition, in f64: (alpha / r) * sum_k B[i,k] A[k,j]. */
function naiveProduct(
  A: Float32Array,
  B: Float32Array,
  rank: number,
  out: number,
  inn: number,
  alpha: number,
): Float64Array {
  const dW = new Float64Array(out * inn);
  for (let i = 0; i < out; i++)
    for (let j = 0; j < inn; j++) {
      let s = 0;
      for (let k = 0; k < rank; k++) s += B[i * rank + k]! * A[k * inn + j]!;
      dW[i * inn + j] = (alpha / rank) * s;
    }
  return dW;
}

/** A matrix with chosen singular values: Q1 diag(s) Q2^T from random orthonormal columns (Gram-Schmidt). */
function withSingularValues(rows: number, cols: number, values: number[], seed: number) {
  const random = rng(seed);
  const orthonormal = (n: number, k: number) => {
    const q: Float64Array[] = [];
    while (q.length < k) {
      const v = Float64Array.from(randomArray(n, random));
      for (const u of q) {
        const d = u.reduce((s, x, i) => s + x * v[i]!, 0);
        for (let i = 0; i < n; i++) v[i]! -= d * u[i]!;
      }
      const norm = Math.hypot(...v);
      q.push(v.map((x) => x / norm));
    }
    return q;
  };
  const U = orthonormal(rows, values.length);
  const V = orthonormal(cols, values.length);
  const data = new Float32Array(rows * cols);
  for (let i = 0; i < rows; i++)
    for (let j = 0; j < cols; j++) data[i * cols + j] = values.reduce((s, sv, k) => s + sv * U[k]![i]! * V[k]![j]!, 0);
  return matrix(rows, cols, data);
}

describe('rank padding and truncation', () => {
  const f = randomFactors(4, 6, 5, rng(1));

  it('pads with zeros and leaves the product unchanged', () => {
    const padded = padRank(f, 7);
    expect(padded.rank).toBe(7);
    expect([...padded.A.subarray(4 * 6)]).toEqual(new Array(3 * 6).fill(0));
    expect(padded.B[0 * 7 + 5]).toBe(0);
    expect(padded.B[2 * 7 + 1]).toBe(f.B[2 * 4 + 1]);
    // the product scales with alpha / r, so compare at equal alpha / r
    expect(relativeFrobeniusError(loraProduct(padded, 7).data, loraProduct(f, 4).data)).toBeLessThan(1e-6);
  });

  it('truncates to the leading components and inverts padding', () => {
    const t = truncateRank(padRank(f, 9), 4);
    expect(t.A).toEqual(f.A);
    expect(t.B).toEqual(f.B);
    const t2 = truncateRank(f, 2);
    expect([...t2.A]).toEqual([...f.A.subarray(0, 12)]);
    expect([t2.B[0], t2.B[1], t2.B[2]]).toEqual([f.B[0], f.B[1], f.B[4]]);
  });

  it('refuses to pad down, truncate up or use a rank that is not a positive integer', () => {
    expect(() => padRank(f, 2)).toThrow(AdapterMathError);
    expect(() => truncateRank(f, 5)).toThrow(AdapterMathError);
    expect(() => padRank(f, 4.5)).toThrow(AdapterMathError);
    expect(() => truncateRank(f, 0)).toThrow(AdapterMathError);
  });
});

describe('weighted mean', () => {
  it('weights by sample counts', () => {
    const mean = weightedMean([Float32Array.of(1, 10), Float32Array.of(3, 20)], [1, 3]);
    expect([...mean]).toEqual([2.5, 17.5]);
  });

  it('refuses mismatched lengths, negative or NaN weights and all-zero weights', () => {
    expect(() => weightedMean([Float32Array.of(1), Float32Array.of(1, 2)], [1, 1])).toThrow(/elements/);
    expect(() => weightedMean([Float32Array.of(1)], [-1])).toThrow(AdapterMathError);
    expect(() => weightedMean([Float32Array.of(1)], [Number.NaN])).toThrow(AdapterMathError);
    expect(() => weightedMean([Float32Array.of(1)], [0])).toThrow(/sum to zero/);
    expect(() => weightedMean([], [])).toThrow(AdapterMathError);
  });
});

describe('LoRA product', () => {
  it('equals (alpha / r) B A computed from the definition', () => {
    const f = randomFactors(3, 7, 5, rng(2));
    const dW = loraProduct(f, 12);
    expect([dW.rows, dW.cols]).toEqual([5, 7]);
    const exact = naiveProduct(f.A, f.B, 3, 5, 7, 12);
    for (let i = 0; i < exact.length; i++) expect(dW.data[i]).toBeCloseTo(exact[i]!, 5);
  });
});

describe('re-factorization by truncated SVD', () => {
  it.each([
    [128, 128, 8],
    [128, 352, 8],
    [352, 128, 16],
    [64, 256, 4],
  ])('reproduces a rank-r product of %i x %i at rank r=%i (relative error < 1e-5)', (out, inn, rank) => {
    const f = randomFactors(rank, inn, out, rng(out + inn + rank));
    const dW = loraProduct(f, 16);
    const { factors } = factorize(dW, rank, 16);
    expect([factors.rank, factors.outFeatures, factors.inFeatures]).toEqual([rank, out, inn]);
    expect(relativeFrobeniusError(loraProduct(factors, 16).data, dW.data)).toBeLessThan(1e-5);
  });

  it('keeps the product exact at a different alpha and a larger rank (zero-padded)', () => {
    const dW = loraProduct(randomFactors(4, 20, 10, rng(3)), 8);
    const { factors } = factorize(dW, 12, 32);
    expect(relativeFrobeniusError(loraProduct(factors, 32).data, dW.data)).toBeLessThan(1e-5);
    const wide = factorize(dW, 15, 32); // more than min(10, 20) singular values exist
    expect(relativeFrobeniusError(loraProduct(wide.factors, 32).data, dW.data)).toBeLessThan(1e-5);
  });

  it.each([
    [40, 30],
    [30, 40],
  ])('gives the best rank-k approximation of a %i x %i matrix: error equals the tail singular values', (rows, cols) => {
    const values = [9, 7, 5, 3.5, 2, 1.25, 0.5, 0.25];
    const M = withSingularValues(rows, cols, values, rows * cols);
    const { singularValues } = factorize(M, 1, 1);
    for (const [i, v] of values.entries()) expect(singularValues[i]).toBeCloseTo(v, 4);

    for (let k = 1; k < values.length; k++) {
      const { factors } = factorize(M, k, 2);
      const approx = loraProduct(factors, 2).data;
      const residual = approx.map((v, i) => v - M.data[i]!);
      const tail = Math.sqrt(values.slice(k).reduce((s, v) => s + v * v, 0));
      expect(Math.abs(frobeniusNorm(residual) - tail) / frobeniusNorm(M.data)).toBeLessThan(1e-5);
    }
  });

  it('beats plain rank truncation of a sum of LoRA factors (why flexlora multiplies first)', () => {
    const random = rng(4);
    const clients = [randomFactors(8, 32, 32, random), randomFactors(8, 32, 32, random)];
    const dW = weightedMean(
      clients.map((c) => loraProduct(c, 8).data),
      [1, 1],
    );
    const exact = matrix(32, 32, dW);
    const svd = loraProduct(factorize(exact, 8, 8).factors, 8).data;
    const naive = loraProduct(
      {
        rank: 8,
        inFeatures: 32,
        outFeatures: 32,
        A: weightedMean(
          clients.map((c) => c.A),
          [1, 1],
        ),
        B: weightedMean(
          clients.map((c) => c.B),
          [1, 1],
        ),
      },
      8,
    ).data;
    expect(relativeFrobeniusError(svd, dW)).toBeLessThan(relativeFrobeniusError(naive, dW));
  });

  it('refuses a non-positive alpha or rank', () => {
    const m = matrix(2, 2, Float32Array.of(1, 0, 0, 1));
    expect(() => factorize(m, 1, 0)).toThrow(AdapterMathError);
    expect(() => factorize(m, 0, 1)).toThrow(AdapterMathError);
    expect(() => matrix(2, 3, new Float32Array(5))).toThrow(AdapterMathError);
  });
});

describe('factorizeSum: the SVD of a weighted sum of LoRA products from their factors', () => {
  const dense = (terms: ReturnType<typeof randomFactors>[], weights: number[], alpha: number) => {
    const sum = new Float32Array(terms[0]!.outFeatures * terms[0]!.inFeatures);
    terms.forEach((t, k) => loraProduct(t, alpha).data.forEach((x, i) => (sum[i] = sum[i]! + weights[k]! * x)));
    return matrix(terms[0]!.outFeatures, terms[0]!.inFeatures, sum);
  };

  it.each([
    [352, 128, [8, 8, 2, 4], 8], // stacked rank 22 < 128: the low-rank route
    [128, 352, [8, 4], 12],
    [40, 30, [8, 8, 8, 8], 5], // stacked rank 32 >= 30: the dense route
  ])('matches factorize of the formed sum (%i x %i, ranks %j, kept %i)', (out, inn, ranks, rank) => {
    const terms = ranks.map((r, k) => randomFactors(r, inn, out, rng(100 * k + r + out)));
    const weights = ranks.map((_, k) => (k + 1) / 10);
    const expected = factorize(dense(terms, weights, 16), rank, 16);
    const got = factorizeSum(terms, weights, rank, 16);
    expect([got.factors.rank, got.factors.outFeatures, got.factors.inFeatures]).toEqual([rank, out, inn]);
    expect(got.singularValues.length).toBe(expected.singularValues.length);
    const top = expected.singularValues[0]!;
    got.singularValues.forEach((v, i) => expect(Math.abs(v - expected.singularValues[i]!) / top).toBeLessThan(1e-5));
    const product = loraProduct(got.factors, 16).data;
    expect(relativeFrobeniusError(product, loraProduct(expected.factors, 16).data)).toBeLessThan(1e-4);
  });

  it('is exact at full rank: the kept factors give back the sum', () => {
    const terms = [randomFactors(4, 50, 60, rng(1)), randomFactors(2, 50, 60, rng(2))];
    const sum = dense(terms, [0.25, 0.75], 8);
    const { factors } = factorizeSum(terms, [0.25, 0.75], 6, 8);
    expect(relativeFrobeniusError(loraProduct(factors, 8).data, sum.data)).toBeLessThan(1e-5);
  });

  it('refuses terms of different shapes and a missing weight', () => {
    const a = randomFactors(2, 10, 12, rng(1));
    const b = randomFactors(2, 11, 12, rng(2));
    expect(() => factorizeSum([a, b], [1, 1], 2, 4)).toThrow(AdapterMathError);
    expect(() => factorizeSum([a], [], 2, 4)).toThrow(/one weight per term/);
  });
});

describe('factorizeLargeSum: many updates through one stacked product', () => {
  // 60 clients of rank 4 on a 48 x 40 module share a rank-3 direction, plus their own noise
  const shared = randomFactors(3, 40, 48, rng(7));
  const terms = Array.from({ length: 60 }, (_, k) => {
    const own = randomFactors(4, 40, 48, rng(1000 + k));
    own.B = own.B.map((x, i) => 0.05 * x + (i % 4 < 3 ? (shared.B[Math.floor(i / 4) * 3 + (i % 4)] as number) : 0));
    own.A = own.A.map((x, i) => 0.05 * x + (i < 3 * 40 ? (shared.A[i] as number) : 0));
    return own;
  });
  const weights = terms.map((_, k) => 1 + (k % 3));
  const shares = weights.map((w) => w / weights.reduce((a, b) => a + b, 0));
  const exact = () => {
    const sum = new Float32Array(48 * 40);
    terms.forEach((t, k) => loraProduct(t, 16).data.forEach((x, i) => (sum[i] = sum[i]! + shares[k]! * x)));
    return matrix(48, 40, sum);
  };

  it('matches the full SVD of the formed sum at full rank, and its leading components at low rank', async () => {
    const full = await factorizeLargeSum(terms, shares, 40, 16);
    const reference = factorize(exact(), 40, 16);
    expect(relativeFrobeniusError(loraProduct(full.factors, 16).data, exact().data)).toBeLessThan(1e-5);
    const top = await factorizeLargeSum(terms, shares, 8, 16);
    const best = factorize(exact(), 8, 16);
    for (let i = 0; i < 8; i++) {
      expect(
        Math.abs(top.singularValues[i]! - reference.singularValues[i]!) / reference.singularValues[0]!,
      ).toBeLessThan(1e-4);
    }
    expect(relativeFrobeniusError(loraProduct(top.factors, 16).data, loraProduct(best.factors, 16).data)).toBeLessThan(
      1e-3,
    );
  });

  it('forms the sum with the kernel it is given', async () => {
    let calls = 0;
    const counting = (...args: Parameters<typeof jsMatMul>) => {
      calls++;
      return jsMatMul(...args);
    };
    await factorizeLargeSum(terms, shares, 8, 16, { matmul: counting });
    // the stacked product, then the sketch, three power iterations (two products each) and the projection
    expect(calls).toBe(1 + 1 + 6 + 1);
    // below the stacked rank of min(out, in), the exact QR route needs no kernel
    await factorizeLargeSum(terms.slice(0, 5), shares.slice(0, 5), 8, 16, { matmul: counting });
    expect(calls).toBe(9);
    // both layouts of the kernel agree with each other
    const a = Float32Array.from({ length: 6 }, (_, i) => i + 1);
    const b = Float32Array.from({ length: 6 }, (_, i) => 6 - i);
    const at = Float32Array.from([1, 4, 2, 5, 3, 6]); // a [2 x 3] stored as [3 x 2]
    expect([...(jsMatMul(at, 2, 3, b, 2, true) as Float32Array)]).toEqual([
      ...(jsMatMul(a, 2, 3, b, 2) as Float32Array),
    ]);
  });

  it('finds the leading components of a matrix by subspace iteration', async () => {
    const dW = exact();
    const top = await factorizeTop(dW, 3, 16);
    const reference = factorize(dW, 3, 16);
    expect(
      relativeFrobeniusError(loraProduct(top.factors, 16).data, loraProduct(reference.factors, 16).data),
    ).toBeLessThan(1e-4);
  });
});

describe('PEFT layout', () => {
  it('names tensors as PEFT does and pairs them back into modules', () => {
    const random = rng(5);
    const modules = new Map([
      ['model.layers.0.self_attn.q_proj', randomFactors(4, 16, 16, random)],
      ['model.layers.1.mlp.down_proj', randomFactors(4, 44, 16, random)],
    ]);
    const tensors = adapterToTensors({ alpha: 8, modules });
    expect(tensors.map((t) => [t.name, t.shape])).toEqual([
      ['base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight', [4, 16]],
      ['base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight', [16, 4]],
      ['base_model.model.model.layers.1.mlp.down_proj.lora_A.weight', [4, 44]],
      ['base_model.model.model.layers.1.mlp.down_proj.lora_B.weight', [16, 4]],
    ]);
    const back = adapterFromTensors(tensors, 8);
    expect(back.modules.get('model.layers.1.mlp.down_proj')).toEqual(modules.get('model.layers.1.mlp.down_proj'));
    expect(moduleKind('model.layers.1.mlp.down_proj')).toBe('down_proj');
    expect(moduleLayer('model.layers.12.mlp.down_proj')).toBe(12);
    expect(moduleLayer('lm_head')).toBeUndefined();
  });

  it('refuses unpaired, mis-ranked or foreign tensors', () => {
    const A = { name: 'base_model.model.m.q_proj.lora_A.weight', shape: [2, 3], data: new Float32Array(6) };
    const B = { name: 'base_model.model.m.q_proj.lora_B.weight', shape: [3, 3], data: new Float32Array(9) };
    expect(() => adapterFromTensors([A], 1)).toThrow(/lacks its lora_B/);
    expect(() => adapterFromTensors([A, B], 1)).toThrow(/rank/);
    expect(() => adapterFromTensors([{ ...A, name: 'model.embed_tokens.weight' }], 1)).toThrow(/not a PEFT/);
    expect(() => adapterFromTensors([A, A], 1)).toThrow(/twice/);
  });
});

describe('loraProductNorm', () => {
  it('equals the Frobenius norm of the formed product', () => {
    const random = rng(31);
    for (const [rank, inn, out] of [
      [1, 5, 3],
      [4, 128, 128],
      [8, 352, 128],
      [16, 64, 256],
    ] as const) {
      const f = randomFactors(rank, inn, out, random);
      const exact = frobeniusNorm(loraProduct(f, 16).data);
      expect(Math.abs(loraProductNorm(f, 16) - exact) / exact).toBeLessThan(1e-5);
    }
  });
});
