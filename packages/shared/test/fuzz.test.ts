/**
 * The decoder faces the network: whatever bytes arrive, it either returns a validated message or
 * throws a FloeError. These tests feed it 10,000 hostile byte strings and count.
 */
import fc from 'fast-check';
import { Packr } from 'msgpackr';
import { describe, expect, it } from 'vitest';
import {
  FloeError,
  decodeAdapterUpdate,
  decodeMessage,
  encodeAdapterUpdate,
  encodeFrame,
  FRAME_HEADER_BYTES,
} from '../src/index.js';
import { randomAdapter, rng, update } from './fixtures.js';

const valid = encodeAdapterUpdate(update(randomAdapter(2, 1, rng(7))));

type Outcome = 'typed-error' | 'decoded';

function feed(bytes: Uint8Array): Outcome {
  try {
    decodeAdapterUpdate(bytes);
    return 'decoded';
  } catch (error) {
    if (error instanceof FloeError) return 'typed-error';
    throw new Error(`untyped ${String((error as Error)?.constructor?.name)} escaped the decoder: ${String(error)}`);
  }
}

type Mutation =
  | { op: 'flip'; at: number; bit: number }
  | { op: 'set'; at: number; value: number }
  | { op: 'insert'; at: number; bytes: Uint8Array }
  | { op: 'delete'; at: number; count: number }
  | { op: 'truncate'; at: number }
  | { op: 'append'; bytes: Uint8Array };

const position = fc.double({ min: 0, max: 1, noNaN: true, maxExcluded: true });
const mutation: fc.Arbitrary<Mutation> = fc.oneof(
  fc.record({ op: fc.constant('flip' as const), at: position, bit: fc.integer({ min: 0, max: 7 }) }),
  fc.record({ op: fc.constant('set' as const), at: position, value: fc.integer({ min: 0, max: 255 }) }),
  fc.record({
    op: fc.constant('insert' as const),
    at: position,
    bytes: fc.uint8Array({ minLength: 1, maxLength: 16 }),
  }),
  fc.record({ op: fc.constant('delete' as const), at: position, count: fc.integer({ min: 1, max: 16 }) }),
  fc.record({ op: fc.constant('truncate' as const), at: position }),
  fc.record({ op: fc.constant('append' as const), bytes: fc.uint8Array({ minLength: 1, maxLength: 16 }) }),
);

function mutate(source: Uint8Array, mutations: readonly Mutation[]): Uint8Array {
  let bytes: Uint8Array = source.slice();
  for (const m of mutations) {
    if (m.op === 'append') {
      bytes = concat(bytes, m.bytes);
      continue;
    }
    const at = Math.floor(m.at * bytes.length);
    if (m.op === 'flip') bytes[at] = (bytes[at] ?? 0) ^ (1 << m.bit);
    else if (m.op === 'set') bytes[at] = m.value === bytes[at] ? (m.value + 1) & 0xff : m.value;
    else if (m.op === 'insert') bytes = concat(bytes.subarray(0, at), m.bytes, bytes.subarray(at));
    else if (m.op === 'delete') bytes = concat(bytes.subarray(0, at), bytes.subarray(at + m.count));
    else bytes = bytes.slice(0, at);
  }
  return bytes;
}

function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let offset = 0;
  for (const part of parts) {
    out.set(part, offset);
    offset += part.length;
  }
  return out;
}

function differs(a: Uint8Array, b: Uint8Array): boolean {
  return a.length !== b.length || a.some((v, i) => v !== b[i]);
}

/** A well-formed update message around one (hostile) tensor. */
function updateWith(tensor: Record<string, unknown>) {
  return {
    type: 'update',
    jobId: 'j',
    round: 0,
    numSamples: 1,
    plan: { rank: 1, targetModules: ['q_proj'] },
    metrics: {},
    adapter: { alpha: 1, tensors: [tensor] },
  };
}

