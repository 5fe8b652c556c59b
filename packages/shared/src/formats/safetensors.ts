/**
 * safetensors: an 8-byte little-endian header length, a JSON header mapping each tensor name to
 * { dtype, shape, data_offsets: [begin, end] } (offsets into the data section), then the data.
 * We read F32, F16 and BF16 into f32 and write F32, F16 or BF16.
 */
import { float16BitsToFloat32, float32ToFloat16Bits } from '../codec/float16.js';
import type { Tensor } from '../codec/tensor.js';

export type SafetensorsDType = 'F32' | 'F16' | 'BF16';
const BYTES: Record<SafetensorsDType, number> = { F32: 4, F16: 2, BF16: 2 };
const MAX_HEADER_BYTES = 100 * 1024 * 1024;

export class SafetensorsError extends Error {
  override name = 'SafetensorsError';
}

interface HeaderEntry {
  dtype: string;
  shape: number[];
  data_offsets: [number, number];
}

export interface SafetensorsFile {
  tensors: Map<string, Tensor>;
  metadata: Record<string, string>;
}

export function parseSafetensors(bytes: Uint8Array): SafetensorsFile {
  if (bytes.byteLength < 8) throw new SafetensorsError('file shorter than its 8-byte header length');
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const headerLength = Number(view.getBigUint64(0, true));
  if (headerLength > MAX_HEADER_BYTES || 8 + headerLength > bytes.byteLength) {
    throw new SafetensorsError(`header length ${headerLength} does not fit in a ${bytes.byteLength}-byte file`);
  }
  let header: Record<string, unknown>;
  try {
    header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + headerLength))) as Record<string, unknown>;
  } catch (error) {
    throw new SafetensorsError(`header is not JSON: ${(error as Error).message}`);
  }
  const data = bytes.subarray(8 + headerLength);
  const tensors = new Map<string, Tensor>();
  let metadata: Record<string, string> = {};
  for (const [name, raw] of Object.entries(header)) {
    if (name === '__metadata__') {
      metadata = raw as Record<string, string>;
      continue;
    }
    if (!isHeaderEntry(raw)) throw new SafetensorsError(`${name}: malformed header entry`);
    const entry = raw;
    const dtype = entry.dtype as SafetensorsDType;
    if (!(dtype in BYTES))
      throw new SafetensorsError(`${name}: dtype ${entry.dtype} is not supported (F32, F16, BF16)`);
    const count = entry.shape.reduce((a, b) => a * b, 1);
    const [begin, end] = entry.data_offsets;
    if (end - begin !== count * BYTES[dtype] || begin < 0 || end > data.byteLength) {
      throw new SafetensorsError(
        `${name}: offsets [${begin}, ${end}] do not hold ${dtype} ${JSON.stringify(entry.shape)}`,
      );
    }
    const raw8 = data.slice(begin, end); // a copy, aligned at offset 0
    tensors.set(name, { name, shape: [...entry.shape], data: toFloat32(raw8, dtype) });
  }
  return { tensors, metadata };
}

function isHeaderEntry(value: unknown): value is HeaderEntry {
  const entry = value as Partial<HeaderEntry> | null;
  return (
    typeof entry === 'object' &&
    entry !== null &&
    typeof entry.dtype === 'string' &&
    Array.isArray(entry.shape) &&
    entry.shape.every((d) => Number.isSafeInteger(d) && d >= 0) &&
    Array.isArray(entry.data_offsets) &&
    entry.data_offsets.length === 2 &&
    entry.data_offsets.every((d) => Number.isSafeInteger(d))
  );
}

function toFloat32(bytes: Uint8Array, dtype: SafetensorsDType): Float32Array {
  if (dtype === 'F32') return new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4);
  const halves = new Uint16Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 2);
  if (dtype === 'F16') return float16BitsToFloat32(halves);
  // bfloat16 is the upper half of an f32
  const words = new Uint32Array(halves.length);
  for (let i = 0; i < halves.length; i++) words[i] = (halves[i] as number) << 16;
  return new Float32Array(words.buffer);
}

function fromFloat32(values: Float32Array, dtype: SafetensorsDType): Uint8Array {
  if (dtype === 'F32') return new Uint8Array(values.buffer, values.byteOffset, values.byteLength);
  if (dtype === 'F16') {
    const bits = float32ToFloat16Bits(values);
    return new Uint8Array(bits.buffer, bits.byteOffset, bits.byteLength);
  }
  // bfloat16, round to nearest even
  const words = new Uint32Array(values.buffer, values.byteOffset, values.length);
  const halves = new Uint16Array(values.length);
  for (let i = 0; i < words.length; i++) {
    const w = words[i] as number;
    const isNaN = (w & 0x7f800000) === 0x7f800000 && (w & 0x7fffff) !== 0;
    halves[i] = isNaN ? (w >>> 16) | 0x40 : ((w + 0x7fff + ((w >>> 16) & 1)) >>> 16) & 0xffff;
  }
  return new Uint8Array(halves.buffer);
}

/** Serializes tensors in the given order (sorted by name when not given) with 8-byte aligned data. */
export function serializeSafetensors(
  tensors: Iterable<Tensor>,
  dtype: SafetensorsDType = 'F32',
  metadata: Record<string, string> = {},
): Uint8Array {
  const list = [...tensors];
  const header: Record<string, unknown> = { __metadata__: { format: 'pt', ...metadata } };
  const chunks: Uint8Array[] = [];
  let offset = 0;
  for (const tensor of list) {
    const bytes = fromFloat32(tensor.data, dtype);
    header[tensor.name] = { dtype, shape: tensor.shape, data_offsets: [offset, offset + bytes.byteLength] };
    chunks.push(bytes);
    offset += bytes.byteLength;
  }
  let json = JSON.stringify(header);
  const encoder = new TextEncoder();
  json += ' '.repeat((8 - ((8 + encoder.encode(json).byteLength) % 8)) % 8);
  const headerBytes = encoder.encode(json);
  const out = new Uint8Array(8 + headerBytes.byteLength + offset);
  new DataView(out.buffer).setBigUint64(0, BigInt(headerBytes.byteLength), true);
  out.set(headerBytes, 8);
  let position = 8 + headerBytes.byteLength;
  for (const chunk of chunks) {
    out.set(chunk, position);
    position += chunk.byteLength;
  }
  return out;
}
