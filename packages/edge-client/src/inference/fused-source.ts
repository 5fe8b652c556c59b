/**
 * The edge model fused with a cloud LLM under a real-time budget, as a ByteSource.
 *
 * - Lookahead, streamed: one cloud call streams a greedy continuation of `lookahead` tokens with the
 *   top-k at each; CloudAlignment reads each position as it arrives and serves while the emitted
 *   bytes follow the cloud's tokens (the fused choice agrees with the cloud's far more often than with
 *   the edge's: decision 0021). A call is made again only when the text has left the continuation.
 * - Pipelining: the edge checks the cloud's continuation as it arrives, several bytes per model run,
 *   through a ContinuationDrafter given to its speculative source. (Computing ahead along the edge's
 *   own picks while a byte waits was tried and removed: no faster, and a late step overran deadlines.)
 * - Deadline: a byte that waits for the cloud takes at most `deadlineMs`, its edge step included; then
 *   it comes from the edge alone. A call runs on (its answer still serves if the edge's bytes match it).
 * - Speed floor (`minSpeedShare`, off by default): waits stop once generation would fall below that
 *   share of the edge's own speed, counted over the source's life. Every fused byte needs the cloud,
 *   so fusing costs speed: decision 0021 has the measured trade-off.
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
  /** Longest a byte takes when it waits for the cloud, its edge step included (ms, default 25). */
  deadlineMs?: number;
  /**
   * Keep at least this share of the edge's own speed (0-1, default 0: only the deadline bounds waits):
   * a byte stops waiting once the time spent in this source would exceed the edge's own time for the
   * bytes so far divided by it.
   */
  minSpeedShare?: number;
  /** Consult the cloud only where the edge's entropy is at least this many bits (default 0: always). */
  gateBits?: number;
  /** How far back (bytes) a call may move to the last space (default 32). */
  maxBackup?: number;
  /** Told the cloud's continuation, so the edge's speculative source checks it in batched runs. */
  drafter?: ContinuationDrafter;
}

export interface FusedStats {
  /** Bytes produced. */
  positions: number;
  /** Bytes whose distribution used the cloud. */
  fused: number;
  /** Bytes the gate kept on the edge. */
  gated: number;
  /** Bytes that wanted the cloud but had no answer in time (deadline, speed floor, failure, breaker open). */
  fellBack: number;
  /** Bytes that wanted the cloud but whose text the privacy guard kept on the device. */
  blocked: number;
  /** Milliseconds each byte that consulted the cloud waited for it. */
  waits: number[];
}

export function emptyStats(): FusedStats {
  return { positions: 0, fused: 0, gated: 0, fellBack: 0, blocked: 0, waits: [] };
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
  alignment: CloudAlignment;
  /** Bytes of the text its prompt holds (prompt + generated, cut at a space). */
  boundary: number;
  /** The prompt's bytes followed by the cloud's continuation as it arrives. */
  expected: number[];
  /** Stream positions already appended to `expected`. */
  seen: number;
}

const ONE_HOT: ByteDistribution[] = Array.from({ length: 256 }, (_, b) => {
  const d = new Float64Array(BYTE_OUTCOMES);
  d[b] = 1;
  return d;
});

export class FusedByteSource implements ByteSource {
  readonly name: string;
  readonly stats: FusedStats = emptyStats();
  /** Time spent in next() and push(), and of it in the edge's own steps (ms), for the speed floor. */
  private readonly clock = { totalMs: 0, edgeMs: 0 };

  constructor(
    private readonly edge: ByteSource,
    private readonly cloud: CloudClient,
    private readonly options: FusedOptions,
    /** The base edge model, for proxy-tuning. */
    private readonly edgeBase?: ByteSource,
  ) {
    this.name = `fused-${options.fusion.mode}`;
    if (options.fusion.mode === 'proxy' && !edgeBase) throw new Error('proxy-tuning needs the base edge source');
    const share = options.minSpeedShare ?? 0;
    if (!(share >= 0 && share < 1)) throw new Error(`minSpeedShare is a share in [0, 1), got ${share}`);
  }

