/**
 * One interface for next-token sources at the byte level, the common ground of a byte-level edge model,
 * a subword cloud and their fusion: a session starts after a prompt, says how likely each next byte (or
 * the end of the text) is, and is told which one came. Generation, evaluation and RL sampling read
 * from it whatever is behind it.
 */
import type { LoraAdapter } from '@floe/shared';
import type { DecoderModel } from './generate.js';
import { Random } from './random.js';
import { ByteTokenizer, checkTokenizer } from './tokenizer.js';

/** Outcomes of one step: bytes 0-255, then the end of the text. */
export const END_OF_TEXT = 256;
export const BYTE_OUTCOMES = 257;

/** Probabilities of the 257 outcomes, summing to 1. */
export type ByteDistribution = Float64Array;

export interface ByteSession {
  /** The distribution of the next outcome given the prompt and every outcome pushed since. */
  next(): Promise<ByteDistribution>;
  /** Records the outcome that came (a byte, or END_OF_TEXT). */
  push(outcome: number): void;
  /**
   * Goes back to the state after the prompt and the first `pushed` outcomes (a source that looked
   * ahead along a guess that did not come).
   */
  rewind(pushed: number): void;
  /** Frees what the session holds (a KV cache, a pending request). */
  close(): void;
}

export interface ByteSource {
  readonly name: string;
  start(prompt: string): Promise<ByteSession>;
  /**
   * Teacher forcing: the distribution before each byte of `text` and before its end (bytes + 1 of
   * them), given the bytes before it (evaluation without one model run per byte).
   */
  score(text: string): Promise<ByteDistribution[]>;
}

/** Softmax over a byte-level model's logits row, restricted to bytes and EOS (BOS and PAD never come next). */
export function byteDistribution(logits: ArrayLike<number>, eosId: number): ByteDistribution {
  const out = new Float64Array(BYTE_OUTCOMES);
  let max = -Infinity;
  for (let b = 0; b < 256; b++) max = Math.max(max, logits[b] as number);
  max = Math.max(max, logits[eosId] as number);
  let sum = 0;
  for (let b = 0; b < 256; b++) sum += out[b] = Math.exp((logits[b] as number) - max);
  sum += out[END_OF_TEXT] = Math.exp((logits[eosId] as number) - max);
  for (let i = 0; i < BYTE_OUTCOMES; i++) out[i] = (out[i] as number) / sum;
  return out;
}

/** Throws unless `pushed` is a count of outcomes the session holds. */
export function checkRewind(pushed: number, held: number): void {
  if (!Number.isInteger(pushed) || pushed < 0 || pushed > held) {
    throw new Error(`cannot rewind to ${pushed} outcomes: the session holds ${held}`);
  }
}

/** A byte-level model (optionally with a LoRA adapter) as a source: one KV cache per session. */
export class ModelByteSource<C> implements ByteSource {
  private readonly tokenizer = new ByteTokenizer();

  constructor(
    readonly model: DecoderModel<C>,
    readonly name = 'edge',
    readonly lora?: LoraAdapter,
  ) {
    checkTokenizer(model.config, this.tokenizer);
  }

  start(prompt: string): Promise<ByteSession> {
    const { model, lora } = this;
    const maxPositions = model.config.max_position_embeddings;
    let pending = this.tokenizer.encode(prompt, { bos: true });
    /** Every token of the sequence: BOS, the prompt, then the pushed outcomes. */
    const sequence = [...pending];
    const promptTokens = sequence.length;
    let past = 0;
    let cache: C | undefined;
    let last: ByteDistribution | undefined;
    const session: ByteSession = {
      async next() {
        if (pending.length === 0 && last) return last;
        if (past + pending.length > maxPositions) {
          throw new Error(`the sequence outgrew the model's ${maxPositions} positions`);
        }
        const mask = [new Array<number>(past + pending.length).fill(1)];
        const out = await model.forward([pending], { attentionMask: mask, cache, lora });
        const V = model.config.vocab_size;
        const at = (pending.length - 1) * V;
        last = byteDistribution(out.logits.subarray(at, at + V), model.config.eos_token_id);
        cache = out.cache;
        past += pending.length;
        pending = [];
        return last;
      },
      push(outcome) {
        if (!Number.isInteger(outcome) || outcome < 0 || outcome > END_OF_TEXT) {
          throw new Error(`an outcome is a byte or END_OF_TEXT, not ${outcome}`);
        }
        const token = outcome === END_OF_TEXT ? model.config.eos_token_id : outcome;
        pending.push(token);
        sequence.push(token);
      },
      rewind(pushed) {
        checkRewind(pushed, sequence.length - promptTokens);
        // the cache has no cut: the kept sequence is run again at the next step
        sequence.length = promptTokens + pushed;
        pending = [...sequence];
        past = 0;
        cache = undefined;
        last = undefined;
      },
      close() {
        cache = undefined;
      },
    };
    return Promise.resolve(session);
  }

