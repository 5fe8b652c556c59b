/**
 * The Llama decoder as an ONNX graph, the same math as tfjs/llama.ts, for onnxruntime-node.
 *
 * Inputs:  input_ids [batch, seq] int64, attention_mask [batch, past + seq] int64 (1 real, 0 padding),
 *          position_ids [batch, seq] int64, past_key.{l} / past_value.{l} [batch, kvHeads, past, headDim]
 *          (past may be 0), and per adapted projection group `lora.{l}.{group}.A` / `.B` (see below).
 * Outputs: logits [batch, seq, vocab], present_key.{l} / present_value.{l} [batch, kvHeads, past + seq, headDim].
 * With `attention: 'gqa'` (the decode engine, ort/decoder.ts) attention_mask and position_ids give way to
 * seqlens_k [batch] and total_sequence_length (int32), the pasts are [batch, kvHeads, capacity, headDim],
 * and the presents give way to `qkv` [layers * batch, seq, (H + 2 KV) * headDim], this step's projections.
 *
 * At decode time a step costs about 2 us per graph node on this kind of CPU, far more than the
 * arithmetic of a model this small, so the graph is laid out for few nodes (same math, fewer ops):
 * - q, k, v are one MatMul with columns [q | k | rot(q) | rot(k) | v]. rotate_half is a fixed signed
 *   permutation R of each head's features, so rot(x W^T) = x (W^T R): the rotary embedding becomes
 *   qk * cos + rot(qk) * sin, three elementwise ops for q and k together. 1/sqrt(head_dim) is folded
 *   into the q columns.
 * - gate and up are one MatMul with columns [gate | up].
 * - LoRA works per group (qkv, o, gate_up, down): x @ A_cat (the group's A^T side by side) @ B_block
 *   (the group's alpha/r * B^T on a block diagonal, laid out like the group's weight columns), so a
 *   group costs three nodes whatever the number of adapted modules, at any rank.
 * - RMSNorm is written in the pattern ORT fuses into one SimplifiedLayerNormalization kernel.
 */
import type { LoraAdapter } from '@floe/shared';
import { type LlamaConfig, LORA_MODULES, type LoraModuleKind, headDim, linearPath } from '../config.js';
import type { Weights } from '../checkpoint.js';
import { inverseFrequencies, MASK_VALUE } from '../tfjs/llama.js';
import { DataType, Graph } from './graph.js';

export type ProjectionGroup = 'qkv' | 'o' | 'gate_up' | 'down';
export const PROJECTION_GROUPS: Record<ProjectionGroup, readonly LoraModuleKind[]> = {
  qkv: ['q_proj', 'k_proj', 'v_proj'],
  o: ['o_proj'],
  gate_up: ['gate_proj', 'up_proj'],
  down: ['down_proj'],
};

export interface LlamaGraphOptions {
  /** Module paths (e.g. `model.layers.0.self_attn.q_proj`) that can be adapted at run time. */
  loraModules?: readonly string[];
  /**
   * `fused` (default): ONNX Runtime's com.microsoft.MultiHeadAttention kernel, one node per layer
   * for attention and the KV cache. `onnx`: standard ONNX operators only, for other runtimes.
   * `gqa`: com.microsoft.GroupQueryAttention over a preallocated cache that is both input and output
   * (see buildLlamaGraph), the decode engine's layout (ort/decoder.ts).
   */
  attention?: AttentionKernel;
}

export type AttentionKernel = 'fused' | 'onnx' | 'gqa';

/**
 * Where the rotary embedding happens, which decides the columns of the fused q/k/v projection:
 * `in-projection` computes rot(q), rot(k) as extra columns (the MultiHeadAttention and plain ONNX
 * graphs); `in-kernel` leaves it to GroupQueryAttention (columns [q | k | v] only).
 */
export type QkvLayout = 'in-projection' | 'in-kernel';

export function qkvLayoutOf(attention: AttentionKernel): QkvLayout {
  return attention === 'gqa' ? 'in-kernel' : 'in-projection';
}

