/** The frame inspector finds a client's text inside a frame, counts exactly its bytes, and nothing else. */
import { describe, expect, it } from 'vitest';
import { encodeMessage, toWireAdapter } from '@floe/shared';
import { initLora, MODEL_PRESETS } from '@floe/model';
import { FrameInspector, PIECE_BYTES } from '../src/index.js';

const SPEECH =
  'Fellow citizens of the Senate and of the House of Representatives: among the vicissitudes incident to life';
const EMAIL = 'Subject: your invoice is attached, please confirm the wire transfer today';

function inspector(): FrameInspector {
  const inspector = new FrameInspector();
  inspector.addClient('speech-0', [SPEECH]);
  inspector.addClient('email-0', [EMAIL]);
  return inspector;
}

describe('FrameInspector', () => {
  it('counts the bytes of a private passage hidden in a frame, and names its owner', () => {
    const passage = SPEECH.slice(10, 10 + 40);
    const frame = new Uint8Array(300).map((_, i) => (i * 37) % 251);
    frame.set(Buffer.from(passage, 'utf8'), 123);
    const found = inspector();
    expect(found.inspect('update', frame)).toBe(40);
    expect(found.inspection.findings[0]).toMatchObject({ client: 'speech-0', event: 'update' });
    expect(found.inspection.rawBytes).toBe(40);
  });

  it("does not count a piece shorter than a window, or two clients' halves spliced together", () => {
    const short = Buffer.from(EMAIL.slice(0, PIECE_BYTES - 1), 'utf8');
    const spliced = Buffer.concat([Buffer.from(SPEECH.slice(0, 10)), Buffer.from(EMAIL.slice(0, 10))]);
    const found = inspector();
    expect(found.inspect('hello', short)).toBe(0);
    expect(found.inspect('hello', spliced)).toBe(0);
  });

  it('finds nothing in a real update frame of adapter tensors', () => {
    const adapter = initLora(
      MODEL_PRESETS['edge-tiny'],
      { r: 4, lora_alpha: 8, target_modules: ['q_proj', 'v_proj'] },
      3,
    );
    const frame = encodeMessage({
      type: 'update',
      jobId: 'job',
      round: 0,
      numSamples: 10,
      plan: { rank: 4, targetModules: ['q_proj', 'v_proj'] },
      adapter: toWireAdapter(adapter),
      metrics: { loss: 1 },
    });
    const found = inspector();
    expect(found.inspect('update', frame)).toBe(0);
    expect(found.inspection.bytes).toBe(frame.byteLength);
    // and the same bytes with 31 bytes of a private email inside the tensors are caught
    const leaky = Uint8Array.from(frame);
    leaky.set(Buffer.from(EMAIL.slice(9, 40), 'utf8'), Math.floor(frame.byteLength / 2));
    expect(found.inspect('update', leaky)).toBe(31);
  });
});
