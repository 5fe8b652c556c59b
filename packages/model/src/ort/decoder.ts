/**
 * The decode engine: the Llama graph on GroupQueryAttention (rotary, cache append and attention in
 * one kernel per layer), with the KV cache kept here and only each step's new keys and values
 * coming back out of ORT (onnxruntime-node copies every input and output, so whole presents out per
 * step would cost more than the arithmetic). A row can be cut back to any length, which is what
 * speculative decoding needs (decision 0020).
 *
 * Rows are left-aligned (a token's position is its index in the row), so rows of different lengths
 * decode together without padding or masks. Limits of the kernel: several tokens at once with a past
 * only for a single row; a batch of rows starts together from empty rows.
 */
import ort from 'onnxruntime-node';
import type { LoraAdapter } from '@floe/shared';
import { type LlamaConfig, headDim } from '../config.js';
import type { Weights } from '../checkpoint.js';
import { mergeLora } from '../lora.js';
import { allLoraModules, buildLlamaGraph, cacheHeadCount, rotaryTables, supportsGqa } from '../onnx/llama-graph.js';
import { int64 } from './llama.js';
import { LoraFeeds } from './lora-feeds.js';

export interface OrtDecoderOptions {
  /** Module paths with LoRA inputs; 'all' for every linear layer; none by default. */
  loraModules?: readonly string[] | 'all';
  /**
   * An adapter folded into the weights: a fixed personalization at the speed of the base model (no
   * LoRA inputs, no extra matmuls).
   */
  mergedAdapter?: LoraAdapter;
  /** ORT intra-op threads (default 1: a thread pool costs more than it gives at this size). */
  threads?: number;
}

export class OrtDecoder {
  /** The kernel's rotary tables [positions, head_dim / 2], to rotate the keys the cache keeps. */
  readonly rotary: { cos: Float32Array; sin: Float32Array };

  private constructor(
    readonly config: LlamaConfig,
    readonly session: ort.InferenceSession,
    readonly lora: LoraFeeds,
  ) {
    this.rotary = rotaryTables(config);
  }

  static async create(config: LlamaConfig, weights: Weights, options: OrtDecoderOptions = {}): Promise<OrtDecoder> {
    if (!supportsGqa(config))
      throw new Error(`the decode engine needs head_dim a multiple of 16, got ${headDim(config)}`);
    const loraModules = options.loraModules === 'all' ? allLoraModules(config) : [...(options.loraModules ?? [])];
    const effective = options.mergedAdapter ? mergeLora(config, weights, options.mergedAdapter) : weights;
    const graph = buildLlamaGraph(config, effective, { loraModules, attention: 'gqa' });
    const session = await ort.InferenceSession.create(graph, {
      graphOptimizationLevel: 'all',
      intraOpNumThreads: options.threads ?? 1,
      interOpNumThreads: 1,
      executionMode: 'sequential',
    });
    return new OrtDecoder(config, session, new LoraFeeds(config, loraModules, 'in-kernel'));
  }

  /** `rows` empty sequences of up to `maxLength` tokens each, with their cache allocated now. */
  batch(rows = 1, maxLength = this.config.max_position_embeddings): DecodeBatch {
    if (!Number.isInteger(rows) || rows < 1) throw new Error(`rows must be a positive integer, got ${rows}`);
    if (!Number.isInteger(maxLength) || maxLength < 1 || maxLength > this.config.max_position_embeddings) {
      throw new Error(`maxLength must be 1..${this.config.max_position_embeddings}, got ${maxLength}`);
    }
    return new DecodeBatch(this, rows, maxLength);
  }

  async release(): Promise<void> {
    await this.session.release();
  }
}

export class DecodeBatch {
  /** Tokens held by each row. */
  readonly lengths: number[];
  /** Positions allocated per row; grows by doubling, since every run copies the whole cache into ORT. */
  private capacity = 0;
  /** Per layer, key then value: [rows, kvHeads, capacity, headDim]. */
  private cache: ort.Tensor[] = [];
  private readonly kvHeads: number;
  private readonly headDim: number;

  constructor(
    private readonly decoder: OrtDecoder,
    readonly rows: number,
    readonly maxLength: number,
  ) {
    this.lengths = new Array<number>(rows).fill(0);
    this.kvHeads = cacheHeadCount(decoder.config, 'gqa');
    this.headDim = headDim(decoder.config);
    this.grow(Math.min(MIN_CAPACITY, maxLength));
  }

