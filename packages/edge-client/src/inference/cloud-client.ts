/**
 * Any OpenAI-compatible completions endpoint as a source of top-k log-probabilities, through the
 * official `openai` client: a greedy continuation with the top-k at each position (lookahead), or the
 * top-k at each token of a known text (echo, for evaluation). Failures (timeouts, 429, 5xx, refused
 * connections) open a circuit breaker that stops calling the cloud for a cooldown, then lets one probe
 * through; callers see `undefined`, never an exception, and carry on with the edge alone.
 *
 * Every text bound for the cloud passes the client's privacy guard (`withGuard` gives a view with
 * another guard over the same connection, breaker and counts): a blocked text is not sent and the call
 * answers as a failed one would, without counting against the cloud; a redacted one is sent redacted.
 */
import OpenAI from 'openai';
import { tokenTextBytes } from '@floe/model';
import type { CloudRoute, OutboundDecision, PrivacyGuard } from '../privacy/guard.js';
import type { CloudPosition, CloudToken, LivePositions } from './alignment.js';

export interface CloudClientOptions {
  /** e.g. http://127.0.0.1:8000/v1 */
  baseURL: string;
  apiKey: string;
  model: string;
  /** Top tokens per position (OpenAI allows at most 5 on some models, 20 on the stand-in). */
  topK?: number;
  /** A call that has not answered by then counts as a failure (ms, default 2000). */
  timeoutMs?: number;
  /** Consecutive failures that open the breaker (default 3). */
  failureThreshold?: number;
  /** How long the breaker stays open before a probe (ms, default 5000). */
  cooldownMs?: number;
  /** Token strings that mean the end of the text. */
  endTokens?: readonly string[];
  /** For tests: the clock. */
  now?: () => number;
}

export type BreakerState = 'closed' | 'open' | 'half-open';

/** closed -> (failures) -> open -> (cooldown) -> half-open: one probe -> closed or open again. */
export class CircuitBreaker {
  private failures = 0;
  private openedAt = 0;
  private probing = false;
  state: BreakerState = 'closed';

  constructor(
    private readonly threshold: number,
    private readonly cooldownMs: number,
    private readonly now: () => number,
  ) {}

  /** Whether a call may go out now (in half-open state, only one at a time). */
  allow(): boolean {
    if (this.state === 'open' && this.now() - this.openedAt >= this.cooldownMs) this.state = 'half-open';
    if (this.state === 'closed') return true;
    if (this.state === 'half-open' && !this.probing) {
      this.probing = true;
      return true;
    }
    return false;
  }

  success(): void {
    this.state = 'closed';
    this.failures = 0;
    this.probing = false;
  }

  /** A call abandoned by its caller: no verdict on the cloud, but a probe slot is free again. */
  abandon(): void {
    this.probing = false;
  }

  failure(): void {
    this.failures++;
    this.probing = false;
    if (this.state === 'half-open' || this.failures >= this.threshold) {
      this.state = 'open';
      this.openedAt = this.now();
    }
  }
}

export interface CloudStats {
  calls: number;
  failures: number;
  /** Calls not made because the breaker was open. */
  skipped: number;
  /** Calls not made because the privacy guard kept their text on the device. */
  blocked: number;
  /** Tokens the cloud generated or scored for us. */
  tokens: number;
}

/** The position after the cloud ended its text: the end, surely. */
const END_POSITION: CloudPosition = { token: 'end', top: [{ token: 'end', logprob: 0 }] };

/** Whether an answer of `positions` of at most `maxTokens` ended because the cloud ended the text (or hit a stop). */
function endsText(finish: string | null | undefined, positions: number, maxTokens: number): boolean {
  return finish === 'stop' && positions < maxTokens;
}

/** Why a stream ended. */
export type StreamEnd = 'stop' | 'length' | 'failed' | 'cancelled' | 'skipped' | 'blocked';

/**
 * A continuation streamed by the cloud: positions arrive as it decodes them. `changed()` resolves at
 * the next arrival or the end; `cancel()` closes the connection (the cloud stops decoding).
 */
export class CloudStream implements LivePositions {
  readonly positions: CloudPosition[] = [];
  endedBy: StreamEnd | undefined;
  readonly controller = new AbortController();
  private waiters: (() => void)[] = [];

