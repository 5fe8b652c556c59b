/**
 * Draft bytes for speculative decoding from byte n-grams: for each order, a hashed table keeps the
 * byte that most often followed a context (a majority vote per slot, so memory is fixed whatever the
 * corpus). A draft only decides how many positions one model run checks, never what is generated, so
 * hash collisions cost speed, not correctness.
 */

export interface ByteDrafter {
  /** Up to `count` bytes likely to follow `context` (its last bytes matter); fewer when unsure. */
  draft(context: readonly number[], count: number): number[];
}

export interface NgramDrafterOptions {
  /** Context lengths tried longest first (default 8, 5, 3). */
  orders?: readonly number[];
  /** log2 of the slots per order (default 20: 3 MiB per order). */
  tableBits?: number;
}

export class NgramDrafter implements ByteDrafter {
  private readonly orders: number[];
  private readonly mask: number;
  private readonly next: Uint8Array[];
  private readonly votes: Uint16Array[];

  constructor(options: NgramDrafterOptions = {}) {
    this.orders = [...(options.orders ?? [8, 5, 3])].sort((a, b) => b - a);
    if (this.orders.some((n) => !Number.isInteger(n) || n < 1 || n > 32)) {
      throw new Error(`orders must be integers in 1..32, got ${this.orders.join(', ')}`);
    }
    const bits = options.tableBits ?? 20;
    if (!Number.isInteger(bits) || bits < 4 || bits > 26) throw new Error(`tableBits must be 4..26, got ${bits}`);
    this.mask = (1 << bits) - 1;
    this.next = this.orders.map(() => new Uint8Array(1 << bits));
    this.votes = this.orders.map(() => new Uint16Array(1 << bits));
  }

  static fromTexts(texts: Iterable<string>, options: NgramDrafterOptions = {}): NgramDrafter {
    const drafter = new NgramDrafter(options);
    const encoder = new TextEncoder();
    for (const text of texts) drafter.learn(encoder.encode(text));
    return drafter;
  }

  /** Counts every (context, next byte) pair of `bytes`. */
  learn(bytes: ArrayLike<number>): void {
    this.orders.forEach((n, o) => {
      const next = this.next[o] as Uint8Array;
      const votes = this.votes[o] as Uint16Array;
      for (let end = n; end < bytes.length; end++) {
        const slot = this.slot(bytes, end - n, end);
        const byte = bytes[end] as number;
        const count = votes[slot] as number;
        if (count === 0) {
          next[slot] = byte;
          votes[slot] = 1;
        } else if (next[slot] === byte) {
          if (count < 0xffff) votes[slot] = count + 1;
        } else {
          votes[slot] = count - 1;
        }
      }
    });
  }

  draft(context: readonly number[], count: number): number[] {
    const work = context.slice(-Math.max(...this.orders));
    const out: number[] = [];
    while (out.length < count) {
      const byte = this.predict(work);
      if (byte === undefined) break;
      out.push(byte);
      work.push(byte);
    }
    return out;
  }

  private predict(context: readonly number[]): number | undefined {
    for (let o = 0; o < this.orders.length; o++) {
      const n = this.orders[o] as number;
      if (context.length < n) continue;
      const slot = this.slot(context, context.length - n, context.length);
      if ((this.votes[o] as Uint16Array)[slot] !== 0) return (this.next[o] as Uint8Array)[slot];
    }
    return undefined;
  }

  /** FNV-1a over bytes [from, to), mixed with the length so orders sharing a table size differ. */
  private slot(bytes: ArrayLike<number>, from: number, to: number): number {
    let h = 0x811c9dc5 ^ (to - from);
    for (let i = from; i < to; i++) h = Math.imul(h ^ (bytes[i] as number), 0x01000193);
    return (h ^ (h >>> 15)) & this.mask;
  }
}
