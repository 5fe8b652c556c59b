/**
 * The training graph: forward, token-weighted loss and backward of the Llama decoder for one
 * micro-batch shape [batch, seq], built on the autodiff tape.
 *
 * Inputs:  input_ids, targets (int64 [batch, seq]), loss_weights (f32 [batch, seq]) and the trainable
 *          tensors (LoRA A/B, or every weight for pretraining; see TrainableTensor).
 * Outputs: loss_sum = sum(w * -log p(target)), weight_sum = sum(w), and `grad.<name>` = d loss_sum / d tensor.
 *
 * Sequences are right-padded (padding carries weight 0), so the causal mask alone keeps real tokens
 * from seeing padding and the mask is a constant. Frozen weights are initializers; the optimizer step
 * lives in a separate graph (adamw-graph.ts) so that gradients can be accumulated over micro-batches.
 */
import { type LlamaConfig, LORA_MODULES, type LoraModuleKind, headDim, linearPath } from '../config.js';
import type { Weights } from '../checkpoint.js';
import { inverseFrequencies, MASK_VALUE } from '../tfjs/llama.js';
import { type Value, TapeGraph } from './autodiff.js';
import { DataType } from './graph.js';
import { transpose2d } from './llama-graph.js';

export type TrainableTensor =
  | { kind: 'lora'; name: string; modulePath: string; factor: 'A' | 'B'; shape: [number, number] }
  | { kind: 'weight'; name: string; shape: number[] };

export interface TrainGraphOptions {
  batch: number;
  seq: number;
  /** LoRA fine-tuning: module path -> rank (alpha is applied as alpha / rank). Absent: train every weight. */
  lora?: { alpha: number; ranks: ReadonlyMap<string, number> };
}

export interface TrainGraph {
  bytes: Uint8Array;
  trainables: TrainableTensor[];
}

