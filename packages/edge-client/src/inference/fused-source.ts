/**
 * The edge model fused with a cloud LLM under a real-time budget, as a ByteSource.
 *
 * - Lookahead, streamed: one cloud call streams a greedy continuation of `lookahead` tokens with the
 *   top-k at each; CloudAlignment reads each position as it arrives and serves while the emitted
 *   bytes follow the cloud's tokens (the fused choice agrees with the cloud's far more often than with
 *   the edge's: decision 0021). A call is made again only when the text has left the continuation.
 * - Pipelining: the edge checks the cloud's continuation as it arrives, several bytes per model run,
 *   through a ContinuationDrafter given to its speculative source; edge compute overlaps the stream.
 * - Deadline: a byte waits at most `deadlineMs` for the cloud's next position; then it comes from the
 *   edge alone. A call runs on (its answer still serves if the edge's bytes match it).
 * - Speed floor (`minSpeedShare`): waiting stops when fused generation would fall below that share of
 *   the edge's own speed, counted over the source's lifetime.
 * - Uncertainty gate: positions where the edge is sure (entropy below `gateBits`) do not consult the
 *   cloud.
 * - Token boundary: a call asks from the last space before the current byte and replays the bytes
 *   since, so the cloud never sees a prompt cut inside one of its tokens.
 * - Failures: the CloudClient's breaker turns timeouts, 429 and 5xx into edge-only bytes, never errors.
 */
import {
  BYTE_OUTCOMES,
  type ByteDistribution,
  type ByteDrafter,
  type ByteSession,
  type ByteSource,
  END_OF_TEXT,
  checkRewind,
} from '@floe/model';
import { CloudAlignment, alignScoredText } from './alignment.js';
import type { CloudClient, CloudStream } from './cloud-client.js';
import { type FusionOptions, entropyBits, fuse } from './fusion.js';

export interface FusedOptions {
  fusion: FusionOptions;
  /** Tokens per cloud call (default 48; 1 is a call per token, no lookahead). */
  lookahead?: number;
  /** Longest a byte waits for the cloud (ms, default 25). */
  deadlineMs?: number;
  /**
   * Keep at least this share of the edge's own speed (0-1, default 0.5; 0: only the deadline bounds
   * waits). A new call is asked that many edge bytes ahead of the text, so the edge computes while it
   * flies, and a byte stops waiting once the time spent in this source would exceed the edge's compute
   * divided by it (counted over the source's life).
   */
  minSpeedShare?: number;
  /** Consult the cloud only where the edge's entropy is at least this many bits (default 0: always). */
  gateBits?: number;
  /** How far back (bytes) a call may move to the last space (default 32). */
  maxBackup?: number;
  /** Edge distributions computed ahead of the text at most (default 128). */
  maxAhead?: number;
  /** Told the cloud's continuation, so the edge's speculative source checks it in batched runs. */
  drafter?: ContinuationDrafter;
}

const DEFAULT_SPEED_SHARE = 0.5;

export interface FusedStats {
  /** Bytes produced. */
  positions: number;
  /** Bytes whose distribution used the cloud. */
  fused: number;
  /** Bytes the gate kept on the edge. */
  gated: number;
  /** Bytes that wanted the cloud but had no answer in time (deadline, speed floor, failure, breaker open). */
  fellBack: number;
  /** Milliseconds each byte that consulted the cloud waited for it. */
  waits: number[];
}

export function emptyStats(): FusedStats {
  return { positions: 0, fused: 0, gated: 0, fellBack: 0, waits: [] };
}

/**
 * Drafts the bytes of the cloud's continuation for a speculative edge source while the text follows
 * it, and otherwise asks its fallback (e.g. an n-gram drafter).
 */
export class ContinuationDrafter implements ByteDrafter {
  private expected: readonly number[] = [];

  constructor(private readonly fallback?: ByteDrafter) {}

  /** The whole text the cloud expects: what came before its continuation, then the continuation. */
  expect(text: readonly number[]): void {
    this.expected = text;
  }