  async score(text: string): Promise<ByteDistribution[]> {
    const ids = this.tokenizer.encode(text, { bos: true });
    if (ids.length > this.model.config.max_position_embeddings) {
      throw new Error(
        `${ids.length - 1} bytes do not fit the model's ${this.model.config.max_position_embeddings} positions`,
      );
    }
    const out = await this.model.forward([ids], { attentionMask: [ids.map(() => 1)], lora: this.lora });
    const V = this.model.config.vocab_size;
    return ids.map((_, t) => byteDistribution(out.logits.subarray(t * V, (t + 1) * V), this.model.config.eos_token_id));
  }
}

export interface ByteGenerationOptions {
  maxBytes: number;
  /** 0 (default) is greedy. */
  temperature?: number;
  seed?: number;
  stop?: readonly string[];
  /** Called with each byte as it is chosen. */
  onByte?: (byte: number) => void;
}

export interface ByteGeneration {
  text: string;
  bytes: Uint8Array;
  finishReason: 'stop' | 'eos' | 'length';
}

/** Generates from any byte source: greedy or sampled, until EOS, a stop string or `maxBytes`. */
export async function generateBytes(
  source: ByteSource,
  prompt: string,
  options: ByteGenerationOptions,
): Promise<ByteGeneration> {
  const random = new Random(options.seed ?? 0);
  const temperature = options.temperature ?? 0;
  const session = await source.start(prompt);
  const bytes: number[] = [];
  const decoder = new TextDecoder();
  let finishReason: ByteGeneration['finishReason'] = 'length';
  try {
    while (bytes.length < options.maxBytes) {
      const p = await session.next();
      const outcome = chooseOutcome(p, { temperature }, random);
      session.push(outcome);
      if (outcome === END_OF_TEXT) {
        finishReason = 'eos';
        break;
      }
      bytes.push(outcome);
      options.onByte?.(outcome);
      const text = decoder.decode(Uint8Array.from(bytes));
      const hit = (options.stop ?? []).map((s) => text.indexOf(s)).filter((i) => i >= 0);
      if (hit.length > 0) {
        const cut = Math.min(...hit);
        return { text: text.slice(0, cut), bytes: new TextEncoder().encode(text.slice(0, cut)), finishReason: 'stop' };
      }
    }
  } finally {
    session.close();
  }
  return { text: decoder.decode(Uint8Array.from(bytes)), bytes: Uint8Array.from(bytes), finishReason };
}

function argmax(p: ByteDistribution): number {
  let best = 0;
  for (let i = 1; i < p.length; i++) if ((p[i] as number) > (p[best] as number)) best = i;
  return best;
}

/**
 * The next outcome from `p`: the most likely at temperature 0, otherwise a draw from `p` sharpened or
 * flattened by the temperature and cut to its nucleus (the most likely outcomes holding `topP` of the
 * mass).
 */
export function chooseOutcome(
  p: ByteDistribution,
  options: { temperature?: number; topP?: number },
  random: Random,
): number {
  const temperature = options.temperature ?? 0;
  if (temperature <= 0) return argmax(p);
  // relative to the most likely outcome, in log space: p^(1/T) underflows to 0 everywhere at small T
  const best = argmax(p);
  const top = Math.log(p[best] as number);
  const w = Array.from(p, (x) => (x > 0 ? Math.exp((Math.log(x) - top) / temperature) : 0));
  const total = w.reduce((a, b) => a + b, 0);
  const topP = options.topP ?? 1;
  let allowed: number[] = w.map((_, i) => i);
  if (topP < 1) {
    allowed = allowed.sort((a, b) => (w[b] as number) - (w[a] as number));
    let mass = 0;
    let keep = 0;
    while (keep < allowed.length && mass < topP * total) mass += w[allowed[keep++] as number] as number;
    allowed = allowed.slice(0, Math.max(1, keep));
  }
  let r = random.next() * allowed.reduce((s, i) => s + (w[i] as number), 0);
  for (const i of allowed) if ((r -= w[i] as number) <= 0) return i;
  return allowed[0] as number;
}
