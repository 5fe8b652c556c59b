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

export class ByteTokenizer {
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

  isSpecial(id: number): boolean {
    return id >= 256;
  }
}
