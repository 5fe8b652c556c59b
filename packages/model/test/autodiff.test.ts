import ort from 'onnxruntime-node';
import { describe, expect, it } from 'vitest';
import { DataType, Random, TapeGraph, type Value } from '../src/index.js';

const size = (shape: readonly number[]) => shape.reduce((a, b) => a * b, 1);

/**
 * Builds loss = sum(op(inputs) * C) for a random constant C, runs the gradient graph in ORT, and
 * compares every input's gradient on sampled entries with central finite differences of the loss.
 */
async function checkGradients(
  name: string,
  shapes: number[][],
  build: (t: TapeGraph, inputs: Value[]) => Value,
  options: { positive?: boolean; seed?: number } = {},
): Promise<void> {
  const random = new Random(options.seed ?? 1);
  const t = new TapeGraph(name);
  const inputs = shapes.map((shape, i) => t.input(`x${i}`, shape, true));
  const out = build(t, inputs);
  const C = t.initializer('C', random.normalArray(size(out.shape), 1), out.shape);
  const loss = t.reduceSum(t.mul(out, C), [...out.shape.keys()], false);
  const grads = t.backward(loss, inputs);
  t.output(loss, 'loss');
  grads.forEach((g, i) => t.output(g, `grad${i}`));
  const session = await ort.InferenceSession.create(t.graph.toBytes());

  const values = shapes.map((shape) =>
    options.positive
      ? Float32Array.from({ length: size(shape) }, () => 0.5 + random.next())
      : random.normalArray(size(shape), 1),
  );
  const run = async (xs: Float32Array[]) => {
    const feeds = Object.fromEntries(xs.map((x, i) => [`x${i}`, new ort.Tensor('float32', x, shapes[i])]));
    return session.run(feeds);
  };
  const result = await run(values);
  for (const [i, x] of values.entries()) {
    const analytic = result[`grad${i}`]!.data as Float32Array;
    expect(analytic.length).toBe(x.length);
    for (let n = 0; n < 6; n++) {
      const j = random.integer(x.length);
      const eps = 1e-2;
      const plus = values.map((v) => v.slice());
      const minus = values.map((v) => v.slice());
      plus[i]![j]! += eps;
      minus[i]![j]! -= eps;
      const fPlus = ((await run(plus))['loss']!.data as Float32Array)[0]!;
      const fMinus = ((await run(minus))['loss']!.data as Float32Array)[0]!;
      const numeric = (fPlus - fMinus) / (2 * eps);
      expect(
        Math.abs(numeric - analytic[j]!),
        `${name}: d/dx${i}[${j}] analytic ${analytic[j]} numeric ${numeric}`,
      ).toBeLessThan(5e-3 + 1e-2 * Math.abs(numeric));
    }
  }
  await session.release();
}

