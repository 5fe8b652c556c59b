/**
 * Continuous batching over one ORT session (iteration-level scheduling, as Orca and vLLM do): every
 * running sequence advances by one token per decode step of the whole batch; a new request is
 * prefilled and joins the batch at the next step, and a finished one leaves it, so no request waits
 * for another's whole generation. Each row of the batch keeps its own left-padded part of the KV cache.
 *
 * Prefix caching (as vLLM's automatic prefix caching and hosted APIs' prompt caching): the cache rows
 * of recent sequences are kept with their tokens, and a prompt that starts with one of them is
 * prefilled from there on (a device asking again a few words further costs a few tokens, not the
 * whole text).
 */
import { type KvRow, type OrtKVCache, type OrtLlama, Random, headDim, sampleToken } from '@floe/model';

export interface TopToken {
  id: number;
  logprob: number;
}

/** One position: the token there, its log-probability under the model, and the model's top tokens. */
export interface TokenStep {
  token: number;
  logprob: number;
  top: TopToken[];
}

export interface SequenceSpec {
  /** Prompt token ids, BOS included when wanted; at least one token. */
  prompt: readonly number[];
  maxTokens: number;
  /** 0 is greedy. */
  temperature: number;
  topP: number;
  seed: number;
  /** How many top tokens each step reports (0-20). */
  topLogprobs: number;
  /** Also score the prompt's tokens (echo with logprobs). */
  promptLogprobs: boolean;
}

export type FinishReason = 'length' | 'eos' | 'cancelled' | 'error';

export type SequenceEvent =
  | { type: 'prompt'; steps: TokenStep[] }
  | { type: 'token'; step: TokenStep }
  | { type: 'end'; reason: FinishReason; error?: Error };

/** More sequences in one request than the queue can ever hold: retrying cannot help. */
export class RequestTooLargeError extends Error {}

export class QueueFullError extends Error {
  constructor(readonly retryAfterSeconds: number) {
    super('the server is at capacity');
  }
}

/** A submitted sequence: its events as an async iterable, and a way to stop it. */
export class Sequence implements AsyncIterable<SequenceEvent> {
  readonly random: Random;
  /** Tokens in this sequence's cache rows. */
  cached = 0;
  /** The sampled token not yet fed to the model. */
  pending: number | undefined;
  /** Tokens in the cache: the prompt, then the generated tokens fed back. */
  readonly tokens: number[];
  generated = 0;
  cancelled = false;
  private readonly events: SequenceEvent[] = [];
  private wake: (() => void) | undefined;
  private ended = false;

  constructor(readonly spec: SequenceSpec) {
    this.random = new Random(spec.seed);
    this.tokens = [...spec.prompt];
  }

  cancel(): void {
    this.cancelled = true;
  }

  push(event: SequenceEvent): void {
    if (this.ended) return;
    if (event.type === 'end') this.ended = true;
    this.events.push(event);
    this.wake?.();
  }

  get finished(): boolean {
    return this.ended;
  }

  async *[Symbol.asyncIterator](): AsyncIterator<SequenceEvent> {
    for (;;) {
      const event = this.events.shift();
      if (event) {
        yield event;
        if (event.type === 'end') return;
        continue;
      }
      await new Promise<void>((resolve) => (this.wake = resolve));
      this.wake = undefined;
    }
  }
}

export interface EngineOptions {
  /** Sequences decoded together (default 8). */
  maxBatch?: number;
  /** Sequences waiting for a place in the batch before requests are refused (default 64). */
  maxWaiting?: number;
  /** Prompt tokens prefilled in one run at most (default 2048). */
  maxPrefillTokens?: number;
  /** Sequences whose cache rows are kept for prompts that start the same way (default 16; 0: none). */
  prefixCacheEntries?: number;
  /** Called after each model run with the rows it held and its wall time. */
  onRun?: (kind: 'prefill' | 'decode', rows: number, seconds: number) => void;
  /** Called for each prompt prefilled, with its length and the tokens taken from the prefix cache. */
  onPrefill?: (promptTokens: number, cachedTokens: number) => void;
}

/** Shorter shared prefixes are prefilled again (a separate run costs more than a few tokens). */
const MIN_PREFIX = 8;

