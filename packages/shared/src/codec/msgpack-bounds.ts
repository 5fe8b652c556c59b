/**
 * A structural pre-scan of msgpack bytes, run before any decoder allocates. A decoder turns one input
 * byte (0x80, an empty map) into a whole object, so a frame that passes the size limit can still cost
 * tens of times its size in memory and seconds of CPU. The scan walks the bytes without allocating and
 * refuses deep nesting, too many values in total, containers that announce more elements than bytes
 * remain, and extension types (Floe messages use none).
 */
import { CodecError } from '../errors.js';

export interface MsgpackBounds {
  /** Containers inside containers; a message is a few levels deep. */
  maxDepth: number;
  /** Values of every kind (scalars, strings, binaries, containers) in the whole document. */
  maxValues: number;
}

export const DEFAULT_MSGPACK_BOUNDS: MsgpackBounds = { maxDepth: 16, maxValues: 100_000 };

/** Throws CodecError('too_complex' | 'malformed') unless `bytes` is one msgpack value within `bounds`. */
export function checkMsgpackBounds(bytes: Uint8Array, bounds: MsgpackBounds = DEFAULT_MSGPACK_BOUNDS): void {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const end = bytes.byteLength;
  // remaining[i]: values still expected by the container at depth i (the top level expects one)
  const remaining: number[] = [1];
  let offset = 0;
  let values = 0;

  const need = (n: number) => {
    if (offset + n > end) throw new CodecError('malformed', `msgpack value runs past the end at byte ${offset}`);
  };
  const skip = (n: number) => {
    need(n);
    offset += n;
  };
  const open = (elements: number) => {
    // every element takes at least one byte: a count larger than what is left is a lie
    if (elements > end - offset) {
      throw new CodecError(
        'malformed',
        `msgpack container announces ${elements} values with ${end - offset} bytes left`,
      );
    }
    if (elements === 0) return;
    if (remaining.length > bounds.maxDepth) {
      throw new CodecError('too_complex', `msgpack nesting deeper than ${bounds.maxDepth}`);
    }
    remaining.push(elements);
  };

  while (remaining.length > 0) {
    const top = remaining.length - 1;
    if (remaining[top] === 0) {
      remaining.pop();
      continue;
    }
    remaining[top] = (remaining[top] as number) - 1;
    if (++values > bounds.maxValues) {
      throw new CodecError('too_complex', `msgpack document holds more than ${bounds.maxValues} values`);
    }
    need(1);
    const b = bytes[offset++] as number;
    if (b <= 0x7f || b >= 0xe0 || b === 0xc0 || b === 0xc2 || b === 0xc3) continue;
    if (b <= 0x8f) open(2 * (b & 0x0f));
    else if (b <= 0x9f) open(b & 0x0f);
    else if (b <= 0xbf) skip(b & 0x1f);
    else {
      switch (b) {
        case 0xc4:
        case 0xd9:
          need(1);
          skip(1 + view.getUint8(offset));
          break;
        case 0xc5:
        case 0xda:
          need(2);
          skip(2 + view.getUint16(offset));
          break;
        case 0xc6:
        case 0xdb:
          need(4);
          skip(4 + view.getUint32(offset));
          break;
        case 0xcc:
        case 0xd0:
          skip(1);
          break;
        case 0xcd:
        case 0xd1:
          skip(2);
          break;
        case 0xca:
        case 0xce:
        case 0xd2:
          skip(4);
          break;
        case 0xcb:
        case 0xcf:
        case 0xd3:
          skip(8);
          break;
        case 0xdc:
          need(2);
          offset += 2;
          open(view.getUint16(offset - 2));
          break;
        case 0xdd:
          need(4);
          offset += 4;
          open(view.getUint32(offset - 4));
          break;
        case 0xde:
          need(2);
          offset += 2;
          open(2 * view.getUint16(offset - 2));
          break;
        case 0xdf:
          need(4);
          offset += 4;
          open(2 * view.getUint32(offset - 4));
          break;
        default: // 0xc1 (never used) and every extension type (0xc7-0xc9, 0xd4-0xd8)
          throw new CodecError('malformed', `msgpack type 0x${b.toString(16)} is not allowed in a Floe message`);
      }
    }
  }
  if (offset !== end) throw new CodecError('malformed', `${end - offset} bytes after the msgpack value`);
}
