import { getFloat16, setFloat16 } from '@petamoriken/float16';
import { describe, expect, it } from 'vitest';
import { float16BitsToFloat32, float32ToFloat16Bits, isFloat16NonFinite } from '../src/index.js';
import { rng } from './fixtures.js';

describe('float16 conversion (checked against @petamoriken/float16 element by element)', () => {
  it('widens every one of the 65,536 half-precision bit patterns exactly', () => {
    const bits = Uint16Array.from({ length: 65536 }, (_, i) => i);
    const ours = float16BitsToFloat32(bits);
    const view = new DataView(bits.buffer);
    for (let i = 0; i < 65536; i++) {
      const reference = getFloat16(view, i * 2, true);
      if (Number.isNaN(reference)) expect(ours[i]).toBeNaN();
      else expect(Object.is(ours[i], reference)).toBe(true);
      expect(isFloat16NonFinite(i)).toBe(!Number.isFinite(reference));
    }
  });

  it('rounds f32 to the nearest half the way the reference does, including overflow and subnormals', () => {
    const random = rng(9);
    const values = Float32Array.from({ length: 20000 }, (_, i) => {
      const magnitude = 2 ** (random() * 40 - 28);
      return (i % 2 ? -1 : 1) * magnitude;
    });
    values.set([0, -0, 65504, 65520, 1e6, 5.96e-8, 2.98e-8, 1 + 2 ** -11, 1 + 3 * 2 ** -11], 0);
    const ours = float32ToFloat16Bits(values);
    const reference = new DataView(new ArrayBuffer(2));
    for (let i = 0; i < values.length; i++) {
      setFloat16(reference, 0, values[i]!, true);
      expect(ours[i]).toBe(reference.getUint16(0, true));
    }
  });
});