  /**
   * Appends tokens to the rows and returns the logits [rows, seq, vocab] of the new positions. Either
   * every row is empty (a prompt each; shorter ones are padded and their logits past their length mean
   * nothing), or every row gets one token, or a single row gets any number.
   */
  async append(tokens: readonly (readonly number[])[], lora?: LoraAdapter): Promise<Float32Array> {
    const { config } = this.decoder;
    if (tokens.length !== this.rows) throw new Error(`append needs one token list per row (${this.rows})`);
    const seq = Math.max(...tokens.map((t) => t.length));
    const fresh = this.lengths.every((n) => n === 0);
    if (seq === 0) throw new Error('append needs at least one token');
    if (tokens.some((t) => t.length === 0)) throw new Error('every row needs a token');
    if (this.rows > 1 && !fresh && seq !== 1) throw new Error('rows with a past take one token each per step');
    for (const row of tokens) {
      for (const id of row) {
        if (!Number.isInteger(id) || id < 0 || id >= config.vocab_size) {
          throw new Error(`token ${id} is outside the vocabulary (0..${config.vocab_size - 1})`);
        }
      }
    }
    const after = this.lengths.map((n, b) => n + (tokens[b] as readonly number[]).length);
    const longest = Math.max(...after, seq);
    if (longest > this.maxLength) throw new Error(`a row would hold ${longest} tokens, more than ${this.maxLength}`);
    if (longest > this.capacity) this.grow(Math.min(this.maxLength, 2 ** Math.ceil(Math.log2(longest))));

    const padded = tokens.map((row) => [...row, ...new Array<number>(seq - row.length).fill(config.pad_token_id)]);
    const feeds: Record<string, ort.Tensor> = {
      input_ids: int64(padded, [this.rows, seq]),
      seqlens_k: new ort.Tensor(
        'int32',
        Int32Array.from(after, (n) => n - 1),
        [this.rows],
      ),
      total_sequence_length: new ort.Tensor('int32', Int32Array.of(fresh ? seq : longest), []),
      ...this.decoder.lora.feeds(lora),
    };
    this.cache.forEach((tensor, i) => (feeds[`past_${i % 2 === 0 ? 'key' : 'value'}.${i >> 1}`] = tensor));
    const out = await this.decoder.session.run(feeds);
    this.store((out['qkv'] as ort.Tensor).data as Float32Array, seq);
    after.forEach((n, b) => (this.lengths[b] = n));
    return (out['logits'] as ort.Tensor).data as Float32Array;
  }

  /** Forgets row `row`'s tokens from position `length` on (rejected draft tokens, a new turn). */
  truncate(row: number, length: number): void {
    const current = this.lengths[row];
    if (current === undefined) throw new Error(`no row ${row}`);
    if (!Number.isInteger(length) || length < 0 || length > current) {
      throw new Error(`row ${row} holds ${current} tokens; cannot truncate to ${length}`);
    }
    this.lengths[row] = length;
  }

  /** Empties every row (the cache is kept for reuse). */
  reset(): void {
    this.lengths.fill(0);
  }

  /**
   * Appends this step's keys (rotated as the kernel rotates them) and values, taken from output qkv
   * [layers * rows, seq, (H + 2 KV) * hd], after each row's past.
   */
  private store(qkv: Float32Array, seq: number): void {
    const { rows, kvHeads, headDim: hd, capacity } = this;
    const { cos, sin } = this.decoder.rotary;
    const half = hd / 2;
    const qWidth = this.decoder.config.num_attention_heads * hd;
    const width = qWidth + 2 * kvHeads * hd;
    for (let layer = 0; layer < this.decoder.config.num_hidden_layers; layer++) {
      const keys = (this.cache[2 * layer] as ort.Tensor).data as Float32Array;
      const values = (this.cache[2 * layer + 1] as ort.Tensor).data as Float32Array;
      for (let b = 0; b < rows; b++) {
        const past = this.lengths[b] as number;
        for (let s = 0; s < seq; s++) {
          const position = past + s;
          const source = ((layer * rows + b) * seq + s) * width;
          for (let h = 0; h < kvHeads; h++) {
            const k = source + qWidth + h * hd;
            const v = source + qWidth + kvHeads * hd + h * hd;
            const to = ((b * kvHeads + h) * capacity + position) * hd;
            for (let i = 0; i < half; i++) {
              const c = cos[position * half + i] as number;
              const n = sin[position * half + i] as number;
              const x = qkv[k + i] as number;
              const y = qkv[k + half + i] as number;
              keys[to + i] = x * c - y * n;
              keys[to + half + i] = y * c + x * n;
            }
            values.set(qkv.subarray(v, v + hd), to);
          }
        }
      }
    }
  }

  private grow(capacity: number): void {
    const { rows, kvHeads, headDim: hd } = this;
    const layers = this.decoder.config.num_hidden_layers;
    const previous = this.cache;
    const old = this.capacity;
    this.cache = Array.from({ length: 2 * layers }, (_, i) => {
      const data = new Float32Array(rows * kvHeads * capacity * hd);
      const before = previous[i]?.data as Float32Array | undefined;
      if (before) {
        for (let r = 0; r < rows * kvHeads; r++)
          data.set(before.subarray(r * old * hd, (r + 1) * old * hd), r * capacity * hd);
      }
      return new ort.Tensor('float32', data, [rows, kvHeads, capacity, hd]);
    });
    this.capacity = capacity;
  }
}

/** Smallest cache allocated per row, in positions. */
const MIN_CAPACITY = 64;
