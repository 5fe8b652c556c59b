/**
 * One optimizer step as an ONNX graph, for every trainable tensor at once:
 *
 *   g = grad_sum * inv_weight_sum * clip,  clip = min(1, max_norm / (||grad_sum * inv_weight_sum|| + 1e-6))
 *   m = b1 m + (1 - b1) g;   v = b2 v + (1 - b2) g^2
 *   p = p (1 - lr wd) - (lr / bc1) m / (sqrt(v / bc2) + eps)      (wd only on matrices)
 *
 * Scalars are combined before they touch a tensor, so each tensor is read and written as few times
 * as possible (the step is memory-bound). Inputs per tensor i: p.i, m.i, v.i, g.i; scalars
 * inv_weight_sum, lr, bc1 = 1 - b1^t, bc2 = 1 - b2^t, max_norm. Outputs p_out.i, m_out.i, v_out.i
 * and grad_norm (of the averaged gradient, before clipping).
 */
import { DataType, Graph } from './graph.js';

export interface AdamWHyper {
  beta1: number;
  beta2: number;
  epsilon: number;
  weightDecay: number;
}

export function buildAdamWGraph(shapes: readonly (readonly number[])[], hyper: AdamWHyper): Uint8Array {
  const g = new Graph('floe_adamw');
  const F = DataType.FLOAT;
  const scalar = (name: string) => g.input(name, F, []);
  const invWeight = scalar('inv_weight_sum');
  const lr = scalar('lr');
  const bc1 = scalar('bc1');
  const bc2 = scalar('bc2');
  const maxNorm = scalar('max_norm');
  const c = (x: number) => g.constF32([x]);

  const rawGrads = shapes.map((shape, i) => g.input(`g.${i}`, F, [...shape]));
  const squares = rawGrads.map((grad) => g.op('ReduceSumSquare', [grad], { keepdims: 0 }));
  const total = squares.length === 1 ? (squares[0] as string) : g.op('Sum', squares);
  const norm = g.op('Mul', [g.op('Sqrt', [total]), invWeight]);
  g.output(norm, 'grad_norm', F, []);
  const clip = g.op('Min', [c(1), g.op('Div', [maxNorm, g.op('Add', [norm, c(1e-6)])])]);
  const gradScale = g.op('Mul', [invWeight, clip]);
  const mScale = g.op('Mul', [gradScale, c(1 - hyper.beta1)]);
  const vScale = g.op('Mul', [g.op('Mul', [gradScale, gradScale]), c(1 - hyper.beta2)]);
  const stepSize = g.op('Div', [lr, bc1]);
  const invBc2 = g.op('Reciprocal', [bc2]);
  const decay = g.op('Sub', [c(1), g.op('Mul', [lr, c(hyper.weightDecay)])]);

  shapes.forEach((shape, i) => {
    const dims = [...shape];
    const grad = rawGrads[i] as string;
    const p = g.input(`p.${i}`, F, dims);
    const m = g.input(`m.${i}`, F, dims);
    const v = g.input(`v.${i}`, F, dims);
    const m2 = g.op('Add', [g.op('Mul', [m, c(hyper.beta1)]), g.op('Mul', [grad, mScale])], {}, `m_out.${i}`);
    const v2 = g.op(
      'Add',
      [g.op('Mul', [v, c(hyper.beta2)]), g.op('Mul', [g.op('Mul', [grad, grad]), vScale])],
      {},
      `v_out.${i}`,
    );
    const denominator = g.op('Add', [g.op('Sqrt', [g.op('Mul', [v2, invBc2])]), c(hyper.epsilon)]);
    const update = g.op('Div', [g.op('Mul', [m2, stepSize]), denominator]);
    const kept = hyper.weightDecay !== 0 && shape.length >= 2 ? g.op('Mul', [p, decay]) : p;
    g.op('Sub', [kept, update], {}, `p_out.${i}`);
    for (const name of [`p_out.${i}`, `m_out.${i}`, `v_out.${i}`]) g.outputs.push({ name, elemType: F, dims });
  });
  return g.toBytes();
}
