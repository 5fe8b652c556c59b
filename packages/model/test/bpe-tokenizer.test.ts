/**
 * The cloud vocabulary (models/cloud/tokenizer.json, written by `pnpm models:tokenizer`): any text
 * round-trips exactly, every token is an exact byte string, digits are tokens of their own, specials
 * are only what the caller adds, and merges compress prose.
 */
import path from 'node:path';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { TASKS, taskPartition } from '@floe/tasks';
import { BYTE_OF_CHAR, BpeTokenizer, CHAR_OF_BYTE } from '../src/index.js';

const FILE = path.join(import.meta.dirname, '..', '..', '..', 'models', 'cloud', 'tokenizer.json');
const bpe = BpeTokenizer.load(FILE);
const utf8 = (text: string) => new TextEncoder().encode(text);

describe('byte-level BPE tokenizer', () => {
  it('maps the 256 bytes to 256 distinct characters and back', () => {
    expect(new Set(CHAR_OF_BYTE).size).toBe(256);
    CHAR_OF_BYTE.forEach((c, b) => expect(BYTE_OF_CHAR.get(c)).toBe(b));
    expect(CHAR_OF_BYTE[0x20]).toBe('Ġ'); // GPT-2's space
  });

  it('round-trips any string exactly, and its tokens are the exact UTF-8 bytes', () => {
    fc.assert(
      fc.property(fc.string({ unit: 'grapheme', maxLength: 200 }), (text) => {
        const ids = bpe.encode(text);
        expect(bpe.decode(ids)).toBe(text);
        expect(bpe.bytes(ids)).toEqual(utf8(text));
      }),
      { numRuns: 300 },
    );
  });

  it.each(TASKS)('%s: round-trips the held-out general text and compresses it', (task) => {
    const text = taskPartition(task, { seed: 0 }).general.test.documents.slice(0, 200).join('\n\n');
    const ids = bpe.encode(text);
    expect(bpe.decode(ids)).toBe(text);
    // every digit is a token of its own, so no token holds a digit beside anything else
    for (const id of new Set(ids)) {
      const bytes = bpe.tokenBytes(id);
      if (bytes.some((b) => b >= 0x30 && b <= 0x39)) expect(bytes.length).toBe(1);
    }
    if (task !== 'arithmetic') expect(utf8(text).length / ids.length).toBeGreaterThan(2);
  });

  it('adds specials only when asked; special-looking text stays text', () => {
    const text = 'a <|bos|> b';
    const ids = bpe.encode(text, { bos: true, eos: true });
    expect(ids[0]).toBe(bpe.bos);
    expect(ids.at(-1)).toBe(bpe.eos);
    expect(ids.slice(1, -1).some((id) => bpe.isSpecial(id))).toBe(false);
    expect(bpe.decode(ids)).toBe(text);
    expect(bpe.tokenBytes(bpe.pad)).toHaveLength(0);
    expect(new Set([bpe.bos, bpe.eos, bpe.pad]).size).toBe(3);
    expect(bpe.vocabSize).toBe(4096);
  });

  it('holds every single byte as a token, so no byte is ever lost', () => {
    for (let b = 0; b < 256; b++) expect(bpe.tokenBytes(b)).toEqual(Uint8Array.of(b));
    expect(bpe.bytes(bpe.encode('\u0000\u007f😀'))).toEqual(utf8('\u0000\u007f😀'));
  });
});
