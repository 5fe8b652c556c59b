/**
 * The Llama decoder in tfjs: the reference implementation every other engine is tested against,
 * and a training engine. Semantics follow Hugging Face's LlamaForCausalLM:
 *
 *   h = embed(ids)
 *   for each layer:  h = h + o_proj(attn(rope(q_proj(n)), rope(k_proj(n)), v_proj(n)))   n = rmsnorm(h)
 *                    h = h + down_proj(silu(gate_proj(n)) * up_proj(n))                   n = rmsnorm(h)
 *   logits = lm_head(rmsnorm(h))            (lm_head = embed^T when tie_word_embeddings)
 *
 * with rmsnorm(x) = x * rsqrt(mean(x^2) + eps) * w, rotary embeddings in the rotate_half convention,
 * grouped-query attention (each key/value head serves num_attention_heads / num_key_value_heads query
 * heads) and a causal mask combined with a padding mask. A LoRA module adds (alpha / r) (x A^T) B^T.
 */
import * as tf from '@tensorflow/tfjs';
import type { LoraAdapter } from '@floe/shared';
import { type LlamaConfig, type LORA_MODULES, headDim, linearPath, weightShapes } from '../config.js';
import type { Weights } from '../checkpoint.js';
import { checkAdapter } from '../lora.js';
import type { DecoderModel } from '../generate.js';

/** Large negative score for masked keys: exp() underflows to exactly 0, and fully masked rows stay finite. */
export const MASK_VALUE = -1e9;

export interface TfjsLoraModule {
  A: tf.Tensor2D; // [r, in]
  B: tf.Tensor2D; // [out, r]
  scale: number; // alpha / r
}
export type TfjsLora = Map<string, TfjsLoraModule>;

/** Past keys and values per layer: [batch, kvHeads, pastLength, headDim]. */
export interface KVCache {
  keys: tf.Tensor4D[];
  values: tf.Tensor4D[];
}

export interface ForwardOptions {
  lora?: TfjsLora | undefined;
  /** [batch, past + seq], 1 for real tokens and 0 for padding; all ones when absent. */
  attentionMask?: number[][] | undefined;
  /** [batch, seq]; by default the count of real tokens before each position. */
  positionIds?: number[][] | undefined;
  cache?: KVCache | undefined;
  /** One-hot matmul instead of gather for the embedding (the wasm backend has no gather gradient). */
  oneHotEmbedding?: boolean | undefined;
  /** Keep the keys and values for later decoding (default true; training turns it off). */
  returnCache?: boolean | undefined;
}

export interface ForwardResult {
  logits: tf.Tensor3D; // [batch, seq, vocab]
  cache: KVCache;
}

export class TfjsLlama {
  readonly config: LlamaConfig;
  readonly params: Map<string, tf.Variable>;

  constructor(config: LlamaConfig, weights: Weights, trainable = false) {
    this.config = config;
    this.params = new Map();
    for (const [name, shape] of weightShapes(config)) {
      const tensor = weights.get(name);
      if (!tensor) throw new Error(`weights lack ${name}`);
      this.params.set(name, tf.variable(tf.tensor(tensor.data, shape), trainable));
    }
  }

  dispose(): void {
    for (const v of this.params.values()) v.dispose();
  }

  private w(name: string): tf.Tensor {
    const p = this.params.get(name);
    if (!p) throw new Error(`no parameter ${name}`);
    return p;
  }

  /** Current weights back as plain arrays (after training). */
  weights(): Weights {
    const out: Weights = new Map();
    for (const [name, v] of this.params) out.set(name, { name, shape: v.shape, data: v.dataSync() as Float32Array });
    return out;
  }

