/**
 * Byte-level alignment of a subword cloud's top-k, and the fusion modes, on constructed distributions
 * whose right answers are worked out by hand.
 */
import { describe, expect, it } from 'vitest';
import { BYTE_OUTCOMES, END_OF_TEXT } from '@floe/model';
import {
  CircuitBreaker,
  CloudAlignment,
  type CloudPosition,
  ContinuationDrafter,
  fuse,
  routerWeight,
} from '../src/index.js';

const b = (s: string) => new TextEncoder().encode(s);
const code = (s: string) => s.charCodeAt(0);
const top = (entries: Record<string, number>) =>
  Object.entries(entries).map(([token, q]) => ({
    token: token === '<end>' ? ('end' as const) : b(token),
    logprob: Math.log(q),
  }));

/** A distribution over the 257 outcomes from a few named ones; the rest share what is left. */
function dist(named: Record<string, number>): Float64Array {
  const p = new Float64Array(BYTE_OUTCOMES);
  const given = Object.values(named).reduce((s, x) => s + x, 0);
  const rest = (1 - given) / (BYTE_OUTCOMES - Object.keys(named).length);
  p.fill(rest);
  for (const [k, v] of Object.entries(named)) p[k === '<end>' ? END_OF_TEXT : code(k)] = v;
  return p;
}

const uniform = new Float64Array(BYTE_OUTCOMES).fill(1 / BYTE_OUTCOMES);
const maxDiff = (p: Float64Array, q: Float64Array) => p.reduce((m, x, i) => Math.max(m, Math.abs(x - q[i]!)), 0);