  async start(prompt: string): Promise<ByteSession> {
    const { options, cloud, stats, clock } = this;
    const lookahead = options.lookahead ?? 48;
    const deadlineMs = options.deadlineMs ?? 25;
    const gateBits = options.gateBits ?? 0;
    const maxBackup = options.maxBackup ?? 32;
    const minSpeedShare = options.minSpeedShare ?? 0;
    const drafter = options.drafter;
    const edge = await this.edge.start(prompt);
    const base = this.edgeBase ? await this.edgeBase.start(prompt) : undefined;
    const text: number[] = [...new TextEncoder().encode(prompt)];
    const promptLength = text.length;
    /** Edge distributions before each emitted byte (to replay them into a new call's alignment). */
    const history: ByteDistribution[] = [];
    let current: { edge: ByteDistribution; base: ByteDistribution | undefined } | undefined;
    let call: Call | undefined;
    let closed = false;

    /** The edge's distribution before byte i of the text (one-hot for prompt bytes, see ask). */
    const spread = (i: number): ByteDistribution =>
      i < promptLength
        ? (ONE_HOT[text[i] as number] as ByteDistribution)
        : (history[i - promptLength] as ByteDistribution);

    /**
     * A call from the last space (at most maxBackup bytes back), replaying the bytes since; moved back
     * before any personal data the cut would split (the guard must see a value whole to catch it).
     */
    const ask = (): Call => {
      let boundary = text.length;
      for (let i = text.length - 1; i >= Math.max(0, text.length - maxBackup); i--) {
        if (text[i] === 0x20) {
          boundary = i;
          break;
        }
      }
      if (cloud.guard) boundary = privacyCut(boundary);
      const prefix = text.slice(0, boundary);
      const stream = cloud.stream(new TextDecoder().decode(Uint8Array.from(prefix)), lookahead);
      const alignment = new CloudAlignment(stream.positions, stream);
      // prompt bytes have no edge distribution here: one-hot leaves the mass the top-k left out as it
      // is (an approximation over at most one word, with the top-20 holding nearly all the mass)
      for (let i = boundary; i < text.length; i++) alignment.push(text[i] as number, spread(i));
      return { stream, alignment, boundary, expected: prefix, seen: 0 };
    };

    const privacyCut = (boundary: number): number => {
      const decoder = new TextDecoder();
      const whole = decoder.decode(Uint8Array.from(text));
      const chars = decoder.decode(Uint8Array.from(text.slice(0, boundary))).length;
      const safe = cloud.safeCut(whole, chars);
      if (safe === chars) return boundary;
      const bytes = new TextEncoder().encode(whole.slice(0, safe)).length;
      // back to the space before the value, where the cloud's tokens start
      const space = text.lastIndexOf(0x20, bytes - 1);
      return space >= 0 ? space : bytes;
    };

    /** Extends the call's expected text with the positions that arrived, and tells the drafter. */
    const follow = (open: Call) => {
      const { positions } = open.stream;
      if (open.seen === positions.length) return;
      for (; open.seen < positions.length; open.seen++) {
        const token = positions[open.seen]!.token;
        if (token === undefined || token === 'end') break;
        for (const byte of token) open.expected.push(byte);
      }
      open.seen = positions.length;
      drafter?.expect(open.expected);
    };

    /**
     * Whether a new call would tell more than this one: the text has left its continuation (or the
     * stream ended, failed or was refused, and the text has used what came), and, for a text that left
     * it, a space has come since (a call from before that space would answer what this one did; until
     * then the top-k's other tokens carry the word, then the edge).
     */
    const stale = (open: Call) => {
      if (!open.alignment.settle() || open.alignment.onContinuation) return false;
      let left = open.boundary;
      while (left < text.length && left < open.expected.length && text[left] === open.expected[left]) left++;
      // the text used all the answer had: a new call if no more is coming
      if (left >= open.expected.length) return open.stream.ended;
      return text.lastIndexOf(0x20) >= left;
    };

    /** Milliseconds a byte may still wait under the speed floor (the edge's own steps so far, over the share). */
    const floorLeft = (started: number) =>
      minSpeedShare > 0 ? clock.edgeMs / minSpeedShare - (clock.totalMs + (performance.now() - started)) : Infinity;

    return {
      async next() {
        if (closed) throw new Error('the session is closed');
        const started = performance.now();
        const finish = (d: ByteDistribution) => {
          clock.totalMs += performance.now() - started;
          return d;
        };
        const e = await edge.next();
        const b = base ? await base.next() : undefined;
        clock.edgeMs += performance.now() - started;
        current = { edge: e, base: b };
        stats.positions++;
        if (gateBits > 0 && entropyBits(e) < gateBits) {
          stats.gated++;
          return finish(e);
        }
        if (!call || stale(call)) {
          call?.stream.cancel();
          // a text the guard kept on the device stays there: every later call would carry it too
          if (call?.stream.endedBy === 'blocked') {
            stats.blocked++;
            return finish(e);
          }
          call = ask();
        }
        const open = call;
        if (open.stream.endedBy === 'blocked') {
          stats.blocked++;
          return finish(e);
        }
        follow(open);
        const ready = performance.now();
        // wait for the cloud within the deadline (from when the byte was asked for) and the floor
        while (!open.alignment.settle()) {
          const left = Math.min(deadlineMs - (performance.now() - started), floorLeft(started));
          if (left <= 0) break;
          let timer: NodeJS.Timeout | undefined;
          await Promise.race([open.stream.changed(), new Promise<void>((r) => (timer = setTimeout(r, left)))]);
          clearTimeout(timer);
          if (closed) throw new Error('the session is closed');
        }
        stats.waits.push(performance.now() - ready);
        follow(open);
        if (!open.alignment.ready || open.alignment.knownShare === 0) {
          stats.fellBack++;
          return finish(e);
        }
        stats.fused++;
        return finish(fuse(options.fusion, e, open.alignment.distribution(e), b));
      },
      push(outcome) {
        if (!current) throw new Error('push follows next');
        const started = performance.now();
        edge.push(outcome);
        base?.push(outcome);
        history.push(current.edge);
        if (call) {
          call.alignment.push(outcome, current.edge);
          // the rest of a continuation the text has left is of no use: stop the cloud decoding it
          if (call.alignment.settle() && !call.alignment.onContinuation) call.stream.cancel();
        }
        if (outcome !== END_OF_TEXT) text.push(outcome);
        current = undefined;
        clock.totalMs += performance.now() - started;
      },
      rewind(count) {
        checkRewind(count, history.length);
        call?.stream.cancel();
        call = undefined;
        current = undefined;
        edge.rewind(count);
        base?.rewind(count);
        history.length = count;
        text.length = Math.min(text.length, promptLength + count);
      },
      close() {
        closed = true;
        call?.stream.cancel();
        call = undefined;
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
    // the cloud's answer is awaited while the edge computes
    const [edge, base, scored] = await Promise.all([
      this.edge.score(text),
      this.edgeBase?.score(text),
      this.cloud.score(text),
    ]);
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