/** Whether GroupQueryAttention's CPU kernel takes this config (rotary needs head_dim a multiple of 16). */
export function supportsGqa(config: LlamaConfig): boolean {
  return headDim(config) % 16 === 0 && config.num_attention_heads % config.num_key_value_heads === 0;
}

export function loraInputNames(layer: number, group: ProjectionGroup): { A: string; B: string } {
  return { A: `lora.${layer}.${group}.A`, B: `lora.${layer}.${group}.B` };
}

export function transpose2d(data: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(rows * cols);
  for (let i = 0; i < rows; i++) for (let j = 0; j < cols; j++) out[j * rows + i] = data[i * cols + j] as number;
  return out;
}

/** One column block of a fused projection: `cols` columns computed from module `kind`. */
interface ColumnBlock {
  kind: LoraModuleKind;
  cols: number;
  /** The columns are rotate_half of the module's output (q and k only). */
  rotated: boolean;
  scale: number;
}

/** The column layout of each fused projection group. */
function columnBlocks(config: LlamaConfig, group: ProjectionGroup, layout: QkvLayout): ColumnBlock[] {
  const hd = headDim(config);
  const q = config.num_attention_heads * hd;
  const kv = config.num_key_value_heads * hd;
  const qScale = 1 / Math.sqrt(hd);
  switch (group) {
    case 'qkv':
      if (layout === 'in-kernel') {
        return [
          { kind: 'q_proj', cols: q, rotated: false, scale: qScale },
          { kind: 'k_proj', cols: kv, rotated: false, scale: 1 },
          { kind: 'v_proj', cols: kv, rotated: false, scale: 1 },
        ];
      }
      return [
        { kind: 'q_proj', cols: q, rotated: false, scale: qScale },
        { kind: 'k_proj', cols: kv, rotated: false, scale: 1 },
        { kind: 'q_proj', cols: q, rotated: true, scale: qScale },
        { kind: 'k_proj', cols: kv, rotated: true, scale: 1 },
        { kind: 'v_proj', cols: kv, rotated: false, scale: 1 },
      ];
    case 'o':
      return [{ kind: 'o_proj', cols: config.hidden_size, rotated: false, scale: 1 }];
    case 'gate_up':
      return [
        { kind: 'gate_proj', cols: config.intermediate_size, rotated: false, scale: 1 },
        { kind: 'up_proj', cols: config.intermediate_size, rotated: false, scale: 1 },
      ];
    case 'down':
      return [{ kind: 'down_proj', cols: config.hidden_size, rotated: false, scale: 1 }];
  }
}

/**
 * Writes M^T (M is [out, inner], row-major) into columns [offset, offset + out) of a [inner, width]
 * matrix, optionally applying rotate_half within each head: rotated column j of a head takes
 * -column (j + hd/2) for j < hd/2 and column (j - hd/2) otherwise.
 */
function writeTransposed(
  target: Float32Array,
  width: number,
  offset: number,
  M: Float32Array,
  out: number,
  inner: number,
  block: ColumnBlock,
  hd: number,
  extraScale = 1,
): void {
  const half = hd / 2;
  const scale = block.scale * extraScale;
  for (let c = 0; c < out; c++) {
    let source = c;
    let sign = 1;
    if (block.rotated) {
      const within = c % hd;
      source = within < half ? c + half : c - half;
      sign = within < half ? -1 : 1;
    }
    for (let i = 0; i < inner; i++) target[i * width + offset + c] = sign * scale * (M[source * inner + i] as number);
  }
}

function groupWidth(config: LlamaConfig, group: ProjectionGroup, layout: QkvLayout): number {
  return columnBlocks(config, group, layout).reduce((n, b) => n + b.cols, 0);
}

function groupInput(config: LlamaConfig, group: ProjectionGroup): number {
  if (group === 'o') return config.num_attention_heads * headDim(config);
  if (group === 'down') return config.intermediate_size;
  return config.hidden_size;
}