/** The first `length` positions of a cache row laid out per layer as [heads, positions, d]. */
function truncateRow(row: KvRow, length: number, d: number): KvRow {
  const cut = (data: Float32Array) => {
    const heads = data.length / (row.length * d);
    const out = new Float32Array(heads * length * d);
    for (let h = 0; h < heads; h++)
      out.set(data.subarray(h * row.length * d, (h * row.length + length) * d), h * length * d);
    return out;
  };
  return { keys: row.keys.map(cut), values: row.values.map(cut), length };
}

function sharedPrefix(a: readonly number[], b: readonly number[]): number {
  const n = Math.min(a.length, b.length);
  let i = 0;
  while (i < n && a[i] === b[i]) i++;
  return i;
}

export class BatchEngine {
  private readonly waiting: Sequence[] = [];
  private running: Sequence[] = [];
  /** Sequences taken from the queue whose prefill has not joined them to the batch yet. */
  private admitted: Sequence[] = [];
  private batch: { cache: OrtKVCache; mask: number[][] } | undefined;
  private looping = false;
  private readonly maxBatch: number;
  private readonly maxWaiting: number;
  private readonly maxPrefillTokens: number;
  /** Mean seconds per decode step, for Retry-After. */
  private stepSeconds = 0.01;
  /** Recent sequences' tokens and cache rows, most recent last. */
  private prefixes: { tokens: readonly number[]; row: KvRow }[] = [];

  constructor(
    readonly model: OrtLlama,
    private readonly options: EngineOptions = {},
  ) {
    this.maxBatch = options.maxBatch ?? 8;
    this.maxWaiting = options.maxWaiting ?? 64;
    this.maxPrefillTokens = options.maxPrefillTokens ?? 2048;
  }

  get runningCount(): number {
    return this.running.length;
  }

  get waitingCount(): number {
    return this.waiting.length;
  }

  /** Queues sequences together (all or none); throws QueueFullError when they do not fit. */
  submit(specs: readonly SequenceSpec[]): Sequence[] {
    if (specs.length > Math.max(this.maxWaiting, this.maxBatch)) {
      throw new RequestTooLargeError(
        `${specs.length} sequences in one request; this server queues at most ${Math.max(this.maxWaiting, this.maxBatch)}`,
      );
    }
    if (this.waiting.length + specs.length > this.maxWaiting) {
      const queued = this.waiting.reduce((n, s) => n + s.spec.maxTokens, 0);
      const retry = Math.ceil((queued / this.maxBatch) * this.stepSeconds) || 1;
      throw new QueueFullError(Math.min(60, retry));
    }
    const sequences = specs.map((spec) => {
      if (spec.prompt.length === 0) throw new Error('a sequence needs at least one prompt token');
      return new Sequence(spec);
    });
    this.waiting.push(...sequences);
    if (!this.looping) void this.loop();
    return sequences;
  }

  private async loop(): Promise<void> {
    this.looping = true;
    try {
      while (this.waiting.length > 0 || this.running.length > 0) {
        try {
          await this.tick();
        } catch (error) {
          const failure = error instanceof Error ? error : new Error(String(error));
          for (const s of [...this.running, ...this.admitted, ...this.waiting.splice(0)])
            s.push({ type: 'end', reason: 'error', error: failure });
          this.running = [];
          this.admitted = [];
          this.batch = undefined;
        }
      }
    } finally {
      this.looping = false;
    }
  }

  private async tick(): Promise<void> {
    this.dropFinished();
    this.admitted = this.admit();
    if (this.admitted.length > 0) {
      await this.prefill(this.admitted);
      this.admitted = [];
      this.dropFinished();
    }
    if (this.running.length > 0) await this.decode();
    // let I/O (new requests, cancellations, socket writes) in between model runs
    await new Promise<void>((resolve) => setImmediate(resolve));
  }

  private dropFinished(): void {
    for (const s of this.waiting) if (s.cancelled) s.push({ type: 'end', reason: 'cancelled' });
    this.waiting.splice(0, this.waiting.length, ...this.waiting.filter((s) => !s.finished));
    const keep = this.running.map((s) => {
      if (s.cancelled) s.push({ type: 'end', reason: 'cancelled' });
      return !s.finished;
    });
    if (keep.every(Boolean)) return;
    if (this.batch) {
      const batch = this.batch;
      this.running.forEach((s, i) => {
        if (!keep[i] && s.cached > 0)
          this.remember(s.tokens.slice(0, s.cached), this.model.cacheRow(batch.cache, i, s.cached));
      });
    }
    const rows = this.batch ? this.rowsOf(keep) : [];
    this.running = this.running.filter((_, i) => keep[i]);
    this.batch = rows.length > 0 ? this.model.stackRows(rows) : undefined;
  }

