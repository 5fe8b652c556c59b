/**
 * Reverse-mode differentiation for ONNX graphs with static shapes. Every op helper emits its forward
 * node and records a vector-Jacobian rule; `backward(loss)` walks the tape backwards, emitting the
 * gradient nodes and summing gradients where a value has several consumers.
 *
 * Shapes are static (a training graph is built for one micro-batch shape), so broadcasting is undone
 * with ReduceSum over known axes.
 */
import { DataType, Graph } from './graph.js';

export interface Value {
  readonly name: string;
  readonly shape: readonly number[];
  readonly requiresGrad: boolean;
}

interface TapeEntry {
  output: Value;
  backward: (gradOutput: Value) => void;
}

export function broadcastShape(a: readonly number[], b: readonly number[]): number[] {
  const rank = Math.max(a.length, b.length);
  const out: number[] = [];
  for (let i = 0; i < rank; i++) {
    const x = a[a.length - rank + i] ?? 1;
    const y = b[b.length - rank + i] ?? 1;
    if (x !== y && x !== 1 && y !== 1)
      throw new Error(`shapes [${a.join(', ')}] and [${b.join(', ')}] do not broadcast`);
    out.push(Math.max(x, y));
  }
  return out;
}

const size = (shape: readonly number[]) => shape.reduce((a, b) => a * b, 1);

export class TapeGraph {
  readonly graph: Graph;
  private readonly tape: TapeEntry[] = [];
  private readonly grads = new Map<string, Value>();

  constructor(name: string) {
    this.graph = new Graph(name);
  }

  private value(name: string, shape: readonly number[], requiresGrad: boolean): Value {
    return { name, shape: [...shape], requiresGrad };
  }

  /** A graph input; `requiresGrad` marks trainable parameters. */
  input(name: string, shape: readonly number[], requiresGrad = false, elemType: number = DataType.FLOAT): Value {
    this.graph.input(name, elemType, [...shape]);
    return this.value(name, shape, requiresGrad);
  }

  initializer(name: string, data: Float32Array, shape: readonly number[]): Value {
    this.graph.initializer(name, data, [...shape]);
    return this.value(name, shape, false);
  }

  scalar(value: number): Value {
    return this.value(this.graph.constF32([value]), [], false);
  }

  output(value: Value, name: string): void {
    this.graph.output(value.name, name, DataType.FLOAT, [...value.shape]);
  }

  /** Emits one node; records `backward` when any input requires a gradient. */
  private emit(
    opType: string,
    inputs: (Value | string)[],
    shape: readonly number[],
    attributes: Parameters<Graph['op']>[2] = {},
    backward?: (gradOutput: Value, output: Value) => void,
  ): Value {
    const names = inputs.map((x) => (typeof x === 'string' ? x : x.name));
    const requiresGrad = backward !== undefined && inputs.some((x) => typeof x !== 'string' && x.requiresGrad);
    const output = this.value(this.graph.op(opType, names, attributes), shape, requiresGrad);
    if (requiresGrad && backward) this.tape.push({ output, backward: (g) => backward(g, output) });
    return output;
  }

  /** Adds `grad` to the gradient of `value` (when value needs one), un-broadcasting to its shape. */
  private accumulate(value: Value, grad: Value): void {
    if (!value.requiresGrad) return;
    const g = this.sumToShape(grad, value.shape);
    const existing = this.grads.get(value.name);
    this.grads.set(value.name, existing ? this.raw('Add', [existing, g], value.shape) : g);
  }

  /** A node with no gradient rule (used inside backward passes and for constants). */
  raw(
    opType: string,
    inputs: (Value | string)[],
    shape: readonly number[],
    attributes: Parameters<Graph['op']>[2] = {},
  ): Value {
    return this.emit(opType, inputs, shape, attributes);
  }

  private constI64(values: number[]): string {
    return this.graph.constI64(values, [values.length]);
  }