/** The fused weight [in, width] of a projection group of one layer. */
function fusedWeight(
  config: LlamaConfig,
  weights: Weights,
  layer: number,
  group: ProjectionGroup,
  layout: QkvLayout,
): Float32Array {
  const inner = groupInput(config, group);
  const width = groupWidth(config, group, layout);
  const fused = new Float32Array(inner * width);
  let offset = 0;
  for (const block of columnBlocks(config, group, layout)) {
    const name = `${linearPath(layer, block.kind)}.weight`;
    const w = weights.get(name);
    if (!w) throw new Error(`weights lack ${name}`);
    writeTransposed(fused, width, offset, w.data, block.cols, inner, block, headDim(config));
    offset += block.cols;
  }
  return fused;
}

export interface LoraGroupFeed {
  A: Float32Array; // [in, rank]
  B: Float32Array; // [rank, width]
  inFeatures: number;
  rank: number;
  width: number;
}

/**
 * The two LoRA inputs of a projection group: A_cat [in, sum r] and the block-diagonal B [sum r, width].
 * Modules of the group the adapter does not cover contribute nothing; with none covered, rank-1 zeros.
 */
export function loraGroupFeed(
  config: LlamaConfig,
  adapter: LoraAdapter | undefined,
  layer: number,
  group: ProjectionGroup,
  layout: QkvLayout = 'in-projection',
): LoraGroupFeed {
  const inFeatures = groupInput(config, group);
  const width = groupWidth(config, group, layout);
  const members = PROJECTION_GROUPS[group]
    .map((kind) => ({ kind, factors: adapter?.modules.get(linearPath(layer, kind)) }))
    .filter((m) => m.factors !== undefined);
  const rank = members.reduce((n, m) => n + (m.factors?.rank ?? 0), 0);
  if (rank === 0) return { A: new Float32Array(inFeatures), B: new Float32Array(width), inFeatures, rank: 1, width };
  const A = new Float32Array(inFeatures * rank);
  const B = new Float32Array(rank * width);
  let rowOffset = 0;
  for (const { kind, factors } of members) {
    if (!factors) continue;
    const r = factors.rank;
    // A^T columns [rowOffset, rowOffset + r)
    for (let k = 0; k < r; k++)
      for (let i = 0; i < inFeatures; i++) A[i * rank + rowOffset + k] = factors.A[k * inFeatures + i] as number;
    // rows [rowOffset, rowOffset + r) of B carry alpha/r * B^T under every column block of this module
    const rowsOfB = B.subarray(rowOffset * width, (rowOffset + r) * width);
    let colOffset = 0;
    for (const block of columnBlocks(config, group, layout)) {
      if (block.kind === kind) {
        writeTransposed(
          rowsOfB,
          width,
          colOffset,
          factors.B,
          block.cols,
          r,
          block,
          headDim(config),
          (adapter as LoraAdapter).alpha / r,
        );
      }
      colOffset += block.cols;
    }
    rowOffset += r;
  }
  return { A, B, inFeatures, rank, width };
}

/** The projection groups of each layer that get LoRA inputs, given the adaptable module paths. */
export function loraGroups(
  config: LlamaConfig,
  loraModules: readonly string[],
): { layer: number; group: ProjectionGroup }[] {
  const adaptable = new Set(loraModules);
  const groups: { layer: number; group: ProjectionGroup }[] = [];
  for (let layer = 0; layer < config.num_hidden_layers; layer++) {
    for (const [group, kinds] of Object.entries(PROJECTION_GROUPS) as [ProjectionGroup, readonly LoraModuleKind[]][]) {
      if (kinds.some((kind) => adaptable.has(linearPath(layer, kind)))) groups.push({ layer, group });
    }
  }
  return groups;
}