  forward(inputIds: number[][], options: ForwardOptions = {}): ForwardResult {
    const { config } = this;
    const batch = inputIds.length;
    const seq = inputIds[0]?.length ?? 0;
    const past = options.cache?.keys[0]?.shape[2] ?? 0;
    const total = past + seq;
    const mask2d = options.attentionMask ?? inputIds.map(() => new Array<number>(total).fill(1));
    const positions = options.positionIds ?? defaultPositions(mask2d, seq);
    const hd = headDim(config);
    const H = config.num_attention_heads;
    const KV = config.num_key_value_heads;

    const keys: tf.Tensor4D[] = [];
    const values: tf.Tensor4D[] = [];
    const logits = tf.tidy(() => {
      const ids = tf.tensor2d(inputIds.flat(), [batch, seq], 'int32');
      let h: tf.Tensor3D = options.oneHotEmbedding
        ? tf
            .matMul(
              tf.oneHot(ids.flatten(), config.vocab_size).toFloat(),
              this.w('model.embed_tokens.weight') as tf.Tensor2D,
            )
            .reshape([batch, seq, config.hidden_size])
        : (tf.gather(this.w('model.embed_tokens.weight'), ids) as tf.Tensor3D);

      const [cos, sin] = rotaryTables(config, positions); // [batch, 1, seq, hd]
      const mask = attentionBias(mask2d, past, seq); // [batch, 1, seq, total]

      for (let layer = 0; layer < config.num_hidden_layers; layer++) {
        const prefix = `model.layers.${layer}`;
        const linear = (x: tf.Tensor3D, kind: (typeof LORA_MODULES)[number]) =>
          this.linear(x, linearPath(layer, kind), options.lora);

        // self-attention
        const n1 = rmsNorm(h, this.w(`${prefix}.input_layernorm.weight`), config.rms_norm_eps);
        const q = splitHeads(linear(n1, 'q_proj'), H, hd); // [b, H, s, hd]
        let k = splitHeads(linear(n1, 'k_proj'), KV, hd); // [b, KV, s, hd]
        let v = splitHeads(linear(n1, 'v_proj'), KV, hd);
        const qr = applyRotary(q, cos, sin);
        k = applyRotary(k, cos, sin);
        const cache = options.cache;
        if (cache) {
          k = tf.concat([cache.keys[layer] as tf.Tensor4D, k], 2);
          v = tf.concat([cache.values[layer] as tf.Tensor4D, v], 2);
        }
        if (options.returnCache !== false) {
          keys.push(tf.keep(k));
          values.push(tf.keep(v));
        }
        const kx = repeatKv(k, H / KV);
        const vx = repeatKv(v, H / KV);
        const scores = tf.add(tf.mul(tf.matMul(qr, kx, false, true), 1 / Math.sqrt(hd)), mask);
        const attn = tf.matMul(tf.softmax(scores, -1), vx); // [b, H, s, hd]
        const merged = attn.transpose([0, 2, 1, 3]).reshape<tf.Tensor3D>([batch, seq, H * hd]);
        h = tf.add(h, linear(merged, 'o_proj'));

        // SwiGLU MLP
        const n2 = rmsNorm(h, this.w(`${prefix}.post_attention_layernorm.weight`), config.rms_norm_eps);
        const gate = linear(n2, 'gate_proj');
        const up = linear(n2, 'up_proj');
        const act = tf.mul<tf.Tensor3D>(tf.mul(gate, tf.sigmoid(gate)), up);
        h = tf.add(h, linear(act, 'down_proj'));
      }

      const final = rmsNorm(h, this.w('model.norm.weight'), config.rms_norm_eps);
      const head = config.tie_word_embeddings ? this.w('model.embed_tokens.weight') : this.w('lm_head.weight');
      return tf
        .matMul(final.reshape([batch * seq, config.hidden_size]), head, false, true)
        .reshape<tf.Tensor3D>([batch, seq, config.vocab_size]);
    });
    return { logits, cache: { keys, values } };
  }

  /** y = x W^T (+ scale * (x A^T) B^T when the module is adapted). */
  private linear(x: tf.Tensor3D, modulePath: string, lora: TfjsLora | undefined): tf.Tensor3D {
    const [b, s, inn] = x.shape;
    const x2 = x.reshape([b * s, inn]);
    let y = tf.matMul(x2, this.w(`${modulePath}.weight`), false, true);
    const adapter = lora?.get(modulePath);
    if (adapter) {
      const delta = tf.matMul(tf.matMul(x2, adapter.A, false, true), adapter.B, false, true);
      y = tf.add(y, tf.mul(delta, adapter.scale));
    }
    return y.reshape([b, s, y.shape[1] as number]);
  }
}

export function rmsNorm(x: tf.Tensor3D, weight: tf.Tensor, eps: number): tf.Tensor3D {
  const meanSquare = tf.mean(tf.square(x), -1, true);
  return tf.mul(tf.mul(x, tf.rsqrt(tf.add(meanSquare, eps))), weight);
}

function splitHeads(x: tf.Tensor3D, heads: number, hd: number): tf.Tensor4D {
  const [b, s] = x.shape;
  return x.reshape([b, s, heads, hd]).transpose([0, 2, 1, 3]);
}

/** [b, kv, T, hd] -> [b, kv * rep, T, hd], each key/value head repeated for its query heads. */
function repeatKv(x: tf.Tensor4D, rep: number): tf.Tensor4D {
  if (rep === 1) return x;
  const [b, kv, t, hd] = x.shape;
  // rank-4 tile: tfjs has no tile gradient for rank 5
  return tf.tile(x.reshape([b, kv, 1, t * hd]), [1, 1, rep, 1]).reshape([b, kv * rep, t, hd]);
}