  /** Sums `grad` over the axes that broadcasting added or stretched, then reshapes to `shape`. */
  sumToShape(grad: Value, shape: readonly number[]): Value {
    if (grad.shape.join(',') === shape.join(',')) return grad;
    const lead = grad.shape.length - shape.length;
    const axes: number[] = [];
    grad.shape.forEach((dim, i) => {
      if (i < lead || (shape[i - lead] === 1 && dim !== 1)) axes.push(i);
    });
    let out = grad;
    if (axes.length > 0) {
      const reduced = grad.shape.map((d, i) => (axes.includes(i) ? 1 : d));
      out = this.raw('ReduceSum', [grad, this.constI64(axes)], reduced, { keepdims: 1 });
    }
    return this.raw('Reshape', [out, this.constI64([...shape])], shape);
  }

  // ------------------------------------------------------------------ differentiable ops

  add(a: Value, b: Value): Value {
    return this.emit('Add', [a, b], broadcastShape(a.shape, b.shape), {}, (g) => {
      this.accumulate(a, g);
      this.accumulate(b, g);
    });
  }

  sub(a: Value, b: Value): Value {
    return this.emit('Sub', [a, b], broadcastShape(a.shape, b.shape), {}, (g) => {
      this.accumulate(a, g);
      if (b.requiresGrad) this.accumulate(b, this.raw('Neg', [g], g.shape));
    });
  }

  mul(a: Value, b: Value): Value {
    return this.emit('Mul', [a, b], broadcastShape(a.shape, b.shape), {}, (g) => {
      if (a.requiresGrad) this.accumulate(a, this.raw('Mul', [g, b], g.shape));
      if (b.requiresGrad) this.accumulate(b, this.raw('Mul', [g, a], g.shape));
    });
  }

  div(a: Value, b: Value): Value {
    return this.emit('Div', [a, b], broadcastShape(a.shape, b.shape), {}, (g, y) => {
      if (a.requiresGrad) this.accumulate(a, this.raw('Div', [g, b], g.shape));
      // d(a/b)/db = -y / b
      if (b.requiresGrad)
        this.accumulate(b, this.raw('Neg', [this.raw('Div', [this.raw('Mul', [g, y], g.shape), b], g.shape)], g.shape));
    });
  }

  neg(a: Value): Value {
    return this.emit('Neg', [a], a.shape, {}, (g) => this.accumulate(a, this.raw('Neg', [g], g.shape)));
  }

  sqrt(a: Value): Value {
    return this.emit('Sqrt', [a], a.shape, {}, (g, y) => {
      this.accumulate(a, this.raw('Div', [this.raw('Mul', [g, this.scalar(0.5)], g.shape), y], g.shape));
    });
  }

  sigmoid(a: Value): Value {
    return this.emit('Sigmoid', [a], a.shape, {}, (g, y) => {
      const oneMinus = this.raw('Sub', [this.scalar(1), y], y.shape);
      this.accumulate(a, this.raw('Mul', [g, this.raw('Mul', [y, oneMinus], y.shape)], g.shape));
    });
  }

  /** Matrix product over the last two axes, batch axes broadcast. */
  matmul(a: Value, b: Value): Value {
    const [m, k] = a.shape.slice(-2) as [number, number];
    const [k2, n] = b.shape.slice(-2) as [number, number];
    if (k !== k2) throw new Error(`matmul [${a.shape.join(', ')}] x [${b.shape.join(', ')}]`);
    const batch = broadcastShape(a.shape.slice(0, -2), b.shape.slice(0, -2));
    return this.emit('MatMul', [a, b], [...batch, m, n], {}, (g) => {
      if (a.requiresGrad) {
        this.accumulate(a, this.raw('MatMul', [g, this.transposeLast(b)], [...batch, m, k]));
      }
      if (b.requiresGrad) {
        if (b.shape.length === 2 && a.shape.length > 2) {
          // a weight shared across the batch: one [k, rows] x [rows, n] product instead of a batched one
          const rows = size(a.shape) / k;
          const a2 = this.raw('Reshape', [a, this.constI64([rows, k])], [rows, k]);
          const g2 = this.raw('Reshape', [g, this.constI64([rows, n])], [rows, n]);
          this.accumulate(b, this.raw('MatMul', [this.transposeLast(a2), g2], [k, n]));
        } else {
          this.accumulate(b, this.raw('MatMul', [this.transposeLast(a), g], [...batch, k, n]));
        }
      }
    });
  }

