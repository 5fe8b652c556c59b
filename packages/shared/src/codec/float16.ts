import { Float16Array } from '@petamoriken/float16';

/** IEEE 754 binary16 bits of each element, rounded to nearest even (overflow becomes infinity). */
export function float32ToFloat16Bits(values: Float32Array): Uint16Array {
  // The polyfill's constructor converts in a tight loop; its indexed access goes through a Proxy
  // and is about 50x slower, so only its backing buffer is read.
  const half = new Float16Array(values);
  return new Uint16Array(half.buffer, 0, values.length);
}

let halfTable: Float32Array | undefined;

/** Every binary16 bit pattern decoded once: widening is exact, so a table lookup is the whole job. */
function float16Table(): Float32Array {
  if (halfTable) return halfTable;
  const table = new Float32Array(65536);
  for (let bits = 0; bits < 65536; bits++) {
    const sign = bits & 0x8000 ? -1 : 1;
    const exponent = (bits >> 10) & 0x1f;
    const mantissa = bits & 0x3ff;
    if (exponent === 0) table[bits] = sign * mantissa * 2 ** -24;
    else if (exponent === 0x1f) table[bits] = mantissa ? Number.NaN : sign * Number.POSITIVE_INFINITY;
    else table[bits] = sign * (1 + mantissa / 1024) * 2 ** (exponent - 15);
  }
  halfTable = table;
  return table;
}

export function float16BitsToFloat32(bits: Uint16Array): Float32Array {
  const table = float16Table();
  const out = new Float32Array(bits.length);
  for (let i = 0; i < bits.length; i++) out[i] = table[bits[i] as number] as number;
  return out;
}

/** True when the binary16 pattern is infinite or NaN (all exponent bits set). */
export function isFloat16NonFinite(bits: number): boolean {
  return (bits & 0x7c00) === 0x7c00;
}