  private remember(tokens: readonly number[], row: KvRow): void {
    const capacity = this.options.prefixCacheEntries ?? 16;
    if (capacity <= 0 || tokens.length < MIN_PREFIX) return;
    // a row that extends another makes it useless
    this.prefixes = this.prefixes.filter((p) => sharedPrefix(p.tokens, tokens) < p.tokens.length);
    this.prefixes.push({ tokens, row });
    if (this.prefixes.length > capacity) this.prefixes.shift();
  }

  /** The longest kept prefix of `prompt` that leaves at least its last token to run. */
  private lookup(prompt: readonly number[]): { length: number; row: KvRow } | undefined {
    let best: { length: number; row: KvRow } | undefined;
    for (const p of this.prefixes) {
      const length = Math.min(sharedPrefix(p.tokens, prompt), prompt.length - 1);
      if (length >= MIN_PREFIX && length > (best?.length ?? 0)) best = { length, row: p.row };
    }
    return best;
  }

  /** The cache rows of the running sequences that `keep` marks. */
  private rowsOf(keep: readonly boolean[]): KvRow[] {
    const batch = this.batch as { cache: OrtKVCache };
    return this.running.flatMap((s, i) => (keep[i] ? [this.model.cacheRow(batch.cache, i, s.cached)] : []));
  }

  private admit(): Sequence[] {
    const admitted: Sequence[] = [];
    let width = 0;
    while (this.waiting.length > 0 && this.running.length + admitted.length < this.maxBatch) {
      const next = this.waiting[0] as Sequence;
      // a prefill run computes rows x its longest prompt positions, padding included
      const wider = Math.max(width, next.spec.prompt.length);
      if (admitted.length > 0 && (admitted.length + 1) * wider > this.maxPrefillTokens) break;
      width = wider;
      admitted.push(this.waiting.shift() as Sequence);
    }
    return admitted;
  }

  /**
   * Prefills the new prompts, emits their first tokens and joins them to the batch: those that start
   * with a kept prefix one by one from it, the others as one left-padded batch.
   */
  private async prefill(sequences: Sequence[]): Promise<void> {
    const joined: KvRow[] = [];
    const fresh: Sequence[] = [];
    const cachedFirst: Sequence[] = [];
    for (const s of sequences) {
      const hit = s.spec.promptLogprobs ? undefined : this.lookup(s.spec.prompt);
      if (!hit) fresh.push(s);
      else {
        joined.push(await this.prefillFrom(s, hit));
        cachedFirst.push(s);
      }
    }
    if (fresh.length > 0) joined.push(...(await this.prefillBatch(fresh)));
    // the batch is restacked once, its rows in the order of `running`
    const rows = this.running.length > 0 ? this.rowsOf(this.running.map(() => true)) : [];
    this.running.push(...cachedFirst, ...fresh);
    this.batch = this.model.stackRows([...rows, ...joined]);
  }

  /** Prefills a prompt from its cached prefix and emits its first token; returns its cache row. */
  private async prefillFrom(s: Sequence, hit: { length: number; row: KvRow }): Promise<KvRow> {
    const { prompt } = s.spec;
    const past = this.model.stackRows([truncateRow(hit.row, hit.length, headDim(this.model.config))]);
    const started = performance.now();
    const out = await this.model.forward([prompt.slice(hit.length)], {
      attentionMask: [new Array<number>(prompt.length).fill(1)],
      cache: past.cache,
    });
    this.options.onRun?.('prefill', 1, (performance.now() - started) / 1000);
    this.options.onPrefill?.(prompt.length, hit.length);
    const V = this.model.config.vocab_size;
    s.cached = prompt.length;
    const last = prompt.length - hit.length - 1;
    this.emit(s, out.logits.subarray(last * V, (last + 1) * V));
    return this.model.cacheRow(out.cache, 0, prompt.length);
  }

