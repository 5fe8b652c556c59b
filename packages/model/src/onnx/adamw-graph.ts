/**
 * One optimizer step as an ONNX graph, for every trainable tensor at once:
 *
 *   g = grad_sum * inv_weight_sum                 (gradients accumulated over micro-batches)
 *   g = g * min(1, max_norm / (||g||_global + 1e-6))
 *   m = b1 m + (1 - b1) g;   v = b2 v + (1 - b2) g^2
 *   p = p - lr (m / bc1 / (sqrt(v / bc2) + eps) + wd p)      (wd only on matrices)
 *
 * Inputs per tensor i: p.i, m.i, v.i, g.i; scalars inv_weight_sum, lr, bc1 = 1 - b1^t, bc2 = 1 - b2^t,
 * max_norm. Outputs p_out.i, m_out.i, v_out.i and grad_norm (before clipping).
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

  const grads = shapes.map((shape, i) => g.op('Mul', [g.input(`g.${i}`, F, [...shape]), invWeight]));
  const squares = grads.map((grad) => g.op('ReduceSum', [g.op('Mul', [grad, grad])], { keepdims: 0 }));
  const total = squares.length === 1 ? (squares[0] as string) : g.op('Sum', squares);
  const norm = g.op('Sqrt', [total]);
  g.output(norm, 'grad_norm', F, []);
  const clip = g.op('Min', [c(1), g.op('Div', [maxNorm, g.op('Add', [norm, c(1e-6)])])]);

  shapes.forEach((shape, i) => {
    const dims = [...shape];
    const p = g.input(`p.${i}`, F, dims);
    const m = g.input(`m.${i}`, F, dims);
    const v = g.input(`v.${i}`, F, dims);
    const grad = g.op('Mul', [grads[i] as string, clip]);
    const m2 = g.op(
      'Add',
      [g.op('Mul', [m, c(hyper.beta1)]), g.op('Mul', [grad, c(1 - hyper.beta1)])],
      {},
      `m_out.${i}`,
    );
    const v2 = g.op(
      'Add',
      [g.op('Mul', [v, c(hyper.beta2)]), g.op('Mul', [g.op('Mul', [grad, grad]), c(1 - hyper.beta2)])],
      {},
      `v_out.${i}`,
    );
    let update = g.op('Div', [
      g.op('Div', [m2, bc1]),
      g.op('Add', [g.op('Sqrt', [g.op('Div', [v2, bc2])]), c(hyper.epsilon)]),
    ]);
    if (hyper.weightDecay !== 0 && shape.length >= 2)
      update = g.op('Add', [update, g.op('Mul', [p, c(hyper.weightDecay)])]);
    g.op('Sub', [p, g.op('Mul', [update, lr])], {}, `p_out.${i}`);
    for (const name of [`p_out.${i}`, `m_out.${i}`, `v_out.${i}`]) g.outputs.push({ name, elemType: F, dims });
  });
  return g.toBytes();
}