  draft(context: readonly number[], count: number): number[] {
    const { expected } = this;
    const n = context.length;
    if (n < expected.length) {
      // the contexts share everything before the last few bytes (same session): compare those
      let same = true;
      for (let i = Math.max(0, n - 16); i < n && same; i++) same = context[i] === expected[i];
      if (same) return expected.slice(n, n + count);
    }
    return this.fallback?.draft(context, count) ?? [];
  }
}

interface Call {
  stream: CloudStream;
  /** Bytes of the text its prompt holds (prompt + generated, cut at a space). */
  boundary: number;
  /** The prompt's bytes followed by the cloud's continuation as it arrives. */
  expected: number[];
  /** Stream positions already appended to `expected`. */
  seen: number;
  sentAt: number;
  /** Set once the text has reached the boundary. */
  alignment: CloudAlignment | undefined;
}

/** An edge distribution computed ahead of the text, and the byte the edge itself would pick there. */
interface Ahead {
  edge: ByteDistribution;
  base: ByteDistribution | undefined;
  byte: number;
}

const ONE_HOT: ByteDistribution[] = Array.from({ length: 256 }, (_, b) => {
  const d = new Float64Array(BYTE_OUTCOMES);
  d[b] = 1;
  return d;
});

function argmax(p: ByteDistribution): number {
  let best = 0;
  for (let i = 1; i < p.length; i++) if ((p[i] as number) > (p[best] as number)) best = i;
  return best;
}

/** Exponentially weighted mean; undefined until observed. */
class Mean {
  value: number | undefined;
  observe(x: number): void {
    this.value = this.value === undefined ? x : 0.9 * this.value + 0.1 * x;
  }
}

export class FusedByteSource implements ByteSource {
  readonly name: string;
  readonly stats: FusedStats = emptyStats();
  /** Bytes produced and time spent in next() and push() (ms), for the speed floor. */
  private readonly clock = { bytes: 0, totalMs: 0 };
  /** Edge milliseconds per byte, and milliseconds from a call to its first position. */
  private readonly edgeStep = new Mean();
  private readonly firstPosition = new Mean();

  constructor(
    private readonly edge: ByteSource,
    private readonly cloud: CloudClient,
    private readonly options: FusedOptions,
    /** The base edge model, for proxy-tuning. */
    private readonly edgeBase?: ByteSource,
  ) {
    this.name = `fused-${options.fusion.mode}`;
    if (options.fusion.mode === 'proxy' && !edgeBase) throw new Error('proxy-tuning needs the base edge source');
    const share = options.minSpeedShare ?? DEFAULT_SPEED_SHARE;
    if (!(share >= 0 && share < 1)) throw new Error(`minSpeedShare is a share in [0, 1), got ${share}`);
  }

