/**
 * A subword cloud's top-k seen byte by byte. At a cloud position the cloud gives the probability of
 * its top-k tokens; a token's probability is credited to its first byte, and once that byte is chosen,
 * conditionally to its next bytes. When a token ends and it is the token the cloud itself continued
 * with (the known continuation, from lookahead or from scoring a known text), its mass moves on to the
 * next position's top-k. The mass the top-k leaves out, and the mass of tokens whose next position the
 * cloud did not report, is spread by the edge's next-byte distribution.
 *
 * Exact on its own terms: with a top-k that covers the whole distribution and a known continuation,
 * the next-byte distribution is what a byte-level model holding the same probabilities gives.
 *
 * Live answers: the positions of a streamed continuation arrive one by one. Mass that moves on to a
 * position that has not arrived yet waits for it (and the bytes pushed meanwhile queue behind it);
 * `settle()` applies what has arrived, and `ready` says whether the distribution can be given now.
 */
import { BYTE_OUTCOMES, type ByteDistribution, END_OF_TEXT } from '@floe/model';

/** A cloud token as bytes, or the end of the text. */
export type CloudToken = Uint8Array | 'end';

export interface CloudPosition {
  /** The token the cloud continued with here (generated, or the scored text's own), if any. */
  token: CloudToken | undefined;
  /** Its top tokens with their log-probabilities. */
  top: { token: CloudToken; logprob: number }[];
}

interface Hypothesis {
  position: number;
  token: CloudToken;
  /** Bytes of the token already emitted. */
  consumed: number;
  weight: number;
}

