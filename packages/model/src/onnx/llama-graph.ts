/**
 * The Llama decoder as an ONNX graph, the same math as tfjs/llama.ts, for onnxruntime-node.
 *
 * Inputs:  input_ids [batch, seq] int64, attention_mask [batch, past + seq] int64 (1 real, 0 padding),
 *          position_ids [batch, seq] int64, past_key.{l} / past_value.{l} [batch, kvHeads, past, headDim]
 *          (past may be 0), and per adapted module `lora.{path}.A_t` [in, r] and `lora.{path}.B_t`
 *          [r, out] with alpha / r folded into B_t (any r, per call).
 * Outputs: logits [batch, seq, vocab], present_key.{l} / present_value.{l} [batch, kvHeads, past + seq, headDim].
 *
 * Weights are initializers, linear weights stored transposed ([in, out]) so each projection is one MatMul.
 */
import { type LlamaConfig, LORA_MODULES, type LoraModuleKind, headDim, linearPath } from '../config.js';
import type { Weights } from '../checkpoint.js';
import { inverseFrequencies, MASK_VALUE } from '../tfjs/llama.js';
import { DataType, Graph } from './graph.js';

export interface LlamaGraphOptions {
  /** Module paths (e.g. `model.layers.0.self_attn.q_proj`) that get LoRA inputs. */
  loraModules?: readonly string[];
}

export function loraInputNames(modulePath: string): { A: string; B: string } {
  return { A: `lora.${modulePath}.A_t`, B: `lora.${modulePath}.B_t` };
}

export function transpose2d(data: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(rows * cols);
  for (let i = 0; i < rows; i++) for (let j = 0; j < cols; j++) out[j * rows + i] = data[i * cols + j] as number;
  return out;
}