describe('cloud alignment', () => {
  it('gives a multi-byte vocabulary the next-byte distribution of a byte model with the same probabilities', () => {
    // tokens "ab" .5, "ac" .2, "b" .3, the cloud continued with "ab"; then "x" .6, "yz" .4
    const positions: CloudPosition[] = [
      { token: b('ab'), top: top({ ab: 0.5, ac: 0.2, b: 0.3 }) },
      { token: b('x'), top: top({ x: 0.6, yz: 0.4 }) },
    ];
    const alignment = new CloudAlignment(positions);
    // the byte model: P(a) .7, P(b) .3 | P(b|a) 5/7, P(c|a) 2/7 | P(x|ab) .6, P(y|ab) .4 | P(z|aby) 1
    const expectOnly = (p: Float64Array, want: Record<string, number>) => {
      p.forEach((x, i) => {
        const key = String.fromCharCode(i);
        expect(x, `outcome ${i}`).toBeCloseTo(want[key] ?? 0, 12);
      });
    };
    expectOnly(alignment.distribution(uniform), { a: 0.7, b: 0.3 });
    alignment.push(code('a'), uniform);
    expectOnly(alignment.distribution(uniform), { b: 5 / 7, c: 2 / 7 });
    alignment.push(code('b'), uniform);
    expectOnly(alignment.distribution(uniform), { x: 0.6, y: 0.4 });
    alignment.push(code('y'), uniform);
    expectOnly(alignment.distribution(uniform), { z: 1 });
    expect(alignment.knownShare).toBeCloseTo(1, 12);
  });

  it('spreads the mass outside the top-k by the edge, and conditions it on the bytes that came', () => {
    const edge = dist({ a: 0.5, b: 0.25, c: 0.25 });
    const alignment = new CloudAlignment([{ token: b('ab'), top: top({ ab: 0.6 }) }]);
    const first = alignment.distribution(edge);
    expect(first[code('a')]).toBeCloseTo(0.6 + 0.4 * 0.5, 12);
    expect(first[code('b')]).toBeCloseTo(0.4 * 0.25, 12);
    alignment.push(code('a'), edge);
    // known "ab" keeps .6; the unknown keeps .4 * P_edge(a) = .2
    const second = alignment.distribution(edge);
    expect(second[code('b')]).toBeCloseTo((0.6 + 0.2 * 0.25) / 0.8, 12);
    expect(second[code('c')]).toBeCloseTo((0.2 * 0.25) / 0.8, 12);
    expect(alignment.knownShare).toBeCloseTo(0.75, 12);
  });

  it('hands a token that is not the cloud continuation, and the end of the answer, to the edge', () => {
    const edge = dist({ q: 0.5, r: 0.5 });
    const alignment = new CloudAlignment([
      { token: b('ab'), top: top({ ab: 0.5, a: 0.5 }) },
      { token: b('q'), top: top({ q: 1 }) },
    ]);
    alignment.push(code('a'), edge);
    // "a" ended and is not the continuation "ab": its half goes to the edge; "ab" still wants b
    const p = alignment.distribution(edge);
    expect(p[code('b')]).toBeCloseTo(0.5, 12);
    expect(p[code('q')]).toBeCloseTo(0.25, 12);
    alignment.push(code('q'), edge);
    expect(alignment.knownShare).toBe(0);
    expect(alignment.distribution(edge)).toEqual(edge);
  });

  it('follows a first token reported without top-k (OpenAI echo) and opens the next position after it', () => {
    const edge = dist({ T: 0.5, h: 0.25 });
    const alignment = new CloudAlignment([
      { token: b('The'), top: [] },
      { token: b(' cat'), top: top({ ' cat': 0.5, ' dog': 0.5 }) },
    ]);
    expect(alignment.distribution(edge)).toEqual(edge);
    for (const byte of b('The')) alignment.push(byte, edge);
    const p = alignment.distribution(edge);
    expect(p[code(' ')]).toBeCloseTo(1, 12);
    alignment.push(code(' '), edge);
    expect(alignment.distribution(edge)[code('d')]).toBeCloseTo(0.5, 12);
    const strayed = new CloudAlignment([
      { token: b('The'), top: [] },
      { token: b(' cat'), top: top({ ' cat': 1 }) },
    ]);
    for (const byte of b('Thy')) strayed.push(byte, edge);
    expect(strayed.knownShare).toBe(0);
  });

  it('reads a streamed answer as it arrives, with the distributions of the whole answer', () => {
    const edge = dist({ a: 0.3, x: 0.3, y: 0.2 });
    const positions: CloudPosition[] = [
      { token: b('ab'), top: top({ ab: 0.5, ac: 0.2, b: 0.2 }) },
      { token: b('x'), top: top({ x: 0.6, yz: 0.3 }) },
      { token: b('yz'), top: top({ yz: 0.7, y: 0.2 }) },
    ];
    const text = b('abxyz');
    const whole = new CloudAlignment(positions);
    const expected = [...text].map((byte) => {
      const p = whole.distribution(edge);
      whole.push(byte, edge);
      return p;
    });
    const arrived: CloudPosition[] = [];
    const live = { ended: false };
    const streamed = new CloudAlignment(arrived, live);
    // nothing has arrived: no distribution yet, and bytes pushed meanwhile wait in order
    expect(streamed.settle()).toBe(false);
    expect(() => streamed.distribution(edge)).toThrow(/settle first/);
    streamed.push(code('a'), edge);
    arrived.push(positions[0]!);
    expect(streamed.settle()).toBe(true);
    expect(maxDiff(streamed.distribution(edge), expected[1]!)).toBeLessThan(1e-12);
    streamed.push(code('b'), edge);
    // "ab" ended on the continuation: its mass waits for position 1, still on the continuation
    expect(streamed.ready).toBe(false);
    expect(streamed.onContinuation).toBe(true);
    streamed.push(code('x'), edge);
    arrived.push(positions[1]!);
    expect(streamed.settle()).toBe(false);
    arrived.push(positions[2]!);
    expect(streamed.settle()).toBe(true);
    expect(maxDiff(streamed.distribution(edge), expected[3]!)).toBeLessThan(1e-12);
    streamed.push(code('y'), edge);
    expect(maxDiff(streamed.distribution(edge), expected[4]!)).toBeLessThan(1e-12);
    // the answer ends without a next position: the continuation's mass goes to the edge
    streamed.push(code('z'), edge);
    expect(streamed.settle()).toBe(false);
    live.ended = true;
    expect(streamed.settle()).toBe(true);
    expect(streamed.knownShare).toBe(0);
    expect(streamed.onContinuation).toBe(false);
  });

  it('knows when the text has left the continuation while other top-k tokens still carry it', () => {
    const alignment = new CloudAlignment([
      { token: b(' the'), top: top({ ' the': 0.6, ' this': 0.3 }) },
      { token: b(' cat'), top: top({ ' cat': 1 }) },
    ]);
    for (const byte of b(' th')) alignment.push(byte, uniform);
    expect(alignment.onContinuation).toBe(true);
    alignment.push(code('i'), uniform);
    expect(alignment.onContinuation).toBe(false);
    expect(alignment.knownShare).toBeGreaterThan(0.99);
  });

  it('credits an end token to END_OF_TEXT', () => {
    const alignment = new CloudAlignment([{ token: 'end', top: top({ '<end>': 0.9, a: 0.1 }) }]);
    const p = alignment.distribution(uniform);
    expect(p[END_OF_TEXT]).toBeCloseTo(0.9, 12);
    expect(p[code('a')]).toBeCloseTo(0.1, 12);
  });
});