  async start(prompt: string): Promise<ByteSession> {
    const { options, cloud, stats, clock, edgeStep, firstPosition } = this;
    const lookahead = options.lookahead ?? 48;
    const deadlineMs = options.deadlineMs ?? 25;
    const gateBits = options.gateBits ?? 0;
    const maxBackup = options.maxBackup ?? 32;
    const minSpeedShare = options.minSpeedShare ?? DEFAULT_SPEED_SHARE;
    const maxAhead = options.maxAhead ?? 128;
    const drafter = options.drafter;
    const edge = await this.edge.start(prompt);
    const base = this.edgeBase ? await this.edgeBase.start(prompt) : undefined;
    const promptLength = new TextEncoder().encode(prompt).length;
    const text: number[] = [...new TextEncoder().encode(prompt)];
    /** Edge distributions before each emitted byte (to replay them into a new call's alignment). */
    const history: ByteDistribution[] = [];
    /**
     * The edge's distributions from the current byte on, along its own picks: the edge session holds
     * every pick but the last entry's.
     */
    let ahead: Ahead[] = [];
    /** Calls by boundary: at most one beyond the text (asked ahead), the rest serving or stale. */
    let calls: Call[] = [];
    let closed = false;

    const spread = (i: number): ByteDistribution =>
      i < promptLength
        ? (ONE_HOT[text[i] as number] as ByteDistribution)
        : (history[i - promptLength] as ByteDistribution);

    /** One more edge distribution ahead, along the edge's own pick. */
    const draftOne = async () => {
      const started = performance.now();
      const last = ahead[ahead.length - 1];
      if (last) {
        edge.push(last.byte);
        base?.push(last.byte);
      }
      const e = await edge.next();
      const b = base ? await base.next() : undefined;
      ahead.push({ edge: e, base: b, byte: argmax(e) });
      edgeStep.observe(performance.now() - started);
      if (closed) throw new Error('the session is closed');
    };

    /** The text's bytes from `from` on, with the edge's picks ahead of it. */
    const predicted = (upTo: number) => [...text, ...ahead.slice(0, upTo - text.length).map((a) => a.byte)];

    /** A call from the last space at or before `at` (the text plus the edge's picks up to there). */
    const ask = (at: number): Call => {
      const bytes = predicted(at);
      let boundary = bytes.length;
      for (let i = bytes.length - 1; i >= Math.max(0, bytes.length - maxBackup); i--) {
        if (bytes[i] === 0x20) {
          boundary = i;
          break;
        }
      }
      const prefix = bytes.slice(0, boundary);
      const stream = cloud.stream(new TextDecoder().decode(Uint8Array.from(prefix)), lookahead);
      const call: Call = {
        stream,
        boundary,
        expected: prefix,
        seen: 0,
        sentAt: performance.now(),
        alignment: undefined,
      };
      void stream.changed().then(() => {
        if (stream.positions.length > 0) firstPosition.observe(performance.now() - call.sentAt);
      });
      calls.push(call);
      activate();
      return call;
    };

    /** Starts the alignment of calls the text has reached, replaying the bytes since their boundary. */
    const activate = () => {
      for (const call of calls) {
        if (call.alignment || call.boundary > text.length) continue;
        call.alignment = new CloudAlignment(call.stream.positions, call.stream);
        for (let i = call.boundary; i < text.length; i++) call.alignment.push(text[i] as number, spread(i));
      }
      // a newer serving call makes the older ones useless
      const newest = calls.filter((c) => c.alignment).at(-1);
      for (const c of calls) if (c.alignment && c !== newest) c.stream.cancel();
      calls = calls.filter((c) => !c.alignment || c === newest);
    };

    /** Extends the call's expected text with the positions that arrived, and tells the drafter. */
    const follow = (call: Call) => {
      const { positions } = call.stream;
      if (call.seen === positions.length) return;
      for (; call.seen < positions.length; call.seen++) {
        const token = positions[call.seen]!.token;
        if (token === undefined || token === 'end') break;
        for (const byte of token) call.expected.push(byte);
      }
      call.seen = positions.length;
      drafter?.expect(call.expected);
    };

    /**
     * Whether a new call would tell more than this one: it failed, or the text left its continuation
     * and has passed a space since the call's boundary (a call from the same boundary would say the
     * same; until the next one, the top-k's other tokens carry the word, then the edge).
     */
    const stale = (call: Call) => {
      if (call.stream.endedBy === 'failed' || call.stream.endedBy === 'skipped') return true;
      if (!call.alignment?.settle() || call.alignment.onContinuation) return false;
      return text.lastIndexOf(0x20) > call.boundary;
    };

    /**
     * How many of the edge's own bytes to emit while a new call flies: enough that waiting for it
     * leaves the edge `minSpeedShare` of its speed (none when there is no floor).
     */
    const askAhead = () => {
      if (minSpeedShare === 0 || edgeStep.value === undefined || firstPosition.value === undefined) return 0;
      return Math.min(maxAhead, Math.round((minSpeedShare * firstPosition.value) / Math.max(edgeStep.value, 1e-3)));
    };

    /**
     * Milliseconds a byte may still wait under the speed floor: the edge alone would have taken its
     * per-byte time for every byte so far (the mean of its steps here, which includes whatever the
     * machine's load adds to them).
     */
    const floorLeft = (started: number) =>
      minSpeedShare > 0
        ? ((clock.bytes + 1) * (edgeStep.value ?? 0)) / minSpeedShare - (clock.totalMs + (performance.now() - started))
        : Infinity;

    return {
      async next() {
        if (closed) throw new Error('the session is closed');
        const started = performance.now();
        const finish = (d: ByteDistribution) => {
          clock.totalMs += performance.now() - started;
          return d;
        };
        if (ahead.length === 0) await draftOne();
        const { edge: e, base: b } = ahead[0] as Ahead;
        stats.positions++;
        if (gateBits > 0 && entropyBits(e) < gateBits) {
          stats.gated++;
          return finish(e);
        }
        let serving = calls.find((c) => c.alignment);
        if (calls.some((c) => !c.alignment)) {
          // a call asked ahead is in flight: the bytes before its boundary are the edge's, as predicted
          stats.fellBack++;
          return finish(e);
        }
        if (!serving || stale(serving)) {
          const skip = askAhead();
          while (ahead.length < skip + 1 && ahead.at(-1)?.byte !== END_OF_TEXT) await draftOne();
          const call = ask(text.length + Math.min(skip, ahead.length - 1));
          if (!call.alignment) {
            stats.fellBack++;
            return finish(e);
          }
          serving = call;
        }
        follow(serving);
        const alignment = serving.alignment as CloudAlignment;
        const ready = performance.now();
        // wait for the cloud within the deadline and the floor, computing ahead on the edge meanwhile
        while (!alignment.settle()) {
          const left = Math.min(deadlineMs - (performance.now() - ready), floorLeft(started));
          if (left <= 0) break;
          // a step started now must end within the wait: a byte waits at most the deadline plus one step
          if (left > (edgeStep.value ?? 0) && ahead.length < maxAhead && ahead.at(-1)?.byte !== END_OF_TEXT) {
            await draftOne();
            continue;
          }
          let timer: NodeJS.Timeout | undefined;
          await Promise.race([serving.stream.changed(), new Promise<void>((r) => (timer = setTimeout(r, left)))]);
          clearTimeout(timer);
          if (closed) throw new Error('the session is closed');
        }
        stats.waits.push(performance.now() - ready);
        follow(serving);
        if (!alignment.ready || alignment.knownShare === 0) {
          stats.fellBack++;
          return finish(e);
        }
        stats.fused++;
        return finish(fuse(options.fusion, e, alignment.distribution(e), b));
      },
      push(outcome) {
        const current = ahead[0];
        if (!current) throw new Error('push follows next');
        const started = performance.now();
        const pushed = text.length - promptLength;
        if (ahead.length === 1) {
          edge.push(outcome);
          base?.push(outcome);
          ahead = [];
        } else if (outcome === current.byte) ahead.shift();
        else {
          edge.rewind(pushed);
          base?.rewind(pushed);
          edge.push(outcome);
          base?.push(outcome);
          ahead = [];
        }
        history.push(current.edge);
        for (const call of calls) {
          if (call.alignment) call.alignment.push(outcome, current.edge);
          else if (call.expected[text.length] !== outcome) call.stream.cancel();
        }
        calls = calls.filter((c) => c.alignment || c.stream.endedBy !== 'cancelled');
        clock.bytes++;
        if (outcome !== END_OF_TEXT) {
          text.push(outcome);
          activate();
        }
        clock.totalMs += performance.now() - started;
      },
      rewind(count) {
        checkRewind(count, history.length);
        for (const call of calls) call.stream.cancel();
        calls = [];
        ahead = [];
        edge.rewind(count);
        base?.rewind(count);
        history.length = count;
        text.length = Math.min(text.length, promptLength + count);
      },
      close() {
        closed = true;
        for (const call of calls) call.stream.cancel();
        calls = [];
        edge.close();
        base?.close();
      },
    };
  }

  /**
   * Teacher-forced fused distributions over a known text: one echo call gives the cloud's top-k at
   * each of its tokens; without an answer every position is the edge's.
   */
  async score(text: string): Promise<ByteDistribution[]> {
    const edge = await this.edge.score(text);
    const base = this.edgeBase ? await this.edgeBase.score(text) : undefined;
    const scored = await this.cloud.score(text);
    this.stats.positions += edge.length;
    if (!scored) {
      this.stats.fellBack += edge.length;
      return edge;
    }
    const cloud = alignScoredText(scored.positions, new TextEncoder().encode(text), (t) => edge[t]!);
    return edge.map((e, t) => {
      const c = cloud[t];
      if (!c) {
        this.stats.fellBack++;
        return e;
      }
      this.stats.fused++;
      return fuse(this.options.fusion, e, c, base?.[t]);
    });
  }
}