export function buildLlamaGraph(config: LlamaConfig, weights: Weights, options: LlamaGraphOptions = {}): Uint8Array {
  const g = new Graph('floe_llama');
  const F = DataType.FLOAT;
  const I64 = DataType.INT64;
  const h = config.hidden_size;
  const hd = headDim(config);
  const H = config.num_attention_heads;
  const KV = config.num_key_value_heads;
  const adapted = new Set(loraGroups(config, options.loraModules ?? []).map(({ layer, group }) => `${layer}.${group}`));
  const attention = options.attention ?? 'fused';
  const layout = qkvLayoutOf(attention);
  const cacheHeads = cacheHeadCount(config, attention);
  if (attention === 'gqa' && !supportsGqa(config)) {
    throw new Error(`GroupQueryAttention needs head_dim a multiple of 16 (got ${hd}) and kv heads dividing heads`);
  }

  const weight = (name: string): { data: Float32Array; shape: number[] } => {
    const t = weights.get(name);
    if (!t) throw new Error(`weights lack ${name}`);
    return t;
  };

  const inputIds = g.input('input_ids', I64, ['batch', 'seq']);
  const gqa = attention === 'gqa' ? gqaInputs(g, config) : undefined;
  const masked = gqa ? undefined : maskAndRotary(g, config, inputIds);

  // Written as Pow -> ReduceMean -> Add -> Sqrt -> Div -> Mul so that ORT fuses it into one
  // SimplifiedLayerNormalization kernel.
  const rmsNorm = (x: string, name: string): string => {
    const meanSquare = g.op('ReduceMean', [g.op('Pow', [x, g.constF32([2])])], { axes: [-1], keepdims: 1 });
    const rms = g.op('Sqrt', [g.op('Add', [meanSquare, g.constF32([config.rms_norm_eps])])]);
    const gain = weight(name);
    return g.op('Mul', [g.op('Div', [x, rms]), g.initializer(name, gain.data, gain.shape)]);
  };

  const project = (x: string, layer: number, group: ProjectionGroup): string => {
    const inner = groupInput(config, group);
    const width = groupWidth(config, group, layout);
    const w = g.initializer(`layer${layer}.${group}.weight_t`, fusedWeight(config, weights, layer, group, layout), [
      inner,
      width,
    ]);
    const y = g.op('MatMul', [x, w]);
    if (!adapted.has(`${layer}.${group}`)) return y;
    const names = loraInputNames(layer, group);
    const A = g.input(names.A, F, [inner, `r_${layer}_${group}`]);
    const B = g.input(names.B, F, [`r_${layer}_${group}`, width]);
    return g.op('Add', [y, g.op('MatMul', [g.op('MatMul', [x, A]), B])]);
  };

  const toHeads = (x: string, n: number): string =>
    g.op('Transpose', [g.op('Reshape', [x, g.constI64([0, 0, n, hd])])], { perm: [0, 2, 1, 3] });

  // The fused kernel needs as many key/value heads as query heads: [b, s, KV * hd] -> [b, s, H * hd].
  const repeatKvFeatures = (x: string): string => {
    if (H === KV) return x;
    const x5 = g.op('Reshape', [x, g.constI64([0, 0, KV, 1, hd])]);
    const target = g.op('Mul', [g.op('Shape', [x5]), g.constI64([1, 1, 1, H / KV, 1])]);
    return g.op('Reshape', [g.op('Expand', [x5, target]), g.constI64([0, 0, H * hd])]);
  };

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
    const qkv = project(n1, layer, 'qkv');
    const pastDim = gqa ? 'capacity' : 'past';
    const pastKey = g.input(`past_key.${layer}`, F, ['batch', cacheHeads, pastDim, hd]);
    const pastValue = g.input(`past_value.${layer}`, F, ['batch', cacheHeads, pastDim, hd]);
    const presentKey = gqa ? g.fresh('present_key') : `present_key.${layer}`;
    const presentValue = gqa ? g.fresh('present_value') : `present_value.${layer}`;
    if (gqa) {
      gqa.projections.push(qkv);
    } else {
      g.outputs.push({ name: presentKey, elemType: F, dims: ['batch', cacheHeads, 'total', hd] });
      g.outputs.push({ name: presentValue, elemType: F, dims: ['batch', cacheHeads, 'total', hd] });
    }
    let merged = g.fresh('attn'); // [b, s, H * hd]
    if (gqa) {
      // Packed [q | k | v] in, rotary inside the kernel.
      g.opMulti(
        'GroupQueryAttention',
        [qkv, '', '', pastKey, pastValue, gqa.seqlensK, gqa.totalLength, gqa.cos, gqa.sin],
        [merged, presentKey, presentValue],
        { num_heads: H, kv_num_heads: KV, scale: { float: 1 }, do_rotary: 1, rotary_interleaved: 0 },
        'com.microsoft',
      );
    } else if (masked) {
      const qkWidth = (H + KV) * hd;
      const [qk, qkRotated, vNew] = g.opMulti(
        'Split',
        [qkv, g.constI64([qkWidth, qkWidth, KV * hd])],
        [g.fresh('qk'), g.fresh('qk_rot'), g.fresh('v')],
        { axis: -1 },
      ) as [string, string, string];
      const qkEmbedded = g.op('Add', [g.op('Mul', [qk, masked.cos]), g.op('Mul', [qkRotated, masked.sin])]);
      if (attention === 'fused') {
        const [q, kNew] = g.opMulti(
          'Split',
          [qkEmbedded, g.constI64([H * hd, KV * hd])],
          [g.fresh('q'), g.fresh('k')],
          {
            axis: -1,
          },
        ) as [string, string];
        g.opMulti(
          'MultiHeadAttention',
          [q, repeatKvFeatures(kNew), repeatKvFeatures(vNew), '', '', masked.bias, pastKey, pastValue],
          [merged, presentKey, presentValue],
          { num_heads: H, scale: { float: 1 } }, // q carries 1/sqrt(hd)
          'com.microsoft',
        );
      } else {
        const [q, kNew] = g.opMulti(
          'Split',
          [toHeads(qkEmbedded, H + KV), g.constI64([H, KV])],
          [g.fresh('q'), g.fresh('k')],
          {
            axis: 1,
          },
        ) as [string, string];
        const k = g.op('Concat', [pastKey, kNew], { axis: 2 }, presentKey);
        const v = g.op('Concat', [pastValue, toHeads(vNew, KV)], { axis: 2 }, presentValue);
        const kT = g.op('Transpose', [repeatKv(k)], { perm: [0, 1, 3, 2] });
        const scores = g.op('Add', [g.op('MatMul', [q, kT]), masked.bias]); // q carries 1/sqrt(hd)
        const attn = g.op('MatMul', [g.op('Softmax', [scores], { axis: -1 }), repeatKv(v)]); // [b, H, s, hd]
        merged = g.op('Reshape', [g.op('Transpose', [attn], { perm: [0, 2, 1, 3] }), g.constI64([0, 0, H * hd])]);
      }
    }
    hidden = g.op('Add', [hidden, project(merged, layer, 'o')]);

    const n2 = rmsNorm(hidden, `${prefix}.post_attention_layernorm.weight`);
    const I = config.intermediate_size;
    const [gate, up] = g.opMulti(
      'Split',
      [project(n2, layer, 'gate_up'), g.constI64([I, I])],
      [g.fresh('gate'), g.fresh('up')],
      {
        axis: -1,
      },
    ) as [string, string];
    const act = g.op('Mul', [g.op('Mul', [gate, g.op('Sigmoid', [gate])]), up]);
    hidden = g.op('Add', [hidden, project(act, layer, 'down')]);
  }
  if (gqa) {
    // Output `qkv` [layers * batch, seq, (H + 2 KV) * hd]: this step's projections, from which the caller
    // appends keys (rotated there) and values to the cache it keeps. Copying whole presents out of ORT
    // every step would cost more than the step's arithmetic.
    const width = groupWidth(config, 'qkv', layout);
    g.output(g.op('Concat', gqa.projections, { axis: 0 }), 'qkv', F, ['layers_batch', 'seq', width]);
  }
  const final = rmsNorm(hidden, 'model.norm.weight');
  const head = config.tie_word_embeddings ? embed : weight('lm_head.weight');
  const headT = g.initializer('lm_head_t', transpose2d(head.data, config.vocab_size, h), [h, config.vocab_size]);
  g.output(g.op('MatMul', [final, headT]), 'logits', F, ['batch', 'seq', config.vocab_size]);
  return g.toBytes();
}