  private transposeLast(x: Value): Value {
    const rank = x.shape.length;
    const perm = [...Array(rank).keys()];
    [perm[rank - 2], perm[rank - 1]] = [perm[rank - 1] as number, perm[rank - 2] as number];
    return this.raw(
      'Transpose',
      [x],
      perm.map((p) => x.shape[p] as number),
      { perm },
    );
  }

  reshape(a: Value, shape: readonly number[]): Value {
    if (size(shape) !== size(a.shape))
      throw new Error(`cannot reshape [${a.shape.join(', ')}] to [${shape.join(', ')}]`);
    return this.emit('Reshape', [a, this.constI64([...shape])], shape, {}, (g) => {
      this.accumulate(a, this.raw('Reshape', [g, this.constI64([...a.shape])], a.shape));
    });
  }

  transpose(a: Value, perm: readonly number[]): Value {
    const inverse = perm.map((_, i) => perm.indexOf(i));
    return this.emit(
      'Transpose',
      [a],
      perm.map((p) => a.shape[p] as number),
      { perm: [...perm] },
      (g) => {
        this.accumulate(a, this.raw('Transpose', [g], a.shape, { perm: inverse }));
      },
    );
  }

  /** Broadcasts `a` to `shape`. */
  expand(a: Value, shape: readonly number[]): Value {
    return this.emit('Expand', [a, this.constI64([...shape])], broadcastShape(a.shape, shape), {}, (g) =>
      this.accumulate(a, g),
    );
  }

  reduceSum(a: Value, axes: readonly number[], keepdims = true): Value {
    const normalized = axes.map((x) => (x < 0 ? x + a.shape.length : x));
    const kept = a.shape.map((d, i) => (normalized.includes(i) ? 1 : d));
    const shape = keepdims ? kept : a.shape.filter((_, i) => !normalized.includes(i));
    return this.emit('ReduceSum', [a, this.constI64([...normalized])], shape, { keepdims: keepdims ? 1 : 0 }, (g) => {
      const restored = this.raw('Reshape', [g, this.constI64(kept)], kept);
      this.accumulate(a, this.raw('Expand', [restored, this.constI64([...a.shape])], a.shape));
    });
  }

  reduceMean(a: Value, axes: readonly number[], keepdims = true): Value {
    const normalized = axes.map((x) => (x < 0 ? x + a.shape.length : x));
    const count = normalized.reduce((n, axis) => n * (a.shape[axis] as number), 1);
    return this.mul(this.reduceSum(a, normalized, keepdims), this.scalar(1 / count));
  }

  softmax(a: Value, axis = -1): Value {
    return this.emit('Softmax', [a], a.shape, { axis }, (g, y) => {
      // dx = y * (g - sum(g * y))
      const gy = this.raw('Mul', [g, y], y.shape);
      const kept = y.shape.map((d, i) => (i === (axis < 0 ? axis + y.shape.length : axis) ? 1 : d));
      const s = this.raw('ReduceSum', [gy, this.constI64([axis])], kept, { keepdims: 1 });
      this.accumulate(a, this.raw('Mul', [y, this.raw('Sub', [g, s], g.shape)], g.shape));
    });
  }

  /** Splits along `axis` into parts of the given sizes; each part's gradient is zero-padded back. */
  split(a: Value, sizes: readonly number[], axis: number): Value[] {
    const ax = axis < 0 ? axis + a.shape.length : axis;
    const names = sizes.map(() => this.graph.fresh('split'));
    this.graph.opMulti('Split', [a.name, this.constI64([...sizes])], names, { axis: ax });
    let offset = 0;
    return names.map((name, i) => {
      const size = sizes[i] as number;
      const before = offset;
      offset += size;
      const part = this.value(
        name,
        a.shape.map((d, j) => (j === ax ? size : d)),
        false,
      );
      return this.custom(part, [a], (g) => {
        const pads = new Array<number>(2 * a.shape.length).fill(0);
        pads[ax] = before;
        pads[a.shape.length + ax] = (a.shape[ax] as number) - before - size;
        this.accumulate(a, this.raw('Pad', [g, this.constI64(pads)], a.shape));
      });
    });
  }

