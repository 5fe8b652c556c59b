import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  type ByteDrafter,
  type LlamaConfig,
  ModelByteSource,
  NgramDrafter,
  OrtDecoder,
  OrtLlama,
  Random,
  SpeculativeByteSource,
  generateBytes,
} from '../src/index.js';
import { maxAbsDiff, randomIds, randomLora, randomWeights, tinyConfig } from './helpers.js';

// GroupQueryAttention's rotary needs head_dim a multiple of 16: 64 / 4 heads, 2 key/value heads.
const config: LlamaConfig = tinyConfig({
  hidden_size: 64,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  num_hidden_layers: 2,
  max_position_embeddings: 160,
});
const weights = randomWeights(config, 21);
const adapter = randomLora(config, 4, ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'down_proj'], 22);
const V = config.vocab_size;

let reference: OrtLlama;
let decoder: OrtDecoder;

beforeAll(async () => {
  reference = await OrtLlama.create(config, weights, { loraModules: 'all' });
  decoder = await OrtDecoder.create(config, weights, { loraModules: 'all' });
});

afterAll(async () => {
  await reference.release();
  await decoder.release();
});

/** OrtLlama's logits for the last `count` positions of `ids`, computed in one pass. */
async function referenceTail(ids: number[], count: number, lora: typeof adapter | undefined): Promise<Float32Array> {
  const { logits } = await reference.forward([ids], { attentionMask: [ids.map(() => 1)], lora });
  return logits.subarray((ids.length - count) * V);
}

describe('OrtDecoder (GroupQueryAttention, cache kept in JS)', () => {
  it('matches OrtLlama through a prompt, single steps, several tokens at once and cache growth', async () => {
    const random = new Random(5);
    const batch = decoder.batch(1);
    let ids = randomIds(random, 1, 20, 256)[0] as number[];
    expect(maxAbsDiff(await batch.append([ids], adapter), await referenceTail(ids, ids.length, adapter))).toBeLessThan(
      1e-4,
    );
    // past 64 positions the cache is reallocated and copied
    for (let step = 0; step < 60; step++) {
      const chunk =
        step % 7 === 3 ? [random.integer(256), random.integer(256), random.integer(256)] : [random.integer(256)];
      ids = [...ids, ...chunk];
      const logits = await batch.append([chunk], adapter);
      expect(maxAbsDiff(logits, await referenceTail(ids, chunk.length, adapter))).toBeLessThan(1e-4);
    }
    expect(batch.lengths).toEqual([ids.length]);
  });

  it('continues correctly after a row is cut back (rejected draft tokens)', async () => {
    const random = new Random(6);
    const batch = decoder.batch(1);
    const prompt = randomIds(random, 1, 30, 256)[0] as number[];
    await batch.append([prompt]);
    await batch.append([[1, 2, 3, 4, 5]]);
    batch.truncate(0, 32); // keep 1, 2
    const logits = await batch.append([[9, 8]]);
    expect(maxAbsDiff(logits, await referenceTail([...prompt, 1, 2, 9, 8], 2, undefined))).toBeLessThan(1e-4);
    expect(() => batch.truncate(0, 40)).toThrow(/holds 34 tokens/);
  });

  it('decodes rows of different lengths together, each as if alone', async () => {
    const random = new Random(7);
    const lengths = [5, 17, 11];
    const prompts = lengths.map((n) => randomIds(random, 1, n, 256)[0] as number[]);
    const batch = decoder.batch(3);
    const first = await batch.append(prompts, adapter);
    const seq = Math.max(...lengths);
    for (const [b, prompt] of prompts.entries()) {
      const last = first.subarray((b * seq + prompt.length - 1) * V, (b * seq + prompt.length) * V);
      expect(maxAbsDiff(last, await referenceTail(prompt, 1, adapter))).toBeLessThan(1e-4);
    }
    expect(batch.lengths).toEqual(lengths);
    for (let step = 0; step < 4; step++) {
      const next = prompts.map(() => random.integer(256));
      const logits = await batch.append(
        next.map((t) => [t]),
        adapter,
      );
      for (const [b, prompt] of prompts.entries()) {
        prompt.push(next[b] as number);
        expect(maxAbsDiff(logits.subarray(b * V, (b + 1) * V), await referenceTail(prompt, 1, adapter))).toBeLessThan(
          1e-4,
        );
      }
    }
  });

  it('a merged adapter gives what the adapter as runtime inputs gives', async () => {
    const merged = await OrtDecoder.create(config, weights, { mergedAdapter: adapter });
    try {
      const ids = randomIds(new Random(8), 1, 25, 256)[0] as number[];
      const viaInputs = await decoder.batch(1).append([ids], adapter);
      const viaMerge = await merged.batch(1).append([ids]);
      expect(maxAbsDiff(viaInputs, viaMerge)).toBeLessThan(1e-4);
      expect(() => merged.lora.feeds(adapter)).toThrow(/without LoRA inputs/);
    } finally {
      await merged.release();
    }
  });

  it('refuses what the kernel cannot do with a clear error', async () => {
    const batch = decoder.batch(2, 40);
    await expect(batch.append([[1]])).rejects.toThrow(/one token list per row/);
    await expect(batch.append([[1], [V]])).rejects.toThrow(/outside the vocabulary/);
    await batch.append([[1, 2], [3]]);
    await expect(
      batch.append([
        [1, 2],
        [3, 4],
      ]),
    ).rejects.toThrow(/one token each/);
    const single = decoder.batch(1, 40);
    await expect(single.append([new Array<number>(41).fill(1)])).rejects.toThrow(/more than 40/);
    expect(() => decoder.batch(1, 1000)).toThrow(/maxLength/);
    await expect(OrtDecoder.create(tinyConfig(), randomWeights(tinyConfig(), 1))).rejects.toThrow(/multiple of 16/);
  });
});

