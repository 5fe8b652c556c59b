/**
 * Text generation over any decoder with a KV cache: batches of prompts (left-padded), greedy or
 * sampled decoding (temperature, top-k, top-p), stop strings, EOS, a token limit, and streaming.
 */
import type { LoraAdapter } from '@floe/shared';
import type { LlamaConfig } from './config.js';
import { Random } from './random.js';
import { ByteTokenizer, type TextTokenizer, checkTokenizer } from './tokenizer.js';

/** What generation needs of a model: one forward step over new tokens, given the cache of the past. */
export interface DecoderModel<Cache = unknown> {
  readonly config: LlamaConfig;
  forward(
    inputIds: number[][],
    options: { attentionMask: number[][]; cache?: Cache | undefined; lora?: LoraAdapter | undefined },
  ): Promise<{ logits: Float32Array; cache: Cache }>;
}

export interface SamplingOptions {
  /** 0 (default) is greedy. */
  temperature?: number;
  topK?: number;
  topP?: number;
  seed?: number;
  /** Added to a token's logit before choosing (as OpenAI's `logit_bias`); -Infinity bans the token. */
  logitBias?: ReadonlyMap<number, number>;
}

export interface GenerateOptions extends SamplingOptions {
  maxNewTokens: number;
  stop?: readonly string[];
  lora?: LoraAdapter | undefined;
  /** Prepend the BOS token to each prompt (default true). */
  bos?: boolean;
  /** The model's vocabulary (default bytes); checked against its config. */
  tokenizer?: TextTokenizer;
}

export type FinishReason = 'stop' | 'eos' | 'length';

export interface Generation {
  text: string;
  tokens: number[];
  finishReason: FinishReason;
  /**
   * Greedy decoding only: the smallest gap, over the steps, between the chosen token's logit and the
   * best other token's (Infinity when sampled or when nothing was decoded). A step within float noise
   * of a tie may choose differently on another CPU.
   */
  margin: number;
}

export interface TokenEvent {
  /** Which prompt of the batch. */
  index: number;
  token: number;
  /** All text generated so far for this prompt. */
  text: string;
}

/** Picks the next token from one row of logits. Special tokens other than EOS are never sampled. */
export function sampleToken(
  logits: ArrayLike<number>,
  config: LlamaConfig,
  options: SamplingOptions,
  random: Random,
): number {
  const allowed = (id: number) => id !== config.pad_token_id && id !== config.bos_token_id;
  const temperature = options.temperature ?? 0;
  if (temperature <= 0) {
    let best = -1;
    for (let id = 0; id < logits.length; id++)
      if (allowed(id) && (best < 0 || (logits[id] as number) > (logits[best] as number))) best = id;
    return best;
  }
  let candidates: { id: number; logit: number }[] = [];
  for (let id = 0; id < logits.length; id++)
    if (allowed(id)) candidates.push({ id, logit: (logits[id] as number) / temperature });
  candidates.sort((a, b) => b.logit - a.logit);
  if (options.topK !== undefined && options.topK > 0) candidates = candidates.slice(0, options.topK);
  const max = candidates[0]?.logit ?? 0;
  const weights = candidates.map((c) => Math.exp(c.logit - max));
  let total = weights.reduce((a, b) => a + b, 0);
  if (options.topP !== undefined && options.topP < 1) {
    let kept = 0;
    let mass = 0;
    while (kept < weights.length && mass < options.topP * total) mass += weights[kept++] as number;
    candidates = candidates.slice(0, Math.max(kept, 1));
    weights.length = candidates.length;
    total = weights.reduce((a, b) => a + b, 0);
  }
  let r = random.next() * total;
  for (const [i, w] of weights.entries()) {
    r -= w;
    if (r <= 0) return (candidates[i] as { id: number }).id;
  }
  return (candidates.at(-1) as { id: number }).id;
}

