/**
 * Every error Floe-TS raises on bad input is a FloeError with a stable machine-readable `code`,
 * so that a server can turn it into an error reply and a caller can branch on it without parsing text.
 */
export class FloeError extends Error {
  readonly code: string;
  readonly details: Record<string, unknown> | undefined;

  constructor(code: string, message: string, details?: Record<string, unknown>) {
    super(message);
    this.name = new.target.name;
    this.code = code;
    this.details = details;
  }
}

export type CodecErrorCode =
  | 'not_bytes'
  | 'too_large'
  | 'truncated'
  | 'bad_magic'
  | 'unsupported_frame_version'
  | 'bad_header'
  | 'bad_length'
  | 'bad_checksum'
  | 'malformed'
  | 'too_complex'
  | 'invalid'
  | 'bad_tensor'
  | 'non_finite';

/** A byte string that is not a valid Floe frame or message. */
export class CodecError extends FloeError {
  declare readonly code: CodecErrorCode;
  constructor(code: CodecErrorCode, message: string, details?: Record<string, unknown>) {
    super(code, message, details);
  }
}

export type ProtocolErrorCode = 'version_mismatch' | 'invalid_message';

/** A well-formed value that breaks the protocol: wrong version, wrong shape of message. */
export class ProtocolError extends FloeError {
  declare readonly code: ProtocolErrorCode;
  constructor(code: ProtocolErrorCode, message: string, details?: Record<string, unknown>) {
    super(code, message, details);
  }
}

export type AdapterMathErrorCode = 'shape_mismatch' | 'invalid_argument';

/** Adapter tensors whose shapes or arguments do not fit together. */
export class AdapterMathError extends FloeError {
  declare readonly code: AdapterMathErrorCode;
  constructor(code: AdapterMathErrorCode, message: string, details?: Record<string, unknown>) {
    super(code, message, details);
  }
}