/** Drafts whatever it is told, to force rejections at known places. */
class ScriptedDrafter implements ByteDrafter {
  constructor(private readonly guess: (context: readonly number[]) => number[]) {}
  draft(context: readonly number[], count: number): number[] {
    return this.guess(context).slice(0, count);
  }
}

describe('SpeculativeByteSource', () => {
  const text = 'the cat sat on the mat; the cat sat on the hat. the cat sat on the mat again';
  const prompt = 'Once: ';

  async function distributionsAlong(source: { start: ModelByteSource<unknown>['start'] }): Promise<Float64Array[]> {
    const session = await source.start(prompt);
    const out: Float64Array[] = [];
    for (const byte of new TextEncoder().encode(text)) {
      out.push(await session.next());
      session.push(byte);
    }
    out.push(await session.next());
    session.close();
    return out;
  }

  it('gives the model’s own distribution at every position, whatever the drafts', async () => {
    const expected = await distributionsAlong(new ModelByteSource(reference, 'edge', adapter));
    const good = NgramDrafter.fromTexts([text], { tableBits: 12 });
    const alwaysWrong = new ScriptedDrafter(() => [0x7e, 0x7e, 0x7e]);
    const half = new ScriptedDrafter((context) =>
      context.length % 2 === 0 ? [...'he c'].map((c) => c.charCodeAt(0)) : [],
    );
    for (const drafter of [undefined, good, alwaysWrong, half]) {
      const source = new SpeculativeByteSource(decoder, { lora: adapter, drafter, draftLength: 6 });
      const got = await distributionsAlong(source);
      expect(got).toHaveLength(expected.length);
      for (const [i, p] of got.entries()) expect(maxAbsDiff(p, expected[i] as Float64Array)).toBeLessThan(1e-5);
      if (drafter === good) {
        // the drafter knows the text: most bytes come without a model run of their own
        expect(source.stats.accepted).toBeGreaterThan(text.length / 2);
        expect(source.stats.runs).toBeLessThan(text.length / 2);
      }
      if (drafter === alwaysWrong) expect(source.stats.accepted).toBe(0);
    }
  });

  it('generates the same text as the plain source, greedy and sampled, with fewer runs', async () => {
    const drafter = NgramDrafter.fromTexts([text, text.toUpperCase()], { tableBits: 12 });
    for (const temperature of [0, 0.9]) {
      const options = { maxBytes: 60, temperature, seed: 3 };
      const plain = new SpeculativeByteSource(decoder, { lora: adapter });
      const fast = new SpeculativeByteSource(decoder, { lora: adapter, drafter });
      const a = await generateBytes(plain, prompt, options);
      const b = await generateBytes(fast, prompt, options);
      const c = await generateBytes(new ModelByteSource(reference, 'edge', adapter), prompt, options);
      expect(b.bytes).toEqual(a.bytes);
      expect(a.bytes).toEqual(c.bytes);
      expect(plain.stats.runs).toBe(a.bytes.length + (a.finishReason === 'eos' ? 1 : 0));
    }
  });

  it('rewinds to any earlier byte and goes on as if the later ones never came', async () => {
    const expected = await distributionsAlong(new ModelByteSource(reference, 'edge', adapter));
    const bytes = new TextEncoder().encode(text);
    const good = NgramDrafter.fromTexts([text], { tableBits: 12 });
    for (const source of [
      new SpeculativeByteSource(decoder, { lora: adapter, drafter: good, draftLength: 6 }),
      new SpeculativeByteSource(decoder, { lora: adapter }),
      new ModelByteSource(reference, 'edge', adapter),
    ]) {
      const session = await source.start(prompt);
      // run ahead (along a wrong path, or along the text itself, where the drafter's guesses are
      // still pending when the rewind comes), back up, and take the text's path
      let at = 0;
      for (const [back, ahead, wrong] of [
        [12, 5, true],
        [30, 9, true],
        [40, 3, false],
      ] as const) {
        for (; at < back; at++) {
          await session.next();
          session.push(bytes[at] as number);
        }
        for (let k = 0; k < ahead; k++) {
          await session.next();
          session.push(wrong ? 0x7e : (bytes[back + k] as number));
        }
        session.rewind(back);
      }
      for (; at < bytes.length; at++) {
        const p = await session.next();
        expect(maxAbsDiff(p, expected[at] as Float64Array)).toBeLessThan(1e-5);
        session.push(bytes[at] as number);
      }
      expect(() => session.rewind(bytes.length + 1)).toThrow(/cannot rewind to/);
      session.close();
    }
  });

  it('scores a text like the plain model', async () => {
    const source = new SpeculativeByteSource(decoder, { lora: adapter });
    const expected = await new ModelByteSource(reference, 'edge', adapter).score(text);
    const got = await source.score(text);
    for (const [i, p] of got.entries()) expect(maxAbsDiff(p, expected[i] as Float64Array)).toBeLessThan(1e-5);
  });
});

describe('NgramDrafter', () => {
  it('continues a context it has seen and stays silent on one it has not', () => {
    const drafter = NgramDrafter.fromTexts(['abcdefgh abcdefgh abcdefgh']);
    const bytes = (s: string) => [...new TextEncoder().encode(s)];
    expect(String.fromCharCode(...drafter.draft(bytes('xx abcd'), 5))).toBe('efgh ');
    expect(drafter.draft(bytes('qqqq'), 5)).toEqual([]);
    expect(() => new NgramDrafter({ orders: [0] })).toThrow(/orders/);
  });
});
