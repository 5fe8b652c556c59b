/**
 * Tokens as strings in OpenAI's completions API: a token whose bytes are valid UTF-8 is that text;
 * one that cuts a character (byte-level BPE tokens may) is written `bytes:\xNN...`, as OpenAI does.
 * The two functions are inverses, so a client recovers every top-k token's exact bytes.
 */
const strict = new TextDecoder('utf-8', { fatal: true });

export function tokenText(bytes: Uint8Array): string {
  try {
    return strict.decode(bytes);
  } catch {
    return `bytes:${[...bytes].map((b) => `\\x${b.toString(16).padStart(2, '0')}`).join('')}`;
  }
}

export function tokenTextBytes(text: string): Uint8Array {
  const escaped = /^bytes:((?:\\x[0-9a-fA-F]{2})+)$/.exec(text);
  if (escaped) {
    const hex = (escaped[1] as string).split('\\x').slice(1);
    return Uint8Array.from(hex.map((h) => parseInt(h, 16)));
  }
  return new TextEncoder().encode(text);
}

/** The longest prefix of `bytes` that ends on a character boundary (a cut character is held back). */
export function completeUtf8Length(bytes: Uint8Array): number {
  let start = bytes.length;
  // walk back over at most 3 continuation bytes to the lead byte of the last character
  while (start > 0 && bytes.length - start < 4 && ((bytes[start - 1] as number) & 0xc0) === 0x80) start--;
  if (start === 0) return bytes.length;
  const lead = bytes[start - 1] as number;
  const need = lead >= 0xf0 ? 4 : lead >= 0xe0 ? 3 : lead >= 0xc0 ? 2 : 1;
  return bytes.length - (start - 1) >= need ? bytes.length : start - 1;
}