describe('decoder under hostile input', () => {
  it('rejects 5,000 random byte strings with a typed error', () => {
    const outcomes = { 'typed-error': 0, decoded: 0 };
    fc.assert(
      fc.property(
        fc.oneof(
          fc.uint8Array({ maxLength: 64 }),
          fc.uint8Array({ minLength: 16, maxLength: 4096 }),
          // random bytes behind a real magic and version, so the later checks are reached too
          fc.uint8Array({ minLength: 0, maxLength: 512 }).map((tail) => concat(valid.subarray(0, 8), tail)),
        ),
        (bytes) => {
          outcomes[feed(bytes)]++;
        },
      ),
      { numRuns: 5000, seed: 42 },
    );
    expect(outcomes).toEqual({ 'typed-error': 5000, decoded: 0 });
  });

  it('rejects 5,000 mutations of a valid update frame with a typed error', () => {
    const outcomes = { 'typed-error': 0, decoded: 0 };
    fc.assert(
      fc.property(fc.array(mutation, { minLength: 1, maxLength: 4 }), (mutations) => {
        const bytes = mutate(valid, mutations);
        fc.pre(differs(bytes, valid));
        outcomes[feed(bytes)]++;
      }),
      { numRuns: 5000, seed: 43 },
    );
    expect(outcomes).toEqual({ 'typed-error': 5000, decoded: 0 });
  });

  it('never lets an untyped error escape when the mutated payload carries a correct checksum', () => {
    // Past the checksum: msgpack parsing and schema validation now face the mutations alone.
    const payload = valid.subarray(FRAME_HEADER_BYTES);
    const outcomes = { 'typed-error': 0, decoded: 0 };
    fc.assert(
      fc.property(fc.array(mutation, { minLength: 1, maxLength: 3 }), (mutations) => {
        outcomes[feed(encodeFrame(mutate(payload, mutations)))]++;
      }),
      { numRuns: 3000, seed: 44 },
    );
    expect(outcomes['typed-error'] + outcomes['decoded']).toBe(3000);
    expect(outcomes['typed-error']).toBeGreaterThan(1000);
  });

  it('rejects well-formed msgpack of the wrong structure', () => {
    const packr = new Packr({ useRecords: false });
    const hostile: unknown[] = [
      null,
      42,
      'update',
      [1, 2, 3],
      { type: 'update' },
      { type: '__proto__' },
      { type: 'constructor' },
      { type: 'x'.repeat(100_000) },
      { type: 'hello', protocolVersion: 1, profile: { memoryMiB: -1 } },
      updateWith({ name: 'a', dtype: 'f64', shape: [1], data: new Uint8Array(8) }),
      updateWith({ name: 'a', dtype: 'f32', shape: [16777216, 16777216], data: new Uint8Array(4) }),
      updateWith({ name: 'a', dtype: 'f32', shape: [1], data: [0, 0, 0, 0] }),
    ];
    for (const value of hostile) {
      const bytes = encodeFrame(packr.pack(value));
      expect(() => decodeAdapterUpdate(bytes)).toThrow(FloeError);
      expect(() => decodeMessage(bytes)).toThrow(FloeError);
    }
  });

  it('rejects msgpack nested 100,000 deep, which no encoder would write, with a typed error', () => {
    // written byte by byte: msgpackr itself cannot encode a value this deep
    const depth = 100_000;
    const nestedArray = new Uint8Array(depth + 1).fill(0x91); // fixarray of one element, `depth` times
    nestedArray[depth] = 0x00; // ... around the integer 0
    const key = (text: string) => Uint8Array.of(0xa0 | text.length, ...new TextEncoder().encode(text));
    const helloWithNestedVersion = concat(
      Uint8Array.of(0x82), // fixmap of two entries
      key('type'),
      key('hello'),
      key('protocolVersion'),
      nestedArray,
    );
    for (const payload of [nestedArray, helloWithNestedVersion]) {
      const bytes = encodeFrame(payload);
      expect(() => decodeAdapterUpdate(bytes)).toThrow(FloeError);
      expect(() => decodeMessage(bytes)).toThrow(FloeError);
    }
  });

  it('accepts a well-formed update message but refuses it as an adapter when a LoRA factor is missing', () => {
    const loneA = {
      name: 'base_model.model.x.q_proj.lora_A.weight',
      dtype: 'f32',
      shape: [1, 1],
      data: new Uint8Array(4),
    };
    const message = updateWith(loneA);
    const bytes = encodeFrame(new Packr({ useRecords: false }).pack(message));
    expect(decodeMessage(bytes).type).toBe('update');
    expect(() => decodeAdapterUpdate(bytes)).toThrow(/lacks its lora_B/);
  });
});
