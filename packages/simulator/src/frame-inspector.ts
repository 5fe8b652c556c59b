/**
 * Looks for clients' raw data in what devices send: every 16-byte piece of every client's training and
 * held-out text is hashed (two rolling polynomial hashes, 52 bits together), every 16-byte window of
 * every frame is looked up, and a hit is confirmed against the texts themselves before its bytes count.
 * A frame carries raw data where it shares 16 consecutive bytes with a client's text: far more than
 * chance in float16 adapter tensors, far less than a sentence.
 */
export const PIECE_BYTES = 16;

const P1 = 2147483629;
const P2 = 2147483587;
const B1 = 257;
const B2 = 263;

function power(base: number, exponent: number, modulus: number): number {
  let out = 1;
  for (let i = 0; i < exponent; i++) out = (out * base) % modulus;
  return out;
}
const OUT1 = power(B1, PIECE_BYTES - 1, P1);
const OUT2 = power(B2, PIECE_BYTES - 1, P2);

/** Calls `visit(end, key)` with the hash of every window of PIECE_BYTES bytes ending before `end`. */
function rollingHashes(bytes: Uint8Array, visit: (end: number, key: number) => void): void {
  let h1 = 0;
  let h2 = 0;
  for (let i = 0; i < bytes.length; i++) {
    if (i >= PIECE_BYTES) {
      const out = bytes[i - PIECE_BYTES] as number;
      h1 = (((h1 - out * OUT1) % P1) + P1) % P1;
      h2 = (((h2 - out * OUT2) % P2) + P2) % P2;
    }
    h1 = (h1 * B1 + (bytes[i] as number)) % P1;
    h2 = (h2 * B2 + (bytes[i] as number)) % P2;
    if (i + 1 >= PIECE_BYTES) visit(i + 1, h1 * 2 ** 21 + (h2 & 0x1fffff));
  }
}

export interface Inspection {
  frames: number;
  bytes: number;
  /** Frame bytes inside a 16-byte piece of some client's text. */
  rawBytes: number;
  /** Where raw data was found: client whose text it is, event, the piece (latin1). */
  findings: { client: string; event: string; piece: string }[];
}

export class FrameInspector {
  private readonly keys = new Set<number>();
  private readonly texts: { client: string; bytes: Buffer }[] = [];
  readonly inspection: Inspection = { frames: 0, bytes: 0, rawBytes: 0, findings: [] };

  /** Adds a client's private texts (training and held-out). */
  addClient(client: string, texts: readonly string[]): void {
    const bytes = Buffer.from(texts.join('\n'), 'utf8');
    this.texts.push({ client, bytes });
    rollingHashes(bytes, (_, key) => this.keys.add(key));
  }

  /** Inspects one frame a device sent; returns the raw bytes found in it. */
  inspect(event: string, frame: Uint8Array): number {
    this.inspection.frames++;
    this.inspection.bytes += frame.byteLength;
    let coveredUntil = 0;
    let raw = 0;
    rollingHashes(frame, (end, key) => {
      if (!this.keys.has(key)) return;
      const piece = Buffer.from(frame.subarray(end - PIECE_BYTES, end));
      const owner = this.texts.find((t) => t.bytes.includes(piece));
      if (!owner) return; // a hash collision
      raw += end - Math.max(coveredUntil, end - PIECE_BYTES);
      coveredUntil = end;
      if (this.inspection.findings.length < 20) {
        this.inspection.findings.push({ client: owner.client, event, piece: piece.toString('latin1') });
      }
    });
    this.inspection.rawBytes += raw;
    return raw;
  }
}
