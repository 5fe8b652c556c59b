/**
 * Byte-level tokenizer: ids 0-255 are the UTF-8 bytes, then special tokens. Any text round-trips,
 * and the next-token distribution of a byte model can be aligned with any cloud tokenizer.
 */
export const SPECIAL_TOKENS = { bos: 256, eos: 257, pad: 258 } as const;
export const BYTE_VOCAB_SIZE = 259;

const encoder = new TextEncoder();
const decoder = new TextDecoder('utf-8', { fatal: false });

export interface EncodeOptions {
  bos?: boolean;
  eos?: boolean;
}

/**
 * What generation, evaluation and training rows need of a vocabulary: text to ids and back, and the exact
 * bytes of every token (so that bits per byte and byte-level alignment are defined for any tokenizer).
 */
export interface TextTokenizer {
  readonly vocabSize: number;
  readonly bos: number;
  readonly eos: number;
  readonly pad: number;
  encode(text: string, options?: EncodeOptions): number[];
  decode(ids: readonly number[]): string;
  /** The bytes of a token sequence, special tokens dropped. */
  bytes(ids: readonly number[]): Uint8Array;
  /** The exact bytes of one token (empty for special tokens). */
  tokenBytes(id: number): Uint8Array;
  isSpecial(id: number): boolean;
}

const BYTE_TOKENS = Array.from({ length: 256 }, (_, b) => Uint8Array.of(b));

export class ByteTokenizer implements TextTokenizer {
  readonly vocabSize = BYTE_VOCAB_SIZE;
  readonly bos = SPECIAL_TOKENS.bos;
  readonly eos = SPECIAL_TOKENS.eos;
  readonly pad = SPECIAL_TOKENS.pad;

  encode(text: string, options: EncodeOptions = {}): number[] {
    const ids = Array.from(encoder.encode(text));
    if (options.bos) ids.unshift(this.bos);
    if (options.eos) ids.push(this.eos);
    return ids;
  }

  /** Special tokens are dropped; invalid UTF-8 (a cut multi-byte character) becomes U+FFFD. */
  decode(ids: readonly number[]): string {
    return decoder.decode(this.bytes(ids));
  }

  bytes(ids: readonly number[]): Uint8Array {
    return Uint8Array.from(ids.filter((id) => id >= 0 && id < 256));
  }

  tokenBytes(id: number): Uint8Array {
    return BYTE_TOKENS[id] ?? new Uint8Array(0);
  }

  isSpecial(id: number): boolean {
    return id >= 256;
  }
}

/** Throws unless `tokenizer` is the vocabulary `config` was built for (same size and special ids). */
export function checkTokenizer(
  config: { vocab_size: number; bos_token_id: number; eos_token_id: number; pad_token_id: number },
  tokenizer: TextTokenizer,
): void {
  const pairs = [
    ['vocab_size', config.vocab_size, tokenizer.vocabSize],
    ['bos_token_id', config.bos_token_id, tokenizer.bos],
    ['eos_token_id', config.eos_token_id, tokenizer.eos],
    ['pad_token_id', config.pad_token_id, tokenizer.pad],
  ] as const;
  const wrong = pairs.filter(([, a, b]) => a !== b);
  if (wrong.length > 0) {
    throw new Error(
      `the tokenizer does not fit the model: ${wrong.map(([k, a, b]) => `${k} ${a} in config.json, ${b} in the tokenizer`).join('; ')}`,
    );
  }
}
