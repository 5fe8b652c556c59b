/**
 * The Llama graph on onnxruntime-node: prefill and decode with a KV cache, LoRA as runtime inputs.
 */
import ort from 'onnxruntime-node';
import type { LoraAdapter } from '@floe/shared';
import { type LlamaConfig, headDim } from '../config.js';
import type { Weights } from '../checkpoint.js';
import type { DecoderModel } from '../generate.js';
import {
  type AttentionKernel,
  allLoraModules,
  buildLlamaGraph,
  cacheHeadCount,
  qkvLayoutOf,
} from '../onnx/llama-graph.js';
import { LoraFeeds } from './lora-feeds.js';
import { defaultPositions } from '../tfjs/llama.js';

export interface OrtLlamaOptions {
  /** Module paths with LoRA inputs; 'all' for every linear layer; none by default. */
  loraModules?: readonly string[] | 'all';
  /** ORT intra-op threads (default: 1, fastest for models this small on this kind of machine). */
  threads?: number;
  /** Attention kernel (see LlamaGraphOptions); default `fused`. */
  attention?: AttentionKernel;
}

/** Per layer, [batch, kvHeads, past, headDim]. */
export interface OrtKVCache {
  keys: ort.Tensor[];
  values: ort.Tensor[];
  length: number;
}

export interface OrtForwardOptions {
  attentionMask?: number[][] | undefined;
  positionIds?: number[][] | undefined;
  cache?: OrtKVCache | undefined;
  lora?: LoraAdapter | undefined;
}

export interface OrtForwardResult {
  /** [batch, seq, vocab], row-major. */
  logits: Float32Array;
  cache: OrtKVCache;
}

/** One sequence's part of a KV cache, without padding: per layer [heads, length, headDim]. */
export interface KvRow {
  keys: Float32Array[];
  values: Float32Array[];
  length: number;
}

export class OrtLlama implements DecoderModel<OrtKVCache> {
  private readonly lora: LoraFeeds;

  private constructor(
    readonly config: LlamaConfig,
    readonly session: ort.InferenceSession,
    readonly loraModules: readonly string[],
    private readonly cacheHeads: number,
    attention: AttentionKernel,
  ) {
    this.lora = new LoraFeeds(config, loraModules, qkvLayoutOf(attention));
  }

  static async create(config: LlamaConfig, weights: Weights, options: OrtLlamaOptions = {}): Promise<OrtLlama> {
    const loraModules = options.loraModules === 'all' ? allLoraModules(config) : [...(options.loraModules ?? [])];
    const attention = options.attention ?? 'fused';
    const graph = buildLlamaGraph(config, weights, { loraModules, attention });
    const threads = options.threads ?? 1;
    const session = await ort.InferenceSession.create(graph, {
      graphOptimizationLevel: 'all',
      intraOpNumThreads: threads,
      interOpNumThreads: 1,
      executionMode: 'sequential',
    });
    return new OrtLlama(config, session, loraModules, cacheHeadCount(config, attention), attention);
  }

  async release(): Promise<void> {
    await this.session.release();
  }

  emptyCache(batch: number): OrtKVCache {
    const dims = [batch, this.cacheHeads, 0, headDim(this.config)];
    const empty = () => new ort.Tensor('float32', new Float32Array(0), dims);
    const layers = [...Array(this.config.num_hidden_layers).keys()];
    return { keys: layers.map(empty), values: layers.map(empty), length: 0 };
  }

  /**
   * Row `b` of a batched cache, its last `length` positions (a left-padded row's real ones): how a
   * sequence leaves a batch (continuous batching) without copying the others.
   */
  cacheRow(cache: OrtKVCache, b: number, length: number): KvRow {
    const d = headDim(this.config);
    const total = cache.length;
    const slice = (t: ort.Tensor) => {
      const data = t.data as Float32Array;
      const out = new Float32Array(this.cacheHeads * length * d);
      for (let h = 0; h < this.cacheHeads; h++) {
        const from = ((b * this.cacheHeads + h) * total + total - length) * d;
        out.set(data.subarray(from, from + length * d), h * length * d);
      }
      return out;
    };
    return { keys: cache.keys.map(slice), values: cache.values.map(slice), length };
  }

  /** Rows stacked into one cache, left-padded to the longest, with the matching attention mask. */
  stackRows(rows: readonly KvRow[]): { cache: OrtKVCache; mask: number[][] } {
    const d = headDim(this.config);
    const total = Math.max(0, ...rows.map((r) => r.length));
    const layers = [...Array(this.config.num_hidden_layers).keys()];
    const stack = (pick: (r: KvRow) => Float32Array) => {
      const data = new Float32Array(rows.length * this.cacheHeads * total * d);
      rows.forEach((row, b) => {
        const source = pick(row);
        for (let h = 0; h < this.cacheHeads; h++) {
          const to = ((b * this.cacheHeads + h) * total + total - row.length) * d;
          data.set(source.subarray(h * row.length * d, (h + 1) * row.length * d), to);
        }
      });
      return new ort.Tensor('float32', data, [rows.length, this.cacheHeads, total, d]);
    };
    return {
      cache: {
        keys: layers.map((l) => stack((r) => r.keys[l] as Float32Array)),
        values: layers.map((l) => stack((r) => r.values[l] as Float32Array)),
        length: total,
      },
      mask: rows.map((r) => [...new Array<number>(total - r.length).fill(0), ...new Array<number>(r.length).fill(1)]),
    };
  }

  async forward(inputIds: number[][], options: OrtForwardOptions = {}): Promise<OrtForwardResult> {
    const batch = inputIds.length;
    const seq = inputIds[0]?.length ?? 0;
    const cache = options.cache ?? this.emptyCache(batch);
    const total = cache.length + seq;
    const mask = options.attentionMask ?? inputIds.map(() => new Array<number>(total).fill(1));
    if (mask.length !== batch || mask.some((row) => row.length !== total)) {
      throw new Error(`attention_mask must be [${batch}, ${total}] (past ${cache.length} + new ${seq})`);
    }
    const positions = options.positionIds ?? defaultPositions(mask, seq);
    const feeds: Record<string, ort.Tensor> = {
      input_ids: int64(inputIds, [batch, seq]),
      attention_mask: int64(mask, [batch, total]),
      position_ids: int64(positions, [batch, seq]),
      ...this.loraFeeds(options.lora),
    };
    for (let layer = 0; layer < this.config.num_hidden_layers; layer++) {
      feeds[`past_key.${layer}`] = cache.keys[layer] as ort.Tensor;
      feeds[`past_value.${layer}`] = cache.values[layer] as ort.Tensor;
    }
    const out = await this.session.run(feeds);
    const layers = [...Array(this.config.num_hidden_layers).keys()];
    return {
      logits: (out['logits'] as ort.Tensor).data as Float32Array,
      cache: {
        keys: layers.map((l) => out[`present_key.${l}`] as ort.Tensor),
        values: layers.map((l) => out[`present_value.${l}`] as ort.Tensor),
        length: total,
      },
    };
  }

  private loraFeeds(adapter: LoraAdapter | undefined): Record<string, ort.Tensor> {
    return this.lora.feeds(adapter);
  }
}

/** int64 tensor of small non-negative integers, written as (low, high) 32-bit words: BigInt per element is slow. */
export function int64(rows: number[][], dims: number[]): ort.Tensor {
  const data = new BigInt64Array(dims.reduce((a, b) => a * b, 1));
  const words = new Int32Array(data.buffer);
  let i = 0;
  for (const row of rows) for (const v of row) words[2 * i++] = v;
  return new ort.Tensor('int64', data, dims);
}
