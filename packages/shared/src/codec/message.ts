import { Packr } from 'msgpackr';
import { CodecError, ProtocolError } from '../errors.js';
import type { Message, MessageOf, MessageType, WireAdapter } from '../protocol/schemas.js';
import { parseMessage } from '../protocol/validate.js';
import { DEFAULT_MAX_FRAME_BYTES, decodeFrame, encodeFrame } from './frame.js';
import { DEFAULT_MSGPACK_BOUNDS, type MsgpackBounds, checkMsgpackBounds } from './msgpack-bounds.js';
import { checkWireTensorSize, ownWireTensor } from './tensor.js';

// Plain msgpack maps (no msgpackr record extension) so any msgpack implementation can read a frame.
const packr = new Packr({ useRecords: false, mapsAsObjects: true, int64AsType: 'number', moreTypes: false });

export interface DecodeOptions {
  /** Frames larger than this are refused before any parsing. */
  maxBytes?: number;
  /** Refuse tensors holding NaN or infinity (default true). */
  requireFinite?: boolean;
  /** Nesting and value count allowed before decoding (default DEFAULT_MSGPACK_BOUNDS). */
  bounds?: MsgpackBounds;
}

/** Validates `message` and encodes it as one frame. Refuses to emit what a peer would refuse. */
export function encodeMessage(message: Message): Uint8Array {
  const valid = parseMessage(message);
  forEachAdapter(valid, (adapter) => adapter.tensors.forEach(checkWireTensorSize));
  return encodeFrame(packr.pack(valid));
}

/**
 * Decodes one frame into a validated message. Anything else raises CodecError (the bytes) or
 * ProtocolError (the content); no other exception escapes.
 */
export function decodeMessage(bytes: unknown, options: DecodeOptions = {}): Message {
  const payload = decodeFrame(bytes, options.maxBytes ?? DEFAULT_MAX_FRAME_BYTES);
  checkMsgpackBounds(payload, options.bounds ?? DEFAULT_MSGPACK_BOUNDS);
  let value: unknown;
  try {
    value = packr.unpack(payload);
  } catch (error) {
    const reason = error instanceof Error ? error.message : String(error);
    throw new CodecError('malformed', `payload is not valid msgpack: ${reason.slice(0, 200)}`);
  }
  const message = parseMessage(value);
  const requireFinite = options.requireFinite ?? true;
  forEachAdapter(message, (adapter) => {
    adapter.tensors = adapter.tensors.map((tensor) => ownWireTensor(tensor, requireFinite));
  });
  return message;
}

/** decodeMessage, and the message must be of `type`. */
export function decodeMessageOf<T extends MessageType>(
  bytes: unknown,
  type: T,
  options: DecodeOptions = {},
): MessageOf<T> {
  const message = decodeMessage(bytes, options);
  if (message.type !== type) {
    throw new ProtocolError('invalid_message', `expected a ${type} message, got ${message.type}`);
  }
  return message as MessageOf<T>;
}

function forEachAdapter(message: Message, visit: (adapter: WireAdapter) => void): void {
  if ((message.type === 'update' || message.type === 'round_start') && message.adapter) visit(message.adapter);
}