  get ended(): boolean {
    return this.endedBy !== undefined;
  }

  changed(): Promise<void> {
    if (this.ended) return Promise.resolve();
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  cancel(): void {
    if (!this.ended) this.end('cancelled');
    this.controller.abort();
  }

  arrive(positions: readonly CloudPosition[]): void {
    if (this.ended || positions.length === 0) return;
    this.positions.push(...positions);
    this.wake();
  }

  end(reason: StreamEnd): void {
    if (this.ended) return;
    this.endedBy = reason;
    this.wake();
  }

  private wake(): void {
    const waiters = this.waiters;
    this.waiters = [];
    for (const w of waiters) w();
  }
}

/**
 * Aborts a streamed call that goes quiet: armed at the start and again at each chunk; `timedOut` tells
 * an abort of its own from the caller's.
 */
class QuietTimer {
  timedOut = false;
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly controller: AbortController,
    private readonly ms: number,
  ) {
    this.arm();
  }

  arm(): void {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.timedOut = true;
      this.controller.abort();
    }, this.ms);
  }

  stop(): void {
    clearTimeout(this.timer);
  }
}

interface LegacyLogprobs {
  tokens?: string[];
  token_logprobs?: (number | null)[];
  top_logprobs?: (Record<string, number> | null)[] | null;
}

/** What views of one cloud share: the connection, the breaker and the counts. */
interface CloudConnection {
  client: OpenAI;
  breaker: CircuitBreaker;
  stats: CloudStats;
}

export class CloudClient {
  readonly breaker: CircuitBreaker;
  readonly stats: CloudStats;
  private readonly client: OpenAI;
  private readonly topK: number;
  private readonly endTokens: Set<string>;

  constructor(
    private readonly options: CloudClientOptions,
    /** Checks every text bound for the cloud; none sends everything as it is, unlogged. */
    readonly guard?: PrivacyGuard,
    shared?: CloudConnection,
  ) {
    this.client =
      shared?.client ??
      new OpenAI({
        baseURL: options.baseURL,
        apiKey: options.apiKey,
        maxRetries: 0,
        timeout: options.timeoutMs ?? 2000,
      });
    this.topK = options.topK ?? 20;
    this.endTokens = new Set(options.endTokens ?? ['<|eos|>', '<|endoftext|>', '</s>']);
    this.breaker =
      shared?.breaker ??
      new CircuitBreaker(options.failureThreshold ?? 3, options.cooldownMs ?? 5000, options.now ?? (() => Date.now()));
    this.stats = shared?.stats ?? { calls: 0, failures: 0, skipped: 0, blocked: 0, tokens: 0 };
  }

  /** The same cloud (connection, breaker, counts) behind another guard, e.g. one per request. */
  withGuard(guard: PrivacyGuard): CloudClient {
    return new CloudClient(this.options, guard, { client: this.client, breaker: this.breaker, stats: this.stats });
  }

  /** The model id the client asks for. */
  get model(): string {
    return this.options.model;
  }

  /**
   * What of `text` may go out on `route` (all of it without a guard). `exact` routes need the text as
   * it is (scoring aligns the answer to its bytes), so a redaction there blocks instead.
   */
  private outbound(text: string, route: CloudRoute, exact = false): OutboundDecision {
    if (!this.guard) return { verdict: 'clean', kinds: [], text };
    const decision = this.guard.outbound(text, route, { exact });
    if (decision.text === undefined) this.stats.blocked++;
    return decision;
  }

  /**
   * Whether a call may go out: the breaker first (a call it skips sends nothing and is not logged),
   * then the guard. Returns the text to send, or why not.
   */
  private admit(
    text: string,
    route: CloudRoute,
    exact = false,
  ): { prompt: string } | { refused: 'skipped' | 'blocked' } {
    if (!this.breaker.allow()) {
      this.stats.skipped++;
      return { refused: 'skipped' };
    }
    const prompt = this.outbound(text, route, exact).text;
    if (prompt === undefined) {
      // a probe slot the breaker gave is free again: nothing was asked of the cloud
      this.breaker.abandon();
      return { refused: 'blocked' };
    }
    return { prompt };
  }