export function buildLlamaGraph(config: LlamaConfig, weights: Weights, options: LlamaGraphOptions = {}): Uint8Array {
  const g = new Graph('floe_llama');
  const F = DataType.FLOAT;
  const I64 = DataType.INT64;
  const h = config.hidden_size;
  const hd = headDim(config);
  const H = config.num_attention_heads;
  const KV = config.num_key_value_heads;
  const lora = new Set(options.loraModules ?? []);

  const weight = (name: string): { data: Float32Array; shape: number[] } => {
    const t = weights.get(name);
    if (!t) throw new Error(`weights lack ${name}`);
    return t;
  };
  const linearWeight = (name: string): string => {
    const { data, shape } = weight(name);
    const [out, inn] = shape as [number, number];
    return g.initializer(`${name}_t`, transpose2d(data, out, inn), [inn, out]);
  };

  const inputIds = g.input('input_ids', I64, ['batch', 'seq']);
  const attentionMask = g.input('attention_mask', I64, ['batch', 'total']);
  const positionIds = g.input('position_ids', I64, ['batch', 'seq']);

  // --- attention bias: key j visible from query i iff j <= past + i and attention_mask[b, j] == 1
  const zero = g.constI64([0]);
  const one = g.constI64([1]);
  const seqLen = g.op('Gather', [g.op('Shape', [inputIds]), one], { axis: 0 });
  const total = g.op('Gather', [g.op('Shape', [attentionMask]), one], { axis: 0 });
  const past = g.op('Sub', [total, seqLen]);
  const queryPos = g.op('Range', [past, total, one]); // [s]
  const keyPos = g.op('Range', [zero, total, one]); // [T]
  const causal = g.op('LessOrEqual', [
    g.op('Unsqueeze', [keyPos, g.constI64([0], [1])]),
    g.op('Unsqueeze', [queryPos, g.constI64([1], [1])]),
  ]); // [s, T]
  const real = g.op('Unsqueeze', [g.op('Equal', [attentionMask, one]), g.constI64([1, 2])]); // [b, 1, 1, T]
  const visible = g.op('And', [causal, real]); // [b, 1, s, T]
  const bias = g.op('Where', [visible, g.constF32([0]), g.constF32([MASK_VALUE])]);

  // --- rotary tables, [b, 1, s, hd]
  const positions = g.op('Unsqueeze', [g.op('Cast', [positionIds], { to: F }), g.constI64([2], [1])]); // [b, s, 1]
  const freqs = g.op('Mul', [positions, g.initializer('rope.inv_freq', inverseFrequencies(config), [hd / 2])]);
  const emb = g.op('Unsqueeze', [g.op('Concat', [freqs, freqs], { axis: -1 }), g.constI64([1], [1])]);
  const cos = g.op('Cos', [emb]);
  const sin = g.op('Sin', [emb]);
  const half = g.constI64([hd / 2, hd / 2]);
  const rotary = (x: string): string => {
    const [x1, x2] = g.opMulti('Split', [x, half], [g.fresh('x1'), g.fresh('x2')], { axis: 3 }) as [string, string];
    const rotated = g.op('Concat', [g.op('Neg', [x2]), x1], { axis: 3 });
    return g.op('Add', [g.op('Mul', [x, cos]), g.op('Mul', [rotated, sin])]);
  };

  const rmsNorm = (x: string, name: string): string => {
    const meanSquare = g.op('ReduceMean', [g.op('Mul', [x, x])], { axes: [-1], keepdims: 1 });
    const inv = g.op('Reciprocal', [g.op('Sqrt', [g.op('Add', [meanSquare, g.constF32([config.rms_norm_eps])])])]);
    const gain = weight(name);
    return g.op('Mul', [g.op('Mul', [x, inv]), g.initializer(name, gain.data, gain.shape)]);
  };

  const linear = (x: string, layer: number, kind: LoraModuleKind): string => {
    const path = linearPath(layer, kind);
    const y = g.op('MatMul', [x, linearWeight(`${path}.weight`)]);
    if (!lora.has(path)) return y;
    const names = loraInputNames(path);
    const [out, inn] = weight(`${path}.weight`).shape as [number, number];
    const A = g.input(names.A, F, [inn, `r_${layer}_${kind}`]);
    const B = g.input(names.B, F, [`r_${layer}_${kind}`, out]);
    return g.op('Add', [y, g.op('MatMul', [g.op('MatMul', [x, A]), B])]);
  };

  const splitHeads = (x: string, heads: number): string =>
    g.op('Transpose', [g.op('Reshape', [x, g.constI64([0, 0, heads, hd])])], { perm: [0, 2, 1, 3] });

  const repeatKv = (x: string): string => {
    if (H === KV) return x;
    const x5 = g.op('Unsqueeze', [x, g.constI64([2], [1])]); // [b, KV, 1, T, hd]
    const target = g.op('Mul', [g.op('Shape', [x5]), g.constI64([1, 1, H / KV, 1, 1])]);
    return g.op('Reshape', [g.op('Expand', [x5, target]), g.constI64([0, H, -1, hd])]);
  };

  // --- the decoder
  const embed = weight('model.embed_tokens.weight');
  let hidden = g.op('Gather', [g.initializer('model.embed_tokens.weight', embed.data, embed.shape), inputIds], {
    axis: 0,
  });
  for (let layer = 0; layer < config.num_hidden_layers; layer++) {
    const prefix = `model.layers.${layer}`;
    const n1 = rmsNorm(hidden, `${prefix}.input_layernorm.weight`);
    const q = rotary(splitHeads(linear(n1, layer, 'q_proj'), H));
    const pastKey = g.input(`past_key.${layer}`, F, ['batch', KV, 'past', hd]);
    const pastValue = g.input(`past_value.${layer}`, F, ['batch', KV, 'past', hd]);
    const k = g.op('Concat', [pastKey, rotary(splitHeads(linear(n1, layer, 'k_proj'), KV))], { axis: 2 });
    const v = g.op('Concat', [pastValue, splitHeads(linear(n1, layer, 'v_proj'), KV)], { axis: 2 });
    g.output(k, `present_key.${layer}`, F, ['batch', KV, 'total', hd]);
    g.output(v, `present_value.${layer}`, F, ['batch', KV, 'total', hd]);

    const kT = g.op('Transpose', [repeatKv(k)], { perm: [0, 1, 3, 2] });
    const scores = g.op('Add', [g.op('Mul', [g.op('MatMul', [q, kT]), g.constF32([1 / Math.sqrt(hd)])]), bias]);
    const attn = g.op('MatMul', [g.op('Softmax', [scores], { axis: -1 }), repeatKv(v)]); // [b, H, s, hd]
    const merged = g.op('Reshape', [g.op('Transpose', [attn], { perm: [0, 2, 1, 3] }), g.constI64([0, 0, H * hd])]);
    hidden = g.op('Add', [hidden, linear(merged, layer, 'o_proj')]);

    const n2 = rmsNorm(hidden, `${prefix}.post_attention_layernorm.weight`);
    const gate = linear(n2, layer, 'gate_proj');
    const act = g.op('Mul', [g.op('Mul', [gate, g.op('Sigmoid', [gate])]), linear(n2, layer, 'up_proj')]);
    hidden = g.op('Add', [hidden, linear(act, layer, 'down_proj')]);
  }
  const final = rmsNorm(hidden, 'model.norm.weight');
  const head = config.tie_word_embeddings
    ? g.initializer('lm_head_t', transpose2d(embed.data, config.vocab_size, h), [h, config.vocab_size])
    : linearWeight('lm_head.weight');
  g.output(g.op('MatMul', [final, head]), 'logits', F, ['batch', 'seq', config.vocab_size]);
  return g.toBytes();
}

/** Every LoRA-capable module path of the model. */
export function allLoraModules(config: LlamaConfig): string[] {
  return [...Array(config.num_hidden_layers).keys()].flatMap((layer) => LORA_MODULES.map((k) => linearPath(layer, k)));
}