/**
 * The attention mask's bias and the rotary tables of the MultiHeadAttention and plain ONNX graphs,
 * from inputs attention_mask [batch, past + seq] and position_ids [batch, seq].
 */
function maskAndRotary(g: Graph, config: LlamaConfig, inputIds: string): { bias: string; cos: string; sin: string } {
  const F = DataType.FLOAT;
  const I64 = DataType.INT64;
  const hd = headDim(config);
  const attentionMask = g.input('attention_mask', I64, ['batch', 'total']);
  const positionIds = g.input('position_ids', I64, ['batch', 'seq']);

  // key j visible from query i iff j <= past + i and attention_mask[b, j] == 1
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
  const bias = g.op('Where', [g.op('And', [causal, real]), g.constF32([0]), g.constF32([MASK_VALUE])]); // [b, 1, s, T]

  // rotary tables for q and k side by side, [b, s, (H + KV) * hd]
  const positions = g.op('Unsqueeze', [g.op('Cast', [positionIds], { to: F }), g.constI64([2], [1])]); // [b, s, 1]
  const freqs = g.op('Mul', [positions, g.initializer('rope.inv_freq', inverseFrequencies(config), [hd / 2])]);
  const emb = g.op('Concat', [freqs, freqs], { axis: -1 }); // [b, s, hd]
  const heads = g.constI64([1, 1, config.num_attention_heads + config.num_key_value_heads]);
  return { bias, cos: g.op('Tile', [g.op('Cos', [emb]), heads]), sin: g.op('Tile', [g.op('Sin', [emb]), heads]) };
}