describe('fusion modes', () => {
  const edge = dist({ a: 0.8, b: 0.1 });
  const cloud = dist({ a: 0.2, b: 0.7 });

  it('mixes linearly, multiplies experts, and routes by entropy', () => {
    const linear = fuse({ mode: 'linear', weight: 0.25 }, edge, cloud);
    expect(linear[code('a')]).toBeCloseTo(0.25 * 0.2 + 0.75 * 0.8, 12);
    const product = fuse({ mode: 'product', weight: 0.5 }, edge, cloud);
    const z = Array.from(edge, (e, i) => Math.sqrt(e * cloud[i]!)).reduce((s, x) => s + x, 0);
    expect(product[code('b')]).toBeCloseTo(Math.sqrt(0.1 * 0.7) / z, 12);
    const sure = dist({ a: 0.99 });
    const unsure = dist({ a: 0.3, b: 0.3 });
    expect(routerWeight(unsure, sure)).toBeGreaterThan(0.9);
    expect(routerWeight(sure, unsure)).toBeLessThan(0.1);
    expect(routerWeight(cloud, cloud)).toBeCloseTo(0.5, 12);
    const routed = fuse({ mode: 'entropy' }, unsure, sure);
    const w = routerWeight(unsure, sure);
    expect(routed[code('a')]).toBeCloseTo(w * 0.99 + (1 - w) * 0.3, 12);
    for (const p of [linear, product, routed]) expect(p.reduce((s, x) => s + x, 0)).toBeCloseTo(1, 12);
  });

  it('proxy-tunes: the cloud moved by what the adapter changed in the edge', () => {
    expect(fuse({ mode: 'proxy' }, edge, cloud, edge)[code('b')]).toBeCloseTo(0.7, 12);
    const tuned = dist({ a: 0.4, b: 0.5 });
    const shifted = fuse({ mode: 'proxy' }, tuned, cloud, edge);
    const raw = Array.from(cloud, (c, i) => (c * tuned[i]!) / edge[i]!);
    const z = raw.reduce((s, x) => s + x, 0);
    expect(shifted[code('b')]).toBeCloseTo(raw[code('b')]! / z, 12);
    expect(() => fuse({ mode: 'proxy' }, tuned, cloud)).toThrow(/base edge/);
  });
});

describe('circuit breaker', () => {
  it('opens after the threshold, probes once after the cooldown, and closes on success', () => {
    let now = 0;
    const breaker = new CircuitBreaker(2, 1000, () => now);
    breaker.failure();
    expect(breaker.allow()).toBe(true);
    breaker.failure();
    expect(breaker.state).toBe('open');
    expect(breaker.allow()).toBe(false);
    now = 1000;
    expect(breaker.allow()).toBe(true);
    expect(breaker.allow()).toBe(false);
    breaker.failure();
    expect(breaker.state).toBe('open');
    now = 2500;
    expect(breaker.allow()).toBe(true);
    breaker.success();
    expect(breaker.state).toBe('closed');
    expect(breaker.allow()).toBe(true);
  });
});

describe('continuation drafter', () => {
  it("drafts the cloud's continuation while the text follows it, else asks its fallback", () => {
    const fallback = { draft: () => [0x21] };
    const drafter = new ContinuationDrafter(fallback);
    const expected = [...b('Dear sir, the report of the')];
    drafter.expect(expected);
    expect(drafter.draft([...b('Dear sir, the rep')], 4)).toEqual([...b('ort ')]);
    expect(drafter.draft([...b('Dear sir, the report of the')], 4)).toEqual([0x21]);
    expect(drafter.draft([...b('Dear sir, a rep')], 4)).toEqual([0x21]);
    expect(new ContinuationDrafter().draft([...b('Dear')], 4)).toEqual([]);
  });
});