/** Logit of `chosen` less the best logit of any other token that may be sampled. */
export function greedyMargin(logits: ArrayLike<number>, config: LlamaConfig, chosen: number): number {
  let runnerUp = -Infinity;
  for (let id = 0; id < logits.length; id++) {
    if (id === chosen || id === config.pad_token_id || id === config.bos_token_id) continue;
    runnerUp = Math.max(runnerUp, logits[id] as number);
  }
  return (logits[chosen] as number) - runnerUp;
}

/** Streams tokens of a batch of prompts as they are decoded; returns the finished generations. */
export async function* streamGenerate<C>(
  model: DecoderModel<C>,
  prompts: readonly string[],
  options: GenerateOptions,
): AsyncGenerator<TokenEvent, Generation[]> {
  const { config } = model;
  const tokenizer = options.tokenizer ?? new ByteTokenizer();
  checkTokenizer(config, tokenizer);
  const random = new Random(options.seed ?? 0);
  const encoded = prompts.map((p) => tokenizer.encode(p, { bos: options.bos ?? true }));
  const width = Math.max(...encoded.map((ids) => ids.length));
  if (width + options.maxNewTokens > config.max_position_embeddings) {
    throw new Error(
      `prompt (${width}) + maxNewTokens (${options.maxNewTokens}) exceeds max_position_embeddings ${config.max_position_embeddings}`,
    );
  }
  const ids = encoded.map((row) => [...new Array<number>(width - row.length).fill(config.pad_token_id), ...row]);
  const mask = encoded.map((row) => [
    ...new Array<number>(width - row.length).fill(0),
    ...new Array<number>(row.length).fill(1),
  ]);
  const results: Generation[] = prompts.map(() => ({ text: '', tokens: [], finishReason: 'length', margin: Infinity }));
  const greedy = (options.temperature ?? 0) <= 0;
  const done = prompts.map(() => false);
  const V = config.vocab_size;

  let step = await model.forward(ids, { attentionMask: mask, lora: options.lora });
  let seqOfLogits = width;
  for (let t = 0; t < options.maxNewTokens; t++) {
    const next: number[] = [];
    for (let b = 0; b < prompts.length; b++) {
      if (done[b]) {
        next.push(config.pad_token_id);
        continue;
      }
      const offset = (b * seqOfLogits + seqOfLogits - 1) * V;
      const row = biased(step.logits.subarray(offset, offset + V), options.logitBias);
      const token = sampleToken(row, config, options, random);
      next.push(token);
      const result = results[b] as Generation;
      if (greedy) result.margin = Math.min(result.margin, greedyMargin(row, config, token));
      if (token === config.eos_token_id) {
        result.finishReason = 'eos';
        done[b] = true;
        continue;
      }
      result.tokens.push(token);
      result.text = tokenizer.decode(result.tokens);
      const hit = firstStop(result.text, options.stop);
      if (hit >= 0) {
        result.text = result.text.slice(0, hit);
        result.finishReason = 'stop';
        done[b] = true;
      }
      yield { index: b, token, text: result.text };
    }
    if (done.every(Boolean) || t === options.maxNewTokens - 1) break;
    mask.forEach((row, b) => row.push(done[b] ? 0 : 1));
    step = await model.forward(
      next.map((id) => [id]),
      { attentionMask: mask, cache: step.cache, lora: options.lora },
    );
    seqOfLogits = 1;
  }
  return results;
}

export async function generate<C>(
  model: DecoderModel<C>,
  prompts: readonly string[],
  options: GenerateOptions,
): Promise<Generation[]> {
  const stream = streamGenerate(model, prompts, options);
  for (;;) {
    const { value, done } = await stream.next();
    if (done) return value;
  }
}

function biased(row: Float32Array, bias: ReadonlyMap<number, number> | undefined): Float32Array {
  if (!bias || bias.size === 0) return row;
  const out = row.slice();
  for (const [id, b] of bias) if (id >= 0 && id < out.length) out[id] = (out[id] as number) + b;
  return out;
}

function firstStop(text: string, stop: readonly string[] | undefined): number {
  let first = -1;
  for (const s of stop ?? []) {
    const at = text.indexOf(s);
    if (at >= 0 && (first < 0 || at < first)) first = at;
  }
  return first;
}
