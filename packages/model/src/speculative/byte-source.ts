/**
 * The edge model as a byte source on the decode engine, with speculative decoding: each model run
 * checks the bytes a drafter guesses will come next, so while the guesses hold, the distributions of
 * the following positions are already known and the session answers without running the model.
 * Exact: every distribution is the model's own given the bytes actually pushed (a rejected guess is
 * cut from the cache), whatever chooses the bytes (greedy, sampling, fusion with a cloud).
 */
import type { LoraAdapter } from '@floe/shared';
import {
  type ByteDistribution,
  type ByteSession,
  type ByteSource,
  END_OF_TEXT,
  byteDistribution,
  checkRewind,
} from '../next-byte.js';
import type { DecodeBatch, OrtDecoder } from '../ort/decoder.js';
import { ByteTokenizer, checkTokenizer } from '../tokenizer.js';
import type { ByteDrafter } from './ngram-drafter.js';

export interface SpeculativeOptions {
  lora?: LoraAdapter | undefined;
  /** Guesses the next bytes; without one, a run per byte. */
  drafter?: ByteDrafter | undefined;
  /** Bytes guessed per run at most (default 4: a run's cost grows with its length, see decision 0020). */
  draftLength?: number;
  name?: string;
}

export interface SpeculationStats {
  /** Model runs. */
  runs: number;
  /** Outcomes pushed. */
  pushed: number;
  /** Guessed bytes that came. */
  accepted: number;
  /** Guessed bytes. */
  drafted: number;
}

/** The model's output of one run: distributions after the pending tokens and after each draft. */
interface Speculation {
  drafts: number[];
  logits: Float32Array;
  /** Row of `logits` holding the distribution after the pending tokens. */
  firstRow: number;
  /** Drafts that came so far. */
  used: number;
  cached: (ByteDistribution | undefined)[];
}

export class SpeculativeByteSource implements ByteSource {
  readonly name: string;
  readonly stats: SpeculationStats = { runs: 0, pushed: 0, accepted: 0, drafted: 0 };
  private readonly tokenizer = new ByteTokenizer();
  private readonly draftLength: number;

  constructor(
    readonly decoder: OrtDecoder,
    readonly options: SpeculativeOptions = {},
  ) {
    checkTokenizer(decoder.config, this.tokenizer);
    this.name = options.name ?? 'edge';
    this.draftLength = options.draftLength ?? 4;
    if (!Number.isInteger(this.draftLength) || this.draftLength < 0) {
      throw new Error(`draftLength must be a non-negative integer, got ${this.draftLength}`);
    }
  }

  start(prompt: string): Promise<ByteSession> {
    const { decoder, options, stats, draftLength } = this;
    const config = decoder.config;
    const vocab = config.vocab_size;
    let batch: DecodeBatch | undefined = decoder.batch(1);
    const history = [...new TextEncoder().encode(prompt)];
    const promptBytes = history.length;
    let pending = this.tokenizer.encode(prompt, { bos: true });
    const promptTokens = [...pending];
    /** Tokens pushed after the prompt. */
    const pushed: number[] = [];
    let speculation: Speculation | undefined;

    const distribution = (s: Speculation): ByteDistribution => {
      const row = s.firstRow + s.used;
      return (s.cached[s.used] ??= byteDistribution(
        s.logits.subarray(row * vocab, (row + 1) * vocab),
        config.eos_token_id,
      ));
    };

    const session: ByteSession = {
      async next() {
        if (!batch) throw new Error('the session is closed');
        if (speculation && pending.length === 0) return distribution(speculation);
        const length = batch.lengths[0] as number;
        const room = batch.maxLength - length - pending.length;
        if (room < 0) throw new Error(`the sequence outgrew the model's ${batch.maxLength} positions`);
        const drafts =
          options.drafter && draftLength > 0 ? options.drafter.draft(history, Math.min(draftLength, room)) : [];
        const logits = await batch.append([[...pending, ...drafts]], options.lora);
        stats.runs++;
        stats.drafted += drafts.length;
        speculation = { drafts, logits, firstRow: pending.length - 1, used: 0, cached: [] };
        pending = [];
        return distribution(speculation);
      },
      push(outcome) {
        if (!Number.isInteger(outcome) || outcome < 0 || outcome > END_OF_TEXT) {
          throw new Error(`an outcome is a byte or END_OF_TEXT, not ${outcome}`);
        }
        if (!batch) throw new Error('the session is closed');
        stats.pushed++;
        const token = outcome === END_OF_TEXT ? config.eos_token_id : outcome;
        if (outcome !== END_OF_TEXT) history.push(outcome);
        pushed.push(token);
        if (speculation && pending.length === 0) {
          if (speculation.used < speculation.drafts.length && speculation.drafts[speculation.used] === token) {
            speculation.used++;
            stats.accepted++;
            return;
          }
          const rejected = speculation.drafts.length - speculation.used;
          batch.truncate(0, (batch.lengths[0] as number) - rejected);
          speculation = undefined;
        }
        pending.push(token);
      },
      rewind(count) {
        if (!batch) throw new Error('the session is closed');
        checkRewind(count, pushed.length);
        // the cache holds the sequence's start, then pending drafts; the kept part ends before the
        // target's last token, which runs again for the distribution after it
        const keep = Math.min(batch.lengths[0] as number, promptTokens.length + count - 1);
        batch.truncate(0, keep);
        pushed.length = count;
        pending = [...promptTokens, ...pushed].slice(keep);
        speculation = undefined;
        history.length = promptBytes + pushed.filter((t) => t !== config.eos_token_id).length;
      },
      close() {
        batch = undefined;
        speculation = undefined;
      },
    };
    return Promise.resolve(session);
  }

  async score(text: string): Promise<ByteDistribution[]> {
    const ids = this.tokenizer.encode(text, { bos: true });
    const config = this.decoder.config;
    if (ids.length > config.max_position_embeddings) {
      throw new Error(`${ids.length - 1} bytes do not fit the model's ${config.max_position_embeddings} positions`);
    }
    const logits = await this.decoder.batch(1, ids.length).append([ids], this.options.lora);
    const V = config.vocab_size;
    return ids.map((_, t) => byteDistribution(logits.subarray(t * V, (t + 1) * V), config.eos_token_id));
  }
}