export function buildLlamaTrainGraph(config: LlamaConfig, weights: Weights, options: TrainGraphOptions): TrainGraph {
  const { batch: B, seq: S } = options;
  const t = new TapeGraph('floe_llama_train');
  const hd = headDim(config);
  const H = config.num_attention_heads;
  const KV = config.num_key_value_heads;
  const h = config.hidden_size;
  const V = config.vocab_size;
  const lora = options.lora;
  const trainables: TrainableTensor[] = [];
  const params: Value[] = [];

  const weight = (name: string) => {
    const w = weights.get(name);
    if (!w) throw new Error(`weights lack ${name}`);
    return w;
  };
  /** A base weight: trainable input when pretraining, frozen initializer when fine-tuning. */
  const baseWeight = (name: string): Value => {
    const w = weight(name);
    if (lora) return t.initializer(name, w.data, w.shape);
    const value = t.input(name, w.shape, true);
    trainables.push({ kind: 'weight', name, shape: [...w.shape] });
    params.push(value);
    return value;
  };
  /** y = x W^T for W [out, in]; frozen weights are stored transposed. */
  const projection = (x: Value, name: string): Value => {
    if (lora) {
      const w = weight(name);
      const [out, inn] = w.shape as [number, number];
      return t.matmul(x, t.initializer(`${name}_t`, transpose2d(w.data, out, inn), [inn, out]));
    }
    return t.matmul(x, t.transpose(baseWeight(name), [1, 0]));
  };
  const linear = (x: Value, layer: number, kind: LoraModuleKind): Value => {
    const path = linearPath(layer, kind);
    const y = projection(x, `${path}.weight`);
    const rank = lora?.ranks.get(path);
    if (!lora || rank === undefined) return y;
    const [out, inn] = weight(`${path}.weight`).shape as [number, number];
    const A = t.input(`lora.${path}.A`, [rank, inn], true);
    const Bm = t.input(`lora.${path}.B`, [out, rank], true);
    trainables.push({ kind: 'lora', name: A.name, modulePath: path, factor: 'A', shape: [rank, inn] });
    trainables.push({ kind: 'lora', name: Bm.name, modulePath: path, factor: 'B', shape: [out, rank] });
    params.push(A, Bm);
    const delta = t.matmul(t.matmul(x, t.transpose(A, [1, 0])), t.transpose(Bm, [1, 0]));
    return t.add(y, t.mul(delta, t.scalar(lora.alpha / rank)));
  };
  const rmsNorm = (x: Value, name: string): Value => {
    const meanSquare = t.reduceMean(t.mul(x, x), [-1], true);
    const normed = t.div(x, t.sqrt(t.add(meanSquare, t.scalar(config.rms_norm_eps))));
    return t.mul(normed, baseWeight(name));
  };

  const inputIds = t.input('input_ids', [B, S], false, DataType.INT64);
  const targets = t.input('targets', [B, S], false, DataType.INT64);
  const lossWeights = t.input('loss_weights', [B, S]);

  // constants: causal bias, rotary tables for positions 0..S-1, rotate_half as a signed permutation
  const bias = new Float32Array(S * S);
  for (let i = 0; i < S; i++) for (let j = i + 1; j < S; j++) bias[i * S + j] = MASK_VALUE;
  const causal = t.initializer('causal_bias', bias, [S, S]);
  const invFreq = inverseFrequencies(config);
  const cosData = new Float32Array(S * hd);
  const sinData = new Float32Array(S * hd);
  for (let p = 0; p < S; p++)
    for (let i = 0; i < hd; i++) {
      const angle = Math.fround(p * (invFreq[i % (hd / 2)] as number));
      cosData[p * hd + i] = Math.cos(angle);
      sinData[p * hd + i] = Math.sin(angle);
    }
  const cos = t.initializer('rope_cos', cosData, [S, hd]);
  const sin = t.initializer('rope_sin', sinData, [S, hd]);
  const rotation = new Float32Array(hd * hd);
  for (let i = 0; i < hd / 2; i++) {
    rotation[(i + hd / 2) * hd + i] = -1; // out[i] = -x[i + hd/2]
    rotation[i * hd + i + hd / 2] = 1; // out[i + hd/2] = x[i]
  }
  const R = t.initializer('rotate_half', rotation, [hd, hd]);
  const rotary = (x: Value): Value => t.add(t.mul(x, cos), t.mul(t.matmul(x, R), sin));
  const heads = (x: Value, n: number): Value => t.transpose(t.reshape(x, [B, S, n, hd]), [0, 2, 1, 3]);
  const repeatKv = (x: Value): Value => {
    if (H === KV) return x;
    const expanded = t.expand(t.reshape(x, [B, KV, 1, S, hd]), [B, KV, H / KV, S, hd]);
    return t.reshape(expanded, [B, H, S, hd]);
  };

  // embedding: a gather when frozen; a one-hot product when trained (differentiable, no scatter)
  let hidden: Value;
  let embedding: Value;
  if (lora) {
    const E = weight('model.embed_tokens.weight');
    embedding = t.initializer('model.embed_tokens.weight', E.data, E.shape);
    hidden = t.raw('Gather', [embedding, inputIds], [B, S, h], { axis: 0 });
  } else {
    embedding = baseWeight('model.embed_tokens.weight');
    const oneHot = t.raw('OneHot', [inputIds, t.graph.constI64([V]), t.graph.constF32([0, 1])], [B, S, V], {
      axis: -1,
    });
    hidden = t.matmul(oneHot, embedding);
  }

  for (let layer = 0; layer < config.num_hidden_layers; layer++) {
    const prefix = `model.layers.${layer}`;
    const n1 = rmsNorm(hidden, `${prefix}.input_layernorm.weight`);
    const q = rotary(heads(linear(n1, layer, 'q_proj'), H));
    const k = repeatKv(rotary(heads(linear(n1, layer, 'k_proj'), KV)));
    const v = repeatKv(heads(linear(n1, layer, 'v_proj'), KV));
    const scores = t.add(t.mul(t.matmul(q, t.transpose(k, [0, 1, 3, 2])), t.scalar(1 / Math.sqrt(hd))), causal);
    const attn = t.matmul(t.softmax(scores, -1), v); // [B, H, S, hd]
    const merged = t.reshape(t.transpose(attn, [0, 2, 1, 3]), [B, S, H * hd]);
    hidden = t.add(hidden, linear(merged, layer, 'o_proj'));

    const n2 = rmsNorm(hidden, `${prefix}.post_attention_layernorm.weight`);
    const gate = linear(n2, layer, 'gate_proj');
    const act = t.mul(t.mul(gate, t.sigmoid(gate)), linear(n2, layer, 'up_proj'));
    hidden = t.add(hidden, linear(act, layer, 'down_proj'));
  }
  const final = rmsNorm(hidden, 'model.norm.weight');
  let logits: Value;
  if (config.tie_word_embeddings) {
    logits = lora
      ? t.matmul(final, t.initializer('lm_head_t', transpose2d(weight('model.embed_tokens.weight').data, V, h), [h, V]))
      : t.matmul(final, t.transpose(embedding, [1, 0]));
  } else {
    logits = projection(final, 'lm_head.weight');
  }

  const flatTargets = t.raw('Reshape', [targets, t.graph.constI64([B * S], [1])], [B * S]);
  const flatWeights = t.raw('Reshape', [lossWeights, t.graph.constI64([B * S], [1])], [B * S]);
  const lossSum = t.weightedNllSum(t.reshape(logits, [B * S, V]), flatTargets, flatWeights);
  t.output(lossSum, 'loss_sum');
  t.output(t.raw('ReduceSum', [lossWeights], [], { keepdims: 0 }), 'weight_sum');

  if (lora) checkLoraCoverage(config, lora.ranks);
  const grads = t.backward(lossSum, params);
  grads.forEach((g, i) => t.output(g, `grad.${(trainables[i] as TrainableTensor).name}`));
  return { bytes: t.graph.toBytes(), trainables };
}

function checkLoraCoverage(config: LlamaConfig, ranks: ReadonlyMap<string, number>): void {
  const known = new Set(
    [...Array(config.num_hidden_layers).keys()].flatMap((l) => LORA_MODULES.map((k) => linearPath(l, k))),
  );
  for (const path of ranks.keys()) if (!known.has(path)) throw new Error(`${path} is not a LoRA-capable module`);
}
