import { beforeAll, describe, expect, it } from 'vitest';
import {
  ByteTokenizer,
  OrtLlama,
  Random,
  TfjsDecoder,
  TfjsLlama,
  generate,
  greedyMargin,
  sampleToken,
  selectTfjsBackend,
  streamGenerate,
} from '../src/index.js';
import { randomLora, randomWeights, tinyConfig } from './helpers.js';

const config = tinyConfig({ num_key_value_heads: 2 });
const weights = randomWeights(config, 21);
let model: OrtLlama;

beforeAll(async () => {
  await selectTfjsBackend();
  model = await OrtLlama.create(config, weights, { loraModules: 'all' });
  return () => model.release();
});

/** Greedy decoding the slow way: the whole sequence recomputed for each new token, no cache. */
async function greedyByRecomputation(prompt: string, n: number): Promise<number[]> {
  const ids = new ByteTokenizer().encode(prompt, { bos: true });
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    const { logits } = await model.forward([ids]);
    const last = logits.subarray((ids.length - 1) * config.vocab_size, ids.length * config.vocab_size);
    const token = sampleToken(last, config, {}, new Random(0));
    out.push(token);
    ids.push(token);
  }
  return out;
}

describe('generation', () => {
  it('greedy decoding with the KV cache equals greedy decoding by full recomputation', async () => {
    const [g] = await generate(model, ['The union is'], { maxNewTokens: 12 });
    // two computations of the same logits agree to ~1e-6, so compare tokens only where no step is a near tie
    expect(g!.margin).toBeGreaterThan(1e-3);
    expect(g!.tokens).toEqual(await greedyByRecomputation('The union is', 12));
    expect(g!.finishReason).toBe('length');
  });

  it('a left-padded batch generates what each prompt generates alone', async () => {
    const prompts = ['a', 'Fellow citizens of the Senate', '2+3='];
    const batch = await generate(model, prompts, { maxNewTokens: 10 });
    for (const [i, prompt] of prompts.entries()) {
      const [alone] = await generate(model, [prompt], { maxNewTokens: 10 });
      expect(batch[i]!.tokens).toEqual(alone!.tokens);
    }
  });

  it('the tfjs decoder generates the same greedy tokens as ONNX Runtime', async () => {
    const tf = new TfjsLlama(config, weights);
    try {
      const adapter = randomLora(config, 2, ['q_proj', 'down_proj'], 3);
      const prompts = ['We hold these', 'x'];
      const a = await generate(new TfjsDecoder(tf), prompts, { maxNewTokens: 8, lora: adapter });
      const b = await generate(model, prompts, { maxNewTokens: 8, lora: adapter });
      for (const g of b) expect(g.margin).toBeGreaterThan(1e-3); // tfjs and ORT logits agree to ~1e-5
      expect(a.map((g) => g.tokens)).toEqual(b.map((g) => g.tokens));
    } finally {
      tf.dispose();
    }
  });

  it('stops at a stop string and cuts it off, and streams every token as it comes', async () => {
    const [free] = await generate(model, ['Q'], { maxNewTokens: 16 });
    const stop = free!.text.slice(3, 5);
    expect(stop.length).toBeGreaterThan(0);
    const events: string[] = [];
    const stream = streamGenerate(model, ['Q'], { maxNewTokens: 16, stop: [stop] });
    let result;
    for (;;) {
      const next = await stream.next();
      if (next.done) {
        result = next.value[0]!;
        break;
      }
      events.push(next.value.text);
    }
    expect(result.finishReason).toBe('stop');
    expect(result.text).toBe(free!.text.slice(0, free!.text.indexOf(stop)));
    expect(events.at(-1)).toBe(result.text);
    expect(events.length).toBe(result.tokens.length);
  });

  it('sampling is reproducible by seed and differs across seeds', async () => {
    const opts = { maxNewTokens: 16, temperature: 1.5, topK: 50 };
    const a = await generate(model, ['x'], { ...opts, seed: 1 });
    const b = await generate(model, ['x'], { ...opts, seed: 1 });
    const c = await generate(model, ['x'], { ...opts, seed: 2 });
    expect(a[0]!.tokens).toEqual(b[0]!.tokens);
    expect(a[0]!.tokens).not.toEqual(c[0]!.tokens);
    expect(a[0]!.margin).toBe(Infinity); // a margin is a greedy figure
  });

  it('a logit bias of -Infinity bans a token; the other choices stay as they were until it would have come', async () => {
    const plain = await generate(model, ['ab'], { maxNewTokens: 12 });
    const banned = plain[0]!.tokens[3]!;
    const [biased] = await generate(model, ['ab'], { maxNewTokens: 12, logitBias: new Map([[banned, -Infinity]]) });
    expect(biased!.tokens).not.toContain(banned);
    const first = plain[0]!.tokens.indexOf(banned);
    expect(biased!.tokens.slice(0, first)).toEqual(plain[0]!.tokens.slice(0, first));
    // sampled, too
    const sampled = await generate(model, new Array<string>(8).fill('ab'), {
      maxNewTokens: 12,
      temperature: 1.5,
      logitBias: new Map([[banned, -Infinity]]),
    });
    for (const g of sampled) expect(g.tokens).not.toContain(banned);
  });

  it('refuses a prompt that would run past max_position_embeddings', async () => {
    await expect(generate(model, ['x'.repeat(250)], { maxNewTokens: 10 })).rejects.toThrow(/max_position_embeddings/);
  });
});

describe('sampleToken', () => {
  const logits = new Float32Array(config.vocab_size).fill(-10);
  logits[65] = Math.log(0.6) + 10;
  logits[66] = Math.log(0.3) + 10;
  logits[67] = Math.log(0.1) + 10;
  logits[config.pad_token_id] = 100; // never sampled even when it dominates

  function counts(options: Parameters<typeof sampleToken>[2], n = 4000) {
    const random = new Random(5);
    const seen = new Map<number, number>();
    for (let i = 0; i < n; i++) {
      const id = sampleToken(logits, config, options, random);
      seen.set(id, (seen.get(id) ?? 0) + 1);
    }
    return seen;
  }

  it('greedy picks the best allowed token; its margin is the gap to the best other allowed token', () => {
    expect(sampleToken(logits, config, {}, new Random(0))).toBe(65);
    // pad (logit 100) is never a candidate, so the runner-up of 65 is 66
    expect(greedyMargin(logits, config, 65)).toBeCloseTo(Math.log(0.6) - Math.log(0.3), 5);
  });

  it('top-k keeps the k best, top-p the smallest set with that mass, temperature 1 follows the softmax', () => {
    expect([...counts({ temperature: 1, topK: 2 }).keys()].sort()).toEqual([65, 66]);
    expect([...counts({ temperature: 1, topP: 0.5 }).keys()]).toEqual([65]);
    const free = counts({ temperature: 1 });
    expect(free.get(65)! / 4000).toBeGreaterThan(0.55);
    expect(free.get(65)! / 4000).toBeLessThan(0.65);
    expect(free.get(67)! / 4000).toBeGreaterThan(0.07);
    expect(free.has(config.pad_token_id)).toBe(false);
  });
});