function sameToken(a: CloudToken | undefined, b: CloudToken): boolean {
  if (a === undefined) return false;
  if (a === 'end' || b === 'end') return a === b;
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

/** The arrival state of a streamed answer's positions. */
export interface LivePositions {
  /** True once no more positions will come (the answer ended, failed or was cancelled). */
  readonly ended: boolean;
}

export class CloudAlignment {
  private hypotheses: Hypothesis[] = [];
  /** Mass the cloud said nothing precise about, spread by the edge. */
  private unknown = 0;
  /** Mass moving on to positions that have not arrived yet. */
  private deferred: { position: number; weight: number }[] = [];
  /** Outcomes pushed while mass was deferred, applied in order once it is placed. */
  private queued: { outcome: number; edge: ByteDistribution }[] = [];

  /**
   * A first position with no top-k (OpenAI's echo reports none for the first token): its own token is
   * followed byte by byte under the edge, and once it is complete the next position opens with all the
   * mass, as a scored text's second token is known to start there.
   */
  private followFirst: { bytes: Uint8Array; matched: number } | undefined;

  /**
   * `positions` may still be growing when `live` is given (a streamed answer): the alignment then reads
   * them as they arrive.
   */
  constructor(
    private readonly positions: readonly CloudPosition[],
    private readonly live?: LivePositions,
  ) {
    const first = positions[0];
    if (live) this.deferred.push({ position: 0, weight: 1 });
    else if (first && first.top.length === 0 && first.token instanceof Uint8Array && positions.length > 1) {
      this.followFirst = { bytes: first.token, matched: 0 };
      this.unknown = 1;
    } else this.open(0, 1);
  }

  /**
   * Share of the mass still carried by the cloud's own tokens (0 when the edge alone is left); while
   * mass waits for a position (not `ready`) it counts as carried, so read it after `settle()`.
   */
  get knownShare(): number {
    const known = this.hypotheses.reduce((s, h) => s + h.weight, 0) + this.deferred.reduce((s, d) => s + d.weight, 0);
    return known / (known + this.unknown);
  }

  /**
   * Whether the text still follows the cloud's own continuation (a hypothesis on its token, or mass
   * waiting for its next position): once it does not, a new call is the only way to learn more.
   */
  get onContinuation(): boolean {
    return (
      this.deferred.length > 0 ||
      this.hypotheses.some((h) => sameToken(this.positions[h.position]?.token, h.token) || h.token === 'end')
    );
  }

  /** Whether every pushed outcome is applied and no mass waits for a position (see `settle`). */
  get ready(): boolean {
    return this.deferred.length === 0 && this.queued.length === 0;
  }

  /** Places deferred mass on the positions that have arrived (or, once none will, on the edge) and applies queued outcomes. */
  settle(): boolean {
    for (;;) {
      const waiting: typeof this.deferred = [];
      let placed = false;
      for (const d of this.deferred) {
        if (d.position < this.positions.length) this.open(d.position, d.weight);
        else if (this.live?.ended) this.unknown += d.weight;
        else {
          waiting.push(d);
          continue;
        }
        placed = true;
      }
      this.deferred = waiting;
      if (placed) this.normalize();
      const next = waiting.length === 0 ? this.queued.shift() : undefined;
      if (!next) return this.ready;
      this.apply(next.outcome, next.edge);
    }
  }

  /** The cloud's next-outcome distribution; `edge` spreads the unknown mass. Needs `ready`. */
  distribution(edge: ByteDistribution): ByteDistribution {
    if (!this.ready) throw new Error('the alignment waits for positions that have not arrived (settle first)');
    const out = new Float64Array(BYTE_OUTCOMES);
    let total = this.unknown;
    for (let i = 0; i < BYTE_OUTCOMES; i++) out[i] = this.unknown * (edge[i] as number);
    for (const h of this.hypotheses) {
      const outcome = h.token === 'end' ? END_OF_TEXT : (h.token[h.consumed] as number);
      out[outcome] = (out[outcome] as number) + h.weight;
      total += h.weight;
    }
    for (let i = 0; i < BYTE_OUTCOMES; i++) out[i] = (out[i] as number) / total;
    return out;
  }

  /** Conditions on the outcome that came; `edge` is the edge distribution it was drawn against. */
  push(outcome: number, edge: ByteDistribution): void {
    if (!this.ready) this.queued.push({ outcome, edge });
    else this.apply(outcome, edge);
  }

  private apply(outcome: number, edge: ByteDistribution): void {
    if (this.followFirst) {
      const follow = this.followFirst;
      if (follow.bytes[follow.matched] !== outcome) this.followFirst = undefined;
      else if (++follow.matched === follow.bytes.length) {
        this.followFirst = undefined;
        this.unknown = 0;
        this.open(1, 1);
        this.normalize();
      }
      return;
    }
    this.unknown *= edge[outcome] as number;
    const kept: Hypothesis[] = [];
    const ended: Hypothesis[] = [];
    for (const h of this.hypotheses) {
      const next = h.token === 'end' ? END_OF_TEXT : h.token[h.consumed];
      if (next !== outcome) continue;
      if (h.token !== 'end' && h.consumed + 1 < h.token.length) kept.push({ ...h, consumed: h.consumed + 1 });
      else ended.push(h);
    }
    this.hypotheses = kept;
    for (const h of ended) {
      const position = this.positions[h.position] as CloudPosition;
      if (h.token === 'end' || !sameToken(position.token, h.token)) this.unknown += h.weight;
      else if (h.position + 1 < this.positions.length) this.open(h.position + 1, h.weight);
      else if (this.live && !this.live.ended) this.deferred.push({ position: h.position + 1, weight: h.weight });
      else this.unknown += h.weight;
    }
    this.normalize();
  }

  /** Starts hypotheses for the top-k of `position`, carrying `weight`. */
  private open(position: number, weight: number): void {
    const { top } = this.positions[position] ?? { top: [] };
    let covered = 0;
    for (const t of top) {
      const q = Math.exp(t.logprob);
      covered += q;
      if (t.token !== 'end' && t.token.length === 0) continue;
      this.hypotheses.push({ position, token: t.token, consumed: 0, weight: weight * q });
    }
    this.unknown += weight * Math.max(0, 1 - covered);
  }

  private normalize(): void {
    const total =
      this.unknown +
      this.hypotheses.reduce((s, h) => s + h.weight, 0) +
      this.deferred.reduce((s, d) => s + d.weight, 0);
    if (!(total > 0)) {
      this.hypotheses = [];
      this.deferred = [];
      this.unknown = 1;
      return;
    }
    this.unknown /= total;
    for (const h of this.hypotheses) h.weight /= total;
    for (const d of this.deferred) d.weight /= total;
  }
}

/**
 * The cloud's next-outcome distribution before each byte of a scored text and after its end (bytes + 1
 * of them), from the cloud's positions over that text (an echo: its own tokens are the continuation, and
 * the end follows the last). `spread(t)` is what the unknown mass is spread by before byte t. A position
 * where the cloud carries no known mass is undefined: the caller falls back to its own distribution.
 */
export function alignScoredText(
  positions: readonly CloudPosition[],
  bytes: Uint8Array,
  spread: (t: number) => ByteDistribution,
): (ByteDistribution | undefined)[] {
  const alignment = new CloudAlignment([...positions, { token: 'end', top: [] }]);
  const out: (ByteDistribution | undefined)[] = [];
  for (let t = 0; t <= bytes.length; t++) {
    const s = spread(t);
    out.push(alignment.knownShare > 0 ? alignment.distribution(s) : undefined);
    if (t < bytes.length) alignment.push(bytes[t] as number, s);
  }
  return out;
}
