import { describe, expect, it } from 'vitest';
import {
  CodecError,
  FRAME_HEADER_BYTES,
  ProtocolError,
  decodeAdapterUpdate,
  decodeFrame,
  decodeMessage,
  decodeMessageOf,
  encodeAdapterUpdate,
  encodeFrame,
  encodeMessage,
  checkMsgpackBounds,
  type Message,
} from '../src/index.js';
import { adapterBytes, randomAdapter, rng, update } from './fixtures.js';

function sameBits(a: Float32Array, b: Float32Array): boolean {
  const x = new Uint32Array(a.buffer, a.byteOffset, a.length);
  const y = new Uint32Array(b.buffer, b.byteOffset, b.length);
  return x.length === y.length && x.every((v, i) => v === y[i]);
}

function codeOf(fn: () => unknown): string {
  try {
    fn();
  } catch (error) {
    if (error instanceof CodecError || error instanceof ProtocolError) return error.code;
    throw error;
  }
  throw new Error('expected a typed error, nothing was thrown');
}

describe('adapter update codec', () => {
  // rank 64 on q, k, v, o of 4 layers of hidden 128: 4 layers * 4 modules * 2 * 64 * 128 * 4 bytes = 1 MiB
  const adapter = randomAdapter(64, 4, rng(1), false);

  it('round-trips a 1 MiB update bit-exactly within 1% of the raw tensor bytes', () => {
    const raw = adapterBytes(adapter);
    expect(raw).toBe(1024 * 1024);
    const bytes = encodeAdapterUpdate(update(adapter));
    expect(bytes.byteLength / raw).toBeLessThan(1.01);
    expect(bytes.byteLength).toBeGreaterThan(raw);

    const back = decodeAdapterUpdate(bytes);
    expect(back.adapter.alpha).toBe(16);
    expect([...back.adapter.modules.keys()].sort()).toEqual([...adapter.modules.keys()].sort());
    for (const [path, f] of adapter.modules) {
      const g = back.adapter.modules.get(path);
      expect(g?.rank).toBe(f.rank);
      expect(sameBits(g!.A, f.A) && sameBits(g!.B, f.B)).toBe(true);
    }
    expect(back.metrics).toEqual({ loss: 1.25, train_seconds: 4.5 });
    expect(back.numSamples).toBe(128);
  });

  it('keeps signed zeros, subnormals and extreme finite values exactly', () => {
    const special = Float32Array.of(
      -0,
      0,
      1e-45,
      -1e-45,
      3.4028234663852886e38,
      -3.4028234663852886e38,
      1.17549435e-38,
    );
    const a = {
      alpha: 1,
      modules: new Map([['m.q_proj', { rank: 1, inFeatures: 7, outFeatures: 1, A: special, B: Float32Array.of(1) }]]),
    };
    const back = decodeAdapterUpdate(encodeAdapterUpdate(update(a)));
    expect(sameBits(back.adapter.modules.get('m.q_proj')!.A, special)).toBe(true);
  });

  it('halves the size in f16 and stays within f16 rounding', () => {
    const f32 = encodeAdapterUpdate(update(adapter)).byteLength;
    const f16 = encodeAdapterUpdate(update(adapter), 'f16');
    expect(f16.byteLength / f32).toBeLessThan(0.51);
    const back = decodeAdapterUpdate(f16);
    for (const [path, f] of adapter.modules) {
      const A = back.adapter.modules.get(path)!.A;
      for (let i = 0; i < A.length; i += 97)
        expect(Math.abs(A[i]! - f.A[i]!)).toBeLessThanOrEqual(Math.abs(f.A[i]!) * 2 ** -11 + 2 ** -25);
    }
  });

  it('decoded tensors own their memory instead of aliasing the frame', () => {
    const bytes = encodeAdapterUpdate(update(adapter));
    const back = decodeAdapterUpdate(bytes);
    const first = [...back.adapter.modules.values()][0]!;
    const before = first.A[0];
    bytes.fill(0);
    expect(first.A[0]).toBe(before);
  });
});