  /** A failure that says something about the cloud (not about our request): network, timeout, 408, 429, 5xx. */
  private static cloudFault(error: unknown): boolean {
    const status = (error as { status?: unknown }).status;
    return typeof status !== 'number' || status === 408 || status === 429 || status >= 500;
  }

  /** A failed call: counted, and held against the cloud only when it was the cloud's fault. */
  private failed(error: unknown): void {
    this.stats.failures++;
    if (CloudClient.cloudFault(error)) this.breaker.failure();
    else this.breaker.abandon();
  }

  /**
   * The largest cut at or before `cut` (a UTF-16 offset) that splits no personal data the guard sees in
   * `text`: a prefix sent to the cloud never carries half of a value.
   */
  safeCut(text: string, cut: number): number {
    return this.guard ? this.guard.safeCut(text, cut) : cut;
  }

  private token(text: string): CloudToken {
    return this.endTokens.has(text) ? 'end' : tokenTextBytes(text);
  }

  private positions(logprobs: LegacyLogprobs | null | undefined): CloudPosition[] {
    const tokens = logprobs?.tokens ?? [];
    return tokens.map((text, i) => {
      const top = logprobs?.top_logprobs?.[i] ?? {};
      const own = logprobs?.token_logprobs?.[i];
      // the token the cloud went on with counts among the candidates even when outside its top-k,
      // so that the text can follow it into the next position
      const entries =
        own != null && !(text in top) ? [...Object.entries(top), [text, own] as const] : Object.entries(top);
      return { token: this.token(text), top: entries.map(([t, logprob]) => ({ token: this.token(t), logprob })) };
    });
  }

  /** Runs one admitted call; undefined when it fails. */
  private async guarded<T>(call: () => Promise<T>): Promise<T | undefined> {
    this.stats.calls++;
    try {
      const result = await call();
      this.breaker.success();
      return result;
    } catch (error) {
      this.failed(error);
      return undefined;
    }
  }

  /** The cloud's greedy continuation of `prompt`, `maxTokens` positions with their top-k. */
  continuation(text: string, maxTokens: number): Promise<CloudPosition[] | undefined> {
    const admitted = this.admit(text, 'continuation');
    if (!('prompt' in admitted)) return Promise.resolve(undefined);
    const { prompt } = admitted;
    return this.guarded(async () => {
      const completion = await this.client.completions.create({
        model: this.options.model,
        prompt,
        max_tokens: maxTokens,
        temperature: 0,
        logprobs: this.topK,
      });
      const positions = this.positions(completion.choices[0]?.logprobs);
      if (endsText(completion.choices[0]?.finish_reason, positions.length, maxTokens)) positions.push(END_POSITION);
      this.stats.tokens += positions.length;
      return positions;
    });
  }

  /**
   * The cloud's greedy continuation of `prompt`, streamed: up to `maxTokens` positions with their
   * top-k, each usable as soon as it arrives. A stream that goes quiet for the client's timeout counts
   * as a failure, as do refusals and broken connections; a cancelled one says nothing about the cloud.
   */
  stream(text: string, maxTokens: number): CloudStream {
    const stream = new CloudStream();
    const admitted = this.admit(text, 'stream');
    if (!('prompt' in admitted)) {
      stream.end(admitted.refused);
      return stream;
    }
    const { prompt } = admitted;
    this.stats.calls++;
    const quiet = new QuietTimer(stream.controller, this.options.timeoutMs ?? 2000);
    void (async () => {
      try {
        const chunks = await this.client.completions.create(
          {
            model: this.options.model,
            prompt,
            max_tokens: maxTokens,
            temperature: 0,
            logprobs: this.topK,
            stream: true,
          },
          { signal: stream.controller.signal },
        );
        let finish: string | null | undefined;
        for await (const chunk of chunks) {
          quiet.arm();
          const choice = chunk.choices[0];
          const positions = this.positions(choice?.logprobs);
          this.stats.tokens += positions.length;
          stream.arrive(positions);
          finish = choice?.finish_reason ?? finish;
        }
        // the client's stream ends quietly when aborted after the headers came (a cancel or our
        // timeout), so an answer without its finish is judged below like any broken one
        if (!finish) throw new Error('the stream ended without a finish');
        quiet.stop();
        this.breaker.success();
        if (endsText(finish, stream.positions.length, maxTokens)) {
          stream.arrive([END_POSITION]);
          stream.end('stop');
        } else stream.end('length');
      } catch (error) {
        quiet.stop();
        // a stream its caller cancelled says nothing about the cloud, but frees a probe
        if (stream.controller.signal.aborted && !quiet.timedOut) {
          this.breaker.abandon();
          return;
        }
        this.failed(quiet.timedOut ? new Error('timed out') : error);
        stream.end('failed');
      }
    })();
    return stream;
  }