describe('vector-Jacobian rules match finite differences', () => {
  it('add, sub, mul with broadcasting', async () => {
    await checkGradients('add', [[2, 3, 4], [4]], (t, [a, b]) => t.add(a!, b!));
    await checkGradients(
      'sub',
      [
        [2, 1, 4],
        [3, 1],
      ],
      (t, [a, b]) => t.sub(a!, b!),
    );
    await checkGradients(
      'mul',
      [
        [2, 3, 4],
        [1, 3, 1],
      ],
      (t, [a, b]) => t.mul(a!, b!),
    );
  });

  it('div, neg, sqrt, sigmoid', async () => {
    await checkGradients(
      'div',
      [
        [3, 4],
        [3, 1],
      ],
      (t, [a, b]) => t.div(a!, b!),
      { positive: true },
    );
    await checkGradients('neg', [[5]], (t, [a]) => t.neg(a!));
    await checkGradients('sqrt', [[2, 5]], (t, [a]) => t.sqrt(a!), { positive: true });
    await checkGradients('sigmoid', [[2, 5]], (t, [a]) => t.sigmoid(a!));
  });

  it('matmul: batched, broadcast batch, and a 2-D weight shared across a batch', async () => {
    await checkGradients(
      'matmul4d',
      [
        [2, 3, 4, 5],
        [2, 3, 5, 2],
      ],
      (t, [a, b]) => t.matmul(a!, b!),
    );
    await checkGradients(
      'matmulBroadcast',
      [
        [2, 3, 4, 5],
        [1, 3, 5, 2],
      ],
      (t, [a, b]) => t.matmul(a!, b!),
    );
    await checkGradients(
      'matmulWeight',
      [
        [2, 3, 5],
        [5, 4],
      ],
      (t, [a, b]) => t.matmul(a!, b!),
    );
  });

  it('reshape, transpose, expand', async () => {
    await checkGradients('reshape', [[2, 6]], (t, [a]) => t.reshape(a!, [3, 4]));
    await checkGradients('transpose', [[2, 3, 4]], (t, [a]) => t.transpose(a!, [2, 0, 1]));
    await checkGradients('expand', [[2, 1, 3]], (t, [a]) => t.expand(a!, [2, 4, 3]));
  });

  it('reduceSum, reduceMean, softmax', async () => {
    await checkGradients('reduceSum', [[2, 3, 4]], (t, [a]) => t.reduceSum(a!, [1], true));
    await checkGradients('reduceSumDrop', [[2, 3, 4]], (t, [a]) => t.reduceSum(a!, [0, 2], false));
    await checkGradients('reduceMean', [[2, 3, 4]], (t, [a]) => t.reduceMean(a!, [-1], true));
    await checkGradients('softmax', [[2, 3, 5]], (t, [a]) => t.softmax(a!, -1));
  });

  it('split and concat, including a part that does not reach the loss', async () => {
    await checkGradients('split', [[2, 7]], (t, [a]) => {
      const [x, , z] = t.split(a!, [2, 3, 2], 1);
      return t.concat([z!, x!], 1);
    });
    await checkGradients(
      'concat',
      [
        [2, 3],
        [2, 2],
      ],
      (t, [a, b]) => t.concat([a!, b!], -1),
    );
  });

  it('a value used twice sums both gradients', async () => {
    await checkGradients('reuse', [[3, 3]], (t, [a]) => t.matmul(a!, t.sigmoid(a!)));
  });

  it('weighted negative log-likelihood over a vocabulary', async () => {
    const random = new Random(3);
    const t = new TapeGraph('nll');
    const logits = t.input('logits', [4, 6], true);
    const targets = t.input('targets', [4], false, DataType.INT64);
    const weights = t.input('weights', [4]);
    const loss = t.weightedNllSum(logits, targets, weights);
    const [grad] = t.backward(loss, [logits]);
    t.output(loss, 'loss');
    t.output(grad!, 'grad');
    const session = await ort.InferenceSession.create(t.graph.toBytes());
    const x = random.normalArray(24, 2);
    const y = BigInt64Array.from([1n, 5n, 0n, 3n]);
    const w = Float32Array.of(1, 0, 2.5, 0.5);
    const out = await session.run({
      logits: new ort.Tensor('float32', x, [4, 6]),
      targets: new ort.Tensor('int64', y, [4]),
      weights: new ort.Tensor('float32', w, [4]),
    });
    let expected = 0;
    const expectedGrad = new Float32Array(24);
    for (let n = 0; n < 4; n++) {
      const row = [...x.subarray(n * 6, n * 6 + 6)];
      const max = Math.max(...row);
      const z = row.reduce((s, v) => s + Math.exp(v - max), 0);
      const target = Number(y[n]);
      expected += w[n]! * -(row[target]! - max - Math.log(z));
      row.forEach((v, j) => (expectedGrad[n * 6 + j] = w[n]! * (Math.exp(v - max) / z - (j === target ? 1 : 0))));
    }
    expect((out['loss']!.data as Float32Array)[0]).toBeCloseTo(expected, 4);
    const g = out['grad']!.data as Float32Array;
    expectedGrad.forEach((v, j) => expect(g[j]).toBeCloseTo(v, 5));
  });
});
