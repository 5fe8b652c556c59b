/**
 * A byte-level BPE tokenizer in Hugging Face's `tokenizer.json` format, loaded with Tokenizers.js
 * (`@huggingface/tokenizers`, pure JS). The cloud model's vocabulary: subword tokens over bytes, with
 * every digit a token of its own (a `Digits` pre-tokenizer before `ByteLevel`, as Llama splits digits).
 *
 * Each token is an exact byte string (`tokenBytes`), which is what aligning a cloud's top-k tokens with
 * a byte-level edge model needs. Byte-level BPE writes a token's bytes as printable characters (GPT-2's
 * `bytes_to_unicode`); `BYTE_OF_CHAR` inverts that table.
 */
import { readFileSync } from 'node:fs';
import { Tokenizer as TokenizersJs } from '@huggingface/tokenizers';
import type { EncodeOptions, TextTokenizer } from './tokenizer.js';

/** What this file uses of Tokenizers.js (its published .d.ts uses extensionless imports NodeNext cannot follow). */
interface JsTokenizer {
  encode(text: string, options: { add_special_tokens: boolean }): { ids: number[] };
}
const JsTokenizer = TokenizersJs as unknown as new (json: object, config: object) => JsTokenizer;

/** GPT-2's map from a byte to the printable character byte-level BPE writes for it. */
function bytesToUnicode(): string[] {
  const printable = new Set<number>();
  for (let b = 0x21; b <= 0x7e; b++) printable.add(b);
  for (let b = 0xa1; b <= 0xac; b++) printable.add(b);
  for (let b = 0xae; b <= 0xff; b++) printable.add(b);
  const chars: string[] = [];
  let next = 0;
  for (let b = 0; b < 256; b++) chars.push(String.fromCodePoint(printable.has(b) ? b : 256 + next++));
  return chars;
}

export const CHAR_OF_BYTE: readonly string[] = bytesToUnicode();
export const BYTE_OF_CHAR: ReadonlyMap<string, number> = new Map(CHAR_OF_BYTE.map((c, b) => [c, b]));

interface TokenizerJson {
  model: { type: string; vocab: Record<string, number> };
  added_tokens?: { id: number; content: string; special: boolean }[];
}

export class BpeTokenizerError extends Error {}

export class BpeTokenizer implements TextTokenizer {
  readonly vocabSize: number;
  readonly bos: number;
  readonly eos: number;
  readonly pad: number;
  private readonly tokenizer: JsTokenizer;
  private readonly bytesOf: (Uint8Array | undefined)[];
  private readonly special = new Set<number>();

  /** The `tokenizer.json` text this tokenizer was built from, saved as it was beside a checkpoint. */
  readonly text: string;

  constructor(json: TokenizerJson, text = `${JSON.stringify(json, null, 2)}\n`) {
    this.text = text;
    if (json.model?.type !== 'BPE') throw new BpeTokenizerError('tokenizer.json: expected a BPE model');
    // encoded without its added tokens: text that looks like a special token stays text; only callers add specials
    this.tokenizer = new JsTokenizer({ ...json, added_tokens: [] }, { clean_up_tokenization_spaces: false });
    const added = json.added_tokens ?? [];
    const ids = [...Object.values(json.model.vocab), ...added.map((t) => t.id)];
    this.vocabSize = Math.max(...ids) + 1;
    this.bytesOf = new Array<Uint8Array | undefined>(this.vocabSize).fill(undefined);
    for (const [token, id] of Object.entries(json.model.vocab)) {
      const bytes = [...token].map((c) => BYTE_OF_CHAR.get(c));
      if (bytes.some((b) => b === undefined)) throw new BpeTokenizerError(`token ${id} is not byte-level: ${token}`);
      this.bytesOf[id] = Uint8Array.from(bytes as number[]);
    }
    const idOf = (content: string) => {
      const token = added.find((t) => t.content === content);
      if (!token) throw new BpeTokenizerError(`tokenizer.json: no special token ${content}`);
      return token.id;
    };
    for (const t of added) this.special.add(t.id);
    this.bos = idOf('<|bos|>');
    this.eos = idOf('<|eos|>');
    this.pad = idOf('<|pad|>');
  }

  static load(file: string): BpeTokenizer {
    const text = readFileSync(file, 'utf8');
    return new BpeTokenizer(JSON.parse(text) as TokenizerJson, text);
  }

  encode(text: string, options: EncodeOptions = {}): number[] {
    const ids = text === '' ? [] : this.tokenizer.encode(text, { add_special_tokens: false }).ids;
    if (options.bos) ids.unshift(this.bos);
    if (options.eos) ids.push(this.eos);
    return ids;
  }

  /** The exact bytes of a token (empty for special tokens). */
  tokenBytes(id: number): Uint8Array {
    return this.bytesOf[id] ?? new Uint8Array(0);
  }

  /** The bytes of a token sequence, special tokens dropped. */
  bytes(ids: readonly number[]): Uint8Array {
    const parts = ids.map((id) => this.tokenBytes(id));
    const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
    let at = 0;
    for (const p of parts) {
      out.set(p, at);
      at += p.length;
    }
    return out;
  }

  /** Special tokens are dropped; invalid UTF-8 (a cut multi-byte character) becomes U+FFFD. */
  decode(ids: readonly number[]): string {
    return new TextDecoder('utf-8', { fatal: false }).decode(this.bytes(ids));
  }

  isSpecial(id: number): boolean {
    return this.special.has(id);
  }
}
