import { CodecError } from '../errors.js';
import type { TensorDType, WireTensor } from '../protocol/schemas.js';
import { float16BitsToFloat32, float32ToFloat16Bits, isFloat16NonFinite } from './float16.js';

/** A named dense f32 tensor, row-major. The in-memory form of every adapter tensor. */
export interface Tensor {
  name: string;
  shape: number[];
  data: Float32Array;
}

/** The largest element count a single tensor may announce (2^28 f32 = 1 GiB). */
export const MAX_TENSOR_ELEMENTS = 2 ** 28;

const BYTES_PER_ELEMENT: Record<TensorDType, number> = { f32: 4, f16: 2 };

if (new Uint8Array(Uint16Array.of(1).buffer)[0] !== 1) {
  throw new Error('Floe-TS wire tensors are little-endian; this platform is big-endian and is not supported');
}

export function elementCount(shape: readonly number[]): number {
  return shape.reduce((product, dim) => product * dim, 1);
}

/** The wire form of `tensor`. For f32 the bytes are a view of `tensor.data`, not a copy. */
export function toWireTensor(tensor: Tensor, dtype: TensorDType = 'f32'): WireTensor {
  if (elementCount(tensor.shape) !== tensor.data.length) {
    throw new CodecError(
      'bad_tensor',
      `tensor ${tensor.name}: shape [${tensor.shape.join(', ')}] does not hold ${String(tensor.data.length)} elements`,
    );
  }
  const source = dtype === 'f32' ? tensor.data : float32ToFloat16Bits(tensor.data);
  return {
    name: tensor.name,
    dtype,
    shape: [...tensor.shape],
    data: new Uint8Array(source.buffer, source.byteOffset, source.byteLength),
  };
}

/** Checks that a schema-valid wire tensor's byte count matches its dtype and shape. */
export function checkWireTensorSize(wire: WireTensor): void {
  const count = elementCount(wire.shape);
  if (count > MAX_TENSOR_ELEMENTS) {
    throw new CodecError(
      'bad_tensor',
      `tensor ${wire.name}: ${String(count)} elements exceeds the limit of ${String(MAX_TENSOR_ELEMENTS)}`,
    );
  }
  const expected = count * BYTES_PER_ELEMENT[wire.dtype];
  if (wire.data.byteLength !== expected) {
    throw new CodecError(
      'bad_tensor',
      `tensor ${wire.name}: ${wire.dtype} shape [${wire.shape.join(', ')}] needs ${String(expected)} bytes, got ${String(wire.data.byteLength)}`,
    );
  }
}

/**
 * Checks a received wire tensor (size, and finite values unless told otherwise) and returns it with
 * its bytes copied into an owned, aligned buffer, so it no longer aliases the received frame.
 */
export function ownWireTensor(wire: WireTensor, requireFinite = true): WireTensor {
  checkWireTensorSize(wire);
  const owned = new Uint8Array(wire.data);
  if (requireFinite) {
    const index = firstNonFinite(owned, wire.dtype);
    if (index >= 0) {
      throw new CodecError('non_finite', `tensor ${wire.name}: element ${String(index)} is not finite`, {
        tensor: wire.name,
        index,
      });
    }
  }
  return { ...wire, shape: [...wire.shape], data: owned };
}

/** The in-memory form of an owned wire tensor (see ownWireTensor). */
export function fromWireTensor(wire: WireTensor): Tensor {
  const { data } = wire;
  if (wire.dtype === 'f16') {
    const bits = new Uint16Array(data.buffer.slice(data.byteOffset, data.byteOffset + data.byteLength));
    return { name: wire.name, shape: [...wire.shape], data: float16BitsToFloat32(bits) };
  }
  const aligned = data.byteOffset % 4 === 0 ? data : new Uint8Array(data);
  return {
    name: wire.name,
    shape: [...wire.shape],
    data: new Float32Array(aligned.buffer, aligned.byteOffset, aligned.byteLength / 4),
  };
}

function firstNonFinite(bytes: Uint8Array, dtype: TensorDType): number {
  if (dtype === 'f16') {
    const bits = new Uint16Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 2);
    for (let i = 0; i < bits.length; i++) if (isFloat16NonFinite(bits[i] as number)) return i;
    return -1;
  }
  const values = new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4);
  for (let i = 0; i < values.length; i++) if (!Number.isFinite(values[i])) return i;
  return -1;
}