export function inverseFrequencies(config: LlamaConfig): Float32Array {
  const hd = headDim(config);
  return Float32Array.from({ length: hd / 2 }, (_, i) => 1 / config.rope_theta ** ((2 * i) / hd));
}

/** cos and sin of position * inv_freq, duplicated over both halves: [batch, 1, seq, hd]. */
function rotaryTables(config: LlamaConfig, positions: number[][]): [tf.Tensor4D, tf.Tensor4D] {
  const batch = positions.length;
  const seq = positions[0]?.length ?? 0;
  const pos = tf.tensor3d(positions.flat(), [batch, seq, 1]);
  const freqs = tf.mul(pos, tf.tensor1d(inverseFrequencies(config)));
  const emb = tf.concat([freqs, freqs], -1).reshape<tf.Tensor4D>([batch, 1, seq, headDim(config)]);
  return [tf.cos(emb), tf.sin(emb)];
}

/** x * cos + rotate_half(x) * sin, rotate_half(x) = [-x2, x1]. */
function applyRotary(x: tf.Tensor4D, cos: tf.Tensor4D, sin: tf.Tensor4D): tf.Tensor4D {
  const half = x.shape[3] / 2;
  const [x1, x2] = tf.split(x, [half, half], 3);
  const rotated = tf.concat([tf.neg(x2 as tf.Tensor4D), x1 as tf.Tensor4D], 3);
  return tf.add(tf.mul(x, cos), tf.mul(rotated, sin));
}

/** Key j is visible from query i (absolute position past + i) when j <= past + i and j is not padding. */
function attentionBias(mask2d: number[][], past: number, seq: number): tf.Tensor4D {
  const batch = mask2d.length;
  const total = past + seq;
  const bias = new Float32Array(batch * seq * total);
  for (let b = 0; b < batch; b++)
    for (let i = 0; i < seq; i++)
      for (let j = 0; j < total; j++) {
        const visible = j <= past + i && mask2d[b]?.[j] === 1;
        bias[(b * seq + i) * total + j] = visible ? 0 : MASK_VALUE;
      }
  return tf.tensor4d(bias, [batch, 1, seq, total]);
}

/** Position of each new token = number of real tokens before it; padding gets position 0. */
export function defaultPositions(mask2d: number[][], seq: number): number[][] {
  return mask2d.map((row) => {
    const past = row.length - seq;
    const positions: number[] = [];
    let before = 0;
    row.forEach((real, j) => {
      if (j >= past) positions.push(real === 1 ? before : 0);
      if (real === 1) before++;
    });
    return positions;
  });
}

/** tfjs tensors for an adapter (A [r, in], B [out, r], scale alpha / r). */
export function tfjsLora(config: LlamaConfig, adapter: LoraAdapter, trainable = false): TfjsLora {
  checkAdapter(config, adapter);
  const lora: TfjsLora = new Map();
  for (const [path, f] of adapter.modules) {
    lora.set(path, {
      A: tf.variable(tf.tensor2d(f.A, [f.rank, f.inFeatures]), trainable),
      B: tf.variable(tf.tensor2d(f.B, [f.outFeatures, f.rank]), trainable),
      scale: adapter.alpha / f.rank,
    });
  }
  return lora;
}

export function disposeCache(cache: KVCache): void {
  tf.dispose([...cache.keys, ...cache.values]);
}

/** TfjsLlama behind the DecoderModel interface used by generation (logits copied out, old caches freed). */
export class TfjsDecoder implements DecoderModel<KVCache> {
  private readonly adapters = new WeakMap<LoraAdapter, TfjsLora>();

  constructor(readonly model: TfjsLlama) {}

  get config(): LlamaConfig {
    return this.model.config;
  }

  forward(
    inputIds: number[][],
    options: { attentionMask: number[][]; cache?: KVCache | undefined; lora?: LoraAdapter | undefined },
  ): Promise<{ logits: Float32Array; cache: KVCache }> {
    const { logits, cache } = this.model.forward(inputIds, {
      attentionMask: options.attentionMask,
      cache: options.cache,
      lora: options.lora ? this.loraFor(options.lora) : undefined,
    });
    const data = logits.dataSync() as Float32Array;
    logits.dispose();
    if (options.cache) disposeCache(options.cache);
    return Promise.resolve({ logits: data, cache });
  }

  private loraFor(adapter: LoraAdapter): TfjsLora {
    let lora = this.adapters.get(adapter);
    if (!lora) {
      lora = tfjsLora(this.model.config, adapter);
      this.adapters.set(adapter, lora);
    }
    return lora;
  }
}