describe('frame and message errors', () => {
  const hello: Message = {
    type: 'hello',
    protocolVersion: 1,
    profile: { memoryMiB: 512, computeGflops: 2, uplinkMbps: 10, downlinkMbps: 50, roundBudgetSec: 30 },
  };

  it('round-trips a control message', () => {
    expect(decodeMessageOf(encodeMessage(hello), 'hello')).toEqual(hello);
  });

  it('refuses frames over the size limit before parsing them', () => {
    const bytes = encodeMessage(hello);
    expect(codeOf(() => decodeMessage(bytes, { maxBytes: bytes.byteLength - 1 }))).toBe('too_large');
  });

  it('names each kind of damage', () => {
    const bytes = encodeMessage(hello);
    expect(codeOf(() => decodeMessage('hello'))).toBe('not_bytes');
    expect(codeOf(() => decodeMessage(bytes.subarray(0, 10)))).toBe('truncated');
    expect(codeOf(() => decodeMessage(bytes.subarray(0, bytes.length - 1)))).toBe('bad_length');
    const flipped = bytes.slice();
    flipped[FRAME_HEADER_BYTES + 3]! ^= 0x10;
    expect(codeOf(() => decodeMessage(flipped))).toBe('bad_checksum');
    const magic = bytes.slice();
    magic[0] = 0;
    expect(codeOf(() => decodeMessage(magic))).toBe('bad_magic');
    const version = bytes.slice();
    version[4] = 9;
    expect(codeOf(() => decodeMessage(version))).toBe('unsupported_frame_version');
    expect(codeOf(() => decodeMessage(encodeFrame(Uint8Array.of(0xc1))))).toBe('malformed');
    expect(codeOf(() => decodeMessage(encodeFrame(Uint8Array.of(0xd4, 0x01, 0x02))))).toBe('malformed');
    expect(codeOf(() => decodeMessageOf(bytes, 'update'))).toBe('invalid_message');
  });

  it('refuses NaN and infinite tensor values, and byte counts that do not match the shape', () => {
    const adapter = randomAdapter(2, 1, rng(2));
    const [first] = adapter.modules.values();
    first!.A[5] = Number.NaN;
    expect(codeOf(() => decodeAdapterUpdate(encodeAdapterUpdate(update(adapter))))).toBe('non_finite');
    first!.A[5] = Number.POSITIVE_INFINITY;
    expect(codeOf(() => decodeAdapterUpdate(encodeAdapterUpdate(update(adapter), 'f16')))).toBe('non_finite');
    first!.A[5] = 1e6; // finite in f32, overflows f16
    expect(codeOf(() => decodeAdapterUpdate(encodeAdapterUpdate(update(adapter), 'f16')))).toBe('non_finite');

    const wrongShape: Message = {
      type: 'update',
      jobId: 'j',
      round: 0,
      numSamples: 1,
      plan: { rank: 1, targetModules: ['q_proj'] },
      adapter: { alpha: 1, tensors: [{ name: 'x', dtype: 'f32', shape: [2, 3], data: new Uint8Array(20) }] },
      metrics: {},
    };
    expect(codeOf(() => encodeMessage(wrongShape))).toBe('bad_tensor');
  });

  it('refuses fields the protocol does not define, so no text can ride along', () => {
    const smuggled = { ...hello, prompt: 'my private text' } as unknown as Message;
    expect(codeOf(() => encodeMessage(smuggled))).toBe('invalid_message');
    const badMetric = { ...update(randomAdapter(1, 1, rng(3))), metrics: { 'Free text here': 1 } };
    expect(codeOf(() => encodeAdapterUpdate(badMetric))).toBe('invalid_message');
  });

  it('returns the payload view for a valid frame', () => {
    const payload = Uint8Array.of(1, 2, 3);
    expect([...decodeFrame(encodeFrame(payload))]).toEqual([1, 2, 3]);
  });
});

describe('msgpack bounds before decoding', () => {
  // array32 header announcing `count` values, then the values
  const array32 = (count: number, fill: number) => {
    const bytes = new Uint8Array(5 + count).fill(fill);
    bytes[0] = 0xdd;
    new DataView(bytes.buffer).setUint32(1, count);
    return bytes;
  };

  it('refuses a frame of a million empty maps before allocating them', () => {
    const frame = encodeFrame(array32(1_000_000, 0x80));
    expect(codeOf(() => decodeMessage(frame))).toBe('too_complex');
    expect(() => checkMsgpackBounds(array32(1_000_000, 0x80), { maxDepth: 16, maxValues: 2_000_000 })).not.toThrow();
  });

  it('refuses deep nesting, containers announcing more than the bytes hold, extensions and trailing bytes', () => {
    expect(codeOf(() => decodeMessage(encodeFrame(new Uint8Array(40).fill(0x91))))).toBe('too_complex');
    expect(codeOf(() => checkMsgpackBounds(Uint8Array.of(0xdd, 0xff, 0xff, 0xff, 0xff, 0xc0)))).toBe('malformed');
    expect(codeOf(() => checkMsgpackBounds(Uint8Array.of(0xc6, 0, 0, 0, 9, 1, 2)))).toBe('malformed');
    expect(codeOf(() => checkMsgpackBounds(Uint8Array.of(0xd6, 0xff, 0, 0, 0, 0)))).toBe('malformed');
    expect(codeOf(() => checkMsgpackBounds(Uint8Array.of(0xc0, 0xc0)))).toBe('malformed');
    expect(codeOf(() => checkMsgpackBounds(Uint8Array.of(0x92, 0xc0)))).toBe('malformed');
  });

  it('counts every value and passes what the codec writes', () => {
    // [1, {"a": 2}]: the array, 1, the map, "a", 2
    const doc = Uint8Array.of(0x92, 0x01, 0x81, 0xa1, 0x61, 0x02);
    expect(() => checkMsgpackBounds(doc, { maxDepth: 2, maxValues: 5 })).not.toThrow();
    expect(codeOf(() => checkMsgpackBounds(doc, { maxDepth: 2, maxValues: 4 }))).toBe('too_complex');
    expect(codeOf(() => checkMsgpackBounds(doc, { maxDepth: 1, maxValues: 5 }))).toBe('too_complex');
    const bytes = encodeAdapterUpdate(update(randomAdapter(8, 4, rng(3))));
    expect(() => checkMsgpackBounds(decodeFrame(bytes))).not.toThrow();
    expect(decodeAdapterUpdate(bytes).adapter.modules.size).toBeGreaterThan(0);
  });
});