  /** Gives an already emitted value a gradient rule (when any of `inputs` needs a gradient). */
  private custom(output: Value, inputs: readonly Value[], backward: (gradOutput: Value) => void): Value {
    if (!inputs.some((x) => x.requiresGrad)) return output;
    const tracked = { ...output, requiresGrad: true };
    this.tape.push({ output: tracked, backward });
    return tracked;
  }

  concat(values: readonly Value[], axis: number): Value {
    const ax = axis < 0 ? axis + (values[0] as Value).shape.length : axis;
    const shape = (values[0] as Value).shape.map((d, i) =>
      i === ax ? values.reduce((n, v) => n + (v.shape[i] as number), 0) : d,
    );
    return this.emit('Concat', [...values], shape, { axis: ax }, (g) => {
      const outs = values.map(() => this.graph.fresh('concat_grad'));
      this.graph.opMulti('Split', [g.name, this.constI64(values.map((v) => v.shape[ax] as number))], outs, {
        axis: ax,
      });
      values.forEach((v, i) => this.accumulate(v, this.value(outs[i] as string, v.shape, false)));
    });
  }

  /**
   * sum_n w[n] * -log softmax(logits[n])[targets[n]] for logits [N, V], targets int64 [N], w [N].
   * Its gradient is emitted directly: d/dlogits = g * w * (softmax - onehot).
   */
  weightedNllSum(logits: Value, targets: Value, weights: Value): Value {
    const [N, V] = logits.shape as [number, number];
    const max = this.raw('ReduceMax', [logits], [N, 1], { axes: [1], keepdims: 1 });
    const shifted = this.raw('Sub', [logits, max], [N, V]);
    const logSumExp = this.raw(
      'Log',
      [this.raw('ReduceSum', [this.raw('Exp', [shifted], [N, V]), this.constI64([1])], [N, 1], { keepdims: 1 })],
      [N, 1],
    );
    const logProbs = this.raw('Sub', [shifted, logSumExp], [N, V]);
    const oneHot = this.raw('OneHot', [targets, this.graph.constI64([V]), this.graph.constF32([0, 1])], [N, V], {
      axis: -1,
    });
    const picked = this.raw('ReduceSum', [this.raw('Mul', [logProbs, oneHot], [N, V]), this.constI64([1])], [N], {
      keepdims: 0,
    });
    const weighted = this.raw('Mul', [picked, weights], [N]);
    const nllSum = this.raw('Neg', [this.raw('ReduceSum', [weighted], [], { keepdims: 0 })], []);
    return this.custom(nllSum, [logits], (g) => {
      const probs = this.raw('Exp', [logProbs], [N, V]);
      const w = this.raw('Mul', [this.raw('Unsqueeze', [weights, this.constI64([1])], [N, 1]), g], [N, 1]);
      this.accumulate(logits, this.raw('Mul', [this.raw('Sub', [probs, oneHot], [N, V]), w], [N, V]));
    });
  }

  // ------------------------------------------------------------------ backward

  /** Emits the gradient of the scalar `loss` for every value in `wrt`; returns them in order. */
  backward(loss: Value, wrt: readonly Value[]): Value[] {
    this.grads.set(loss.name, this.scalar(1));
    for (let i = this.tape.length - 1; i >= 0; i--) {
      const entry = this.tape[i] as TapeEntry;
      const g = this.grads.get(entry.output.name);
      if (g) entry.backward(g);
    }
    return wrt.map((v) => {
      const g = this.grads.get(v.name);
      if (!g) throw new Error(`${v.name} does not influence the loss`);
      return g;
    });
  }
}