/**
 * GroupQueryAttention's inputs: seqlens_k [batch] int32 (each row's length after this step, minus 1),
 * total_sequence_length int32 (the longest row's), and cos/sin tables [max positions, head_dim / 2].
 * Rows are left-aligned in the cache, so a token's position is its index: no mask, no position ids.
 */
function gqaInputs(
  g: Graph,
  config: LlamaConfig,
): { seqlensK: string; totalLength: string; cos: string; sin: string; projections: string[] } {
  const I32 = DataType.INT32;
  const half = headDim(config) / 2;
  const positions = config.max_position_embeddings;
  const { cos, sin } = rotaryTables(config);
  return {
    seqlensK: g.input('seqlens_k', I32, ['batch']),
    totalLength: g.input('total_sequence_length', I32, []),
    cos: g.initializer('rope.cos', cos, [positions, half]),
    sin: g.initializer('rope.sin', sin, [positions, half]),
    projections: [],
  };
}

/** cos and sin of each position's rotary angles, [max positions, head_dim / 2]. */
export function rotaryTables(config: LlamaConfig): { cos: Float32Array; sin: Float32Array } {
  const half = headDim(config) / 2;
  const positions = config.max_position_embeddings;
  const inv = inverseFrequencies(config);
  const cos = new Float32Array(positions * half);
  const sin = new Float32Array(positions * half);
  for (let p = 0; p < positions; p++) {
    for (let i = 0; i < half; i++) {
      const angle = p * (inv[i] as number);
      cos[p * half + i] = Math.cos(angle);
      sin[p * half + i] = Math.sin(angle);
    }
  }
  return { cos, sin };
}

/** Heads held in the KV cache: the fused kernel keeps key/value heads repeated to the query head count. */
export function cacheHeadCount(config: LlamaConfig, attention: AttentionKernel): number {
  return attention === 'fused' ? config.num_attention_heads : config.num_key_value_heads;
}

/** Every LoRA-capable module path of the model. */
export function allLoraModules(config: LlamaConfig): string[] {
  return [...Array(config.num_hidden_layers).keys()].flatMap((layer) => LORA_MODULES.map((k) => linearPath(layer, k)));
}