  /**
   * The cloud's own answer to `text`, streamed as text pieces (offloading: the cloud answers, the edge
   * does not fuse). Returns how it ended; a failure or a refusal ends it early without throwing, so the
   * caller can go on with the edge from what came. The pieces are the cloud's text as it is: placeholders
   * of a redacted prompt are the caller's to map back (`PrivacyGuard.restorer`).
   */
  async *answer(
    text: string,
    options: { maxTokens: number; temperature?: number; stop?: readonly string[]; signal?: AbortSignal | undefined },
  ): AsyncGenerator<string, StreamEnd> {
    if (options.signal?.aborted) return 'cancelled';
    const admitted = this.admit(text, 'completion');
    if (!('prompt' in admitted)) return admitted.refused;
    const { prompt } = admitted;
    // stop strings go out too: only those the guard finds nothing in, at most the 4 the API takes (the
    // caller applies every one on the device)
    const stop = (options.stop ?? []).filter((s) => !this.guard || !this.guard.scan(s).pii).slice(0, 4);
    this.stats.calls++;
    let verdict: StreamEnd | undefined;
    const controller = new AbortController();
    const abort = () => controller.abort();
    options.signal?.addEventListener('abort', abort, { once: true });
    const quiet = new QuietTimer(controller, this.options.timeoutMs ?? 2000);
    try {
      const chunks = await this.client.completions.create(
        {
          model: this.options.model,
          prompt,
          max_tokens: options.maxTokens,
          temperature: options.temperature ?? 0,
          stream: true,
          ...(stop.length > 0 ? { stop } : {}),
        },
        { signal: controller.signal },
      );
      let finish: string | null | undefined;
      for await (const chunk of chunks) {
        quiet.arm();
        const choice = chunk.choices[0];
        if (choice?.text) yield choice.text;
        finish = choice?.finish_reason ?? finish;
      }
      if (!finish) throw new Error('the stream ended without a finish');
      this.breaker.success();
      verdict = finish === 'length' ? 'length' : 'stop';
      return verdict;
    } catch (error) {
      if (controller.signal.aborted && !quiet.timedOut) {
        this.breaker.abandon();
        verdict = 'cancelled';
        return verdict;
      }
      this.failed(quiet.timedOut ? new Error('timed out') : error);
      verdict = 'failed';
      return verdict;
    } finally {
      quiet.stop();
      options.signal?.removeEventListener('abort', abort);
      // the caller stopped reading (a stop string, its byte limit): the cloud was answering, and the
      // rest of its answer is not wanted
      if (verdict === undefined) {
        this.breaker.success();
        controller.abort();
      }
    }
  }

  /**
   * The top-k at every token of `text` given the tokens before it (echo), and the cloud's own
   * log-likelihood of the text in nats (null where the endpoint gives none, e.g. the first token).
   */
  score(text: string): Promise<{ positions: CloudPosition[]; logprobs: (number | null)[] } | undefined> {
    if (!('prompt' in this.admit(text, 'score', true))) return Promise.resolve(undefined);
    return this.guarded(async () => {
      const completion = await this.client.completions.create({
        model: this.options.model,
        prompt: text,
        max_tokens: 0,
        echo: true,
        logprobs: this.topK,
      });
      const logprobs = completion.choices[0]?.logprobs as LegacyLogprobs | null;
      const positions = this.positions(logprobs);
      if (positions.every((p) => p.top.length === 0)) throw new Error('the cloud answered without logprobs');
      this.stats.tokens += positions.length;
      return { positions, logprobs: logprobs?.token_logprobs ?? [] };
    });
  }
}