  /** Runs new prompts as one left-padded batch and emits their first tokens; returns their cache rows. */
  private async prefillBatch(sequences: Sequence[]): Promise<KvRow[]> {
    const width = Math.max(...sequences.map((s) => s.spec.prompt.length));
    const pad = this.model.config.pad_token_id;
    const ids = sequences.map((s) => [...new Array<number>(width - s.spec.prompt.length).fill(pad), ...s.spec.prompt]);
    const mask = sequences.map((s) => [
      ...new Array<number>(width - s.spec.prompt.length).fill(0),
      ...new Array<number>(s.spec.prompt.length).fill(1),
    ]);
    const started = performance.now();
    const out = await this.model.forward(ids, { attentionMask: mask });
    this.options.onRun?.('prefill', sequences.length, (performance.now() - started) / 1000);
    for (const s of sequences) this.options.onPrefill?.(s.spec.prompt.length, 0);
    const V = this.model.config.vocab_size;
    return sequences.map((s, b) => {
      const { prompt } = s.spec;
      const at = (t: number) => out.logits.subarray((b * width + t) * V, (b * width + t + 1) * V);
      if (s.spec.promptLogprobs) {
        const steps: TokenStep[] = [];
        for (let t = width - prompt.length; t < width - 1; t++) {
          steps.push(scoreToken(at(t), ids[b]![t + 1]!, s.spec.topLogprobs));
        }
        s.push({ type: 'prompt', steps });
      }
      s.cached = prompt.length;
      this.emit(s, at(width - 1));
      return this.model.cacheRow(out.cache, b, prompt.length);
    });
  }

  /** One token for every running sequence (each has one pending: the finished have left the batch). */
  private async decode(): Promise<void> {
    const batch = this.batch as { cache: OrtKVCache; mask: number[][] };
    const ids = this.running.map((s) => [s.pending as number]);
    for (const s of this.running) s.tokens.push(s.pending as number);
    const mask = batch.mask.map((row) => [...row, 1]);
    const started = performance.now();
    const out = await this.model.forward(ids, { attentionMask: mask, cache: batch.cache });
    const seconds = (performance.now() - started) / 1000;
    this.stepSeconds = 0.9 * this.stepSeconds + 0.1 * seconds;
    this.options.onRun?.('decode', this.running.length, seconds);
    this.batch = { cache: out.cache, mask };
    const V = this.model.config.vocab_size;
    this.running.forEach((s, b) => {
      s.cached++;
      s.pending = undefined;
      this.emit(s, out.logits.subarray(b * V, (b + 1) * V));
    });
  }

  /** Samples the next token from `logits` and reports it, or ends the sequence. */
  private emit(s: Sequence, logits: Float32Array): void {
    if (s.generated >= s.spec.maxTokens || s.cancelled) {
      s.push({ type: 'end', reason: s.cancelled ? 'cancelled' : 'length' });
      return;
    }
    const { config } = this.model;
    const token = sampleToken(logits, config, { temperature: s.spec.temperature, topP: s.spec.topP }, s.random);
    s.generated++;
    s.push({ type: 'token', step: scoreToken(logits, token, s.spec.topLogprobs) });
    if (token === config.eos_token_id) s.push({ type: 'end', reason: 'eos' });
    else if (s.generated >= s.spec.maxTokens || s.cached + 1 >= config.max_position_embeddings) {
      s.push({ type: 'end', reason: 'length' });
    } else s.pending = token;
  }
}

/** log p(token) and the `k` most likely tokens under the softmax of `logits`. */
export function scoreToken(logits: Float32Array, token: number, k: number): TokenStep {
  let max = -Infinity;
  for (let v = 0; v < logits.length; v++) if ((logits[v] as number) > max) max = logits[v] as number;
  let sum = 0;
  for (let v = 0; v < logits.length; v++) sum += Math.exp((logits[v] as number) - max);
  const logZ = max + Math.log(sum);
  const top: TopToken[] = [];
  if (k > 0) {
    for (let v = 0; v < logits.length; v++) {
      const logit = logits[v] as number;
      if (top.length === k && logit <= (top[k - 1] as TopToken).logprob) continue;
      let at = top.length;
      while (at > 0 && (top[at - 1] as TopToken).logprob < logit) at--;
      top.splice(at, 0, { id: v, logprob: logit });
      if (top.length > k) top.pop();
    }
    for (const t of top) t.logprob -= logZ;
  }
  return { token, logprob: (logits[token] as number) - logZ, top };
}
