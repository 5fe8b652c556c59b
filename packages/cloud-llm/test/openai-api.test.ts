/**
 * The cloud stand-in through the official `openai` npm client and plain HTTP on loopback: logprobs
 * equal to the model's own log-softmax, streams equal to whole answers, batched requests equal to
 * lone ones, and the refusals a client must be able to act on (401, 404, 400, 429 with Retry-After,
 * injected 5xx).
 */
import path from 'node:path';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { OrtLlama, type LoadedCheckpoint, loadCheckpoint } from '@floe/model';
import { type CloudServer, startCloud } from '../src/index.js';

const MODEL = path.join(import.meta.dirname, '..', '..', '..', 'models', 'cloud');
const KEY = 'test-key';

let cloud: CloudServer;
let client: OpenAI;
let checkpoint: LoadedCheckpoint;
let reference: OrtLlama;

beforeAll(async () => {
  cloud = await startCloud({ modelDir: MODEL, port: 0, apiKeys: [KEY], maxBatch: 4 });
  client = new OpenAI({ baseURL: `${cloud.url}/v1`, apiKey: KEY, maxRetries: 0 });
  checkpoint = await loadCheckpoint(MODEL);
  reference = await OrtLlama.create(checkpoint.config, checkpoint.weights);
});

afterAll(async () => {
  await cloud?.close();
  await reference?.release();
});

/** log p of each of `ids[1..]` given the ones before, computed directly on ORT. */
async function directLogprobs(ids: number[]): Promise<number[]> {
  const { logits } = await reference.forward([ids]);
  const V = checkpoint.config.vocab_size;
  return ids.slice(1).map((target, t) => {
    const row = logits.subarray(t * V, (t + 1) * V);
    const max = Math.max(...row);
    const logZ = max + Math.log(row.reduce((s, x) => s + Math.exp(x - max), 0));
    return (row[target] as number) - logZ;
  });
}

/** The prompt scored, not continued: echo with max_tokens 0 and the top token at each position. */
const echoScore = (prompt: string) =>
  client.completions.create({ model: 'floe-cloud', prompt, max_tokens: 0, echo: true, logprobs: 1 });

describe('cloud stand-in over the official openai client', () => {
  it('lists its model and completes with logprobs equal to the model log-softmax', async () => {
    const models = await client.models.list();
    expect(models.data.map((m) => m.id)).toEqual(['floe-cloud']);
    const prompt = 'The President shall, from time to time, give to the Congress';
    const completion = await client.completions.create({
      model: 'floe-cloud',
      prompt,
      max_tokens: 12,
      temperature: 0,
      logprobs: 5,
    });
    const choice = completion.choices[0]!;
    const logprobs = choice.logprobs!;
    expect(logprobs.tokens!.join('')).toBe(choice.text);
    expect(completion.usage!.completion_tokens).toBe(logprobs.tokens!.length);
    const promptIds = checkpoint.tokenizer.encode(prompt, { bos: true });
    const generated = checkpoint.tokenizer.encode(choice.text);
    const direct = await directLogprobs([...promptIds, ...generated]);
    const got = logprobs.token_logprobs!;
    got.forEach((lp, i) => expect(lp).toBeCloseTo(direct[promptIds.length - 1 + i]!, 4));
    // greedy: each chosen token is the most likely of its top 5, which hold 5 distinct tokens
    logprobs.top_logprobs!.forEach((top, i) => {
      const entries = Object.entries(top as Record<string, number>);
      expect(entries).toHaveLength(5);
      expect(Math.max(...entries.map(([, lp]) => lp))).toBeCloseTo(got[i]!, 6);
    });
  });

  it('scores a prompt with echo and max_tokens 0', async () => {
    const prompt = 'Fellow-Citizens of the Senate and of the House of Representatives:';
    const completion = await echoScore(prompt);
    const logprobs = completion.choices[0]!.logprobs!;
    expect(completion.choices[0]!.text).toBe(prompt);
    const direct = await directLogprobs(checkpoint.tokenizer.encode(prompt, { bos: true }));
    expect(logprobs.token_logprobs).toHaveLength(direct.length);
    logprobs.token_logprobs!.forEach((lp, i) => expect(lp).toBeCloseTo(direct[i]!, 4));
    expect(logprobs.text_offset![0]).toBe(0);
    expect(logprobs.text_offset!.at(-1)).toBe(prompt.length - logprobs.tokens!.at(-1)!.length);
  });

  it('gives character offsets that never go back when a token cuts a character', async () => {
    const prompt = 'Déjà vu, naïve café: 😀🎉 fin';
    const completion = await echoScore(prompt);
    const { tokens, text_offset: offsets } = completion.choices[0]!.logprobs!;
    expect(tokens!.some((t) => t.startsWith('bytes:'))).toBe(true);
    offsets!.forEach((o, i) => expect(o).toBeGreaterThanOrEqual(offsets![Math.max(0, i - 1)]!));
    expect(offsets!.at(-1)).toBe(prompt.length - tokens!.at(-1)!.length);
  });

  it('streams the same text as a whole answer, ending with finish_reason and [DONE]', async () => {
    const request = { model: 'floe-cloud', prompt: 'It is my duty to report', max_tokens: 20, temperature: 0 };
    const whole = await client.completions.create(request);
    const stream = await client.completions.create({ ...request, stream: true });
    let text = '';
    let finish: string | null = null;
    for await (const chunk of stream) {
      text += chunk.choices[0]?.text ?? '';
      finish = chunk.choices[0]?.finish_reason ?? finish;
    }
    expect(text).toBe(whole.choices[0]!.text);
    expect(finish).toBe(whole.choices[0]!.finish_reason);
  });

  it('stops before a stop string and says so', async () => {
    const completion = await client.completions.create({
      model: 'floe-cloud',
      prompt: '23+45=',
      max_tokens: 8,
      temperature: 0,
      stop: ['\n'],
    });
    const choice = completion.choices[0]!;
    expect(choice.text).not.toContain('\n');
    expect(choice.finish_reason).toBe('stop');
  });

  it('chats, with logprobs whose bytes spell the answer, streamed or not', async () => {
    const request = {
      model: 'floe-cloud',
      messages: [{ role: 'user' as const, content: 'What is the state of the Union?' }],
      max_tokens: 10,
      temperature: 0,
    };
    const chat = await client.chat.completions.create({ ...request, logprobs: true, top_logprobs: 3 });
    const choice = chat.choices[0]!;
    expect(choice.message.role).toBe('assistant');
    const bytes = choice.logprobs!.content!.flatMap((t) => t.bytes!);
    expect(new TextDecoder().decode(Uint8Array.from(bytes)).replace(/^ /, '')).toBe(choice.message.content);
    choice.logprobs!.content!.forEach((t) => expect(t.top_logprobs).toHaveLength(3));
    const stream = await client.chat.completions.create({
      ...request,
      stream: true,
      stream_options: { include_usage: true },
    });
    let content = '';
    let usage: OpenAI.CompletionUsage | undefined;
    for await (const chunk of stream) {
      content += chunk.choices[0]?.delta.content ?? '';
      usage = chunk.usage ?? usage;
    }
    expect(content).toBe(choice.message.content);
    expect(usage?.completion_tokens).toBe(chat.usage!.completion_tokens);
  });

  it('batches concurrent requests without changing any answer, and a short one does not wait for a long one', async () => {
    const prompts = ['Gentlemen of the Congress', '7*8=', 'We the people', 'The tariff'];
    const alone = [];
    for (const prompt of prompts) {
      alone.push(
        (await client.completions.create({ model: 'floe-cloud', prompt, max_tokens: 24, temperature: 0 })).choices[0]!
          .text,
      );
    }
    const finished: string[] = [];
    const long = client.completions
      .create({ model: 'floe-cloud', prompt: 'In the year', max_tokens: 200, temperature: 0 })
      .then(() => finished.push('long'));
    const together = await Promise.all(
      prompts.map((prompt) =>
        client.completions.create({ model: 'floe-cloud', prompt, max_tokens: 24, temperature: 0 }).then((c) => {
          finished.push(prompt);
          return c.choices[0]!.text;
        }),
      ),
    );
    await long;
    expect(together).toEqual(alone);
    expect(finished.at(-1)).toBe('long');
  });

  it('returns n choices per prompt for several prompts, seeded sampling repeatable', async () => {
    const request = { model: 'floe-cloud', prompt: ['Peace', 'War'], max_tokens: 6, n: 3, temperature: 1, seed: 7 };
    const a = await client.completions.create(request);
    const b = await client.completions.create(request);
    expect(a.choices.map((c) => c.index)).toEqual([0, 1, 2, 3, 4, 5]);
    expect(a.choices.map((c) => c.text)).toEqual(b.choices.map((c) => c.text));
  });

  it('refuses a wrong key, an unknown model, an unknown field and a prompt longer than the context', async () => {
    const stranger = new OpenAI({ baseURL: `${cloud.url}/v1`, apiKey: 'wrong', maxRetries: 0 });
    await expect(stranger.models.list()).rejects.toMatchObject({ status: 401, code: 'invalid_api_key' });
    await expect(client.completions.create({ model: 'gpt-4', prompt: 'x' })).rejects.toMatchObject({
      status: 404,
      code: 'model_not_found',
    });
    const post = (body: object) =>
      fetch(`${cloud.url}/v1/completions`, {
        method: 'POST',
        headers: { authorization: `Bearer ${KEY}`, 'content-type': 'application/json' },
        body: JSON.stringify(body),
      });
    const unknown = await post({ model: 'floe-cloud', prompt: 'x', best_of: 3 });
    expect(unknown.status).toBe(400);
    expect(((await unknown.json()) as { error: { message: string } }).error.message).toMatch(/best_of|additional/);
    const long = await post({ model: 'floe-cloud', prompt: 'word '.repeat(2000), max_tokens: 10 });
    expect(long.status).toBe(400);
    expect(((await long.json()) as { error: { code: string } }).error.code).toBe('context_length_exceeded');
    const badId = await post({ model: 'floe-cloud', prompt: [1, 2, 999999] });
    expect(badId.status).toBe(400);
    // more sequences than the queue could ever hold: a 400, not a 429 to retry forever
    const huge = await post({ model: 'floe-cloud', prompt: new Array(16).fill('x'), n: 16, max_tokens: 1 });
    expect(huge.status).toBe(400);
  });

  it('prefills a prompt that extends an earlier one from the prefix cache, with the same logprobs', async () => {
    const cachedTokens = async () =>
      Number(
        /floe_cloud_prefix_cached_tokens_total (\d+)/.exec(await (await fetch(`${cloud.url}/metrics`)).text())?.[1],
      );
    const first = 'Fellow-Citizens of the Senate and House of Representatives: the state of the Union';
    const answer = await client.completions.create({
      model: 'floe-cloud',
      prompt: first,
      max_tokens: 8,
      temperature: 0,
    });
    const before = await cachedTokens();
    const prompt = `${first}${answer.choices[0]!.text} and the`;
    const completion = await client.completions.create({
      model: 'floe-cloud',
      prompt,
      max_tokens: 10,
      temperature: 0,
      logprobs: 1,
    });
    const promptIds = checkpoint.tokenizer.encode(prompt, { bos: true });
    // the earlier prompt and the answer's tokens but the last came from the cache
    expect((await cachedTokens()) - before).toBeGreaterThanOrEqual(checkpoint.tokenizer.encode(first).length);
    const choice = completion.choices[0]!;
    const direct = await directLogprobs([...promptIds, ...checkpoint.tokenizer.encode(choice.text)]);
    choice.logprobs!.token_logprobs!.forEach((lp, i) => expect(lp).toBeCloseTo(direct[promptIds.length - 1 + i]!, 4));
  });

  it('reports health and counts tokens in /metrics', async () => {
    const health = (await (await fetch(`${cloud.url}/healthz`)).json()) as { status: string };
    expect(health.status).toBe('ok');
    const metrics = await (await fetch(`${cloud.url}/metrics`)).text();
    const generated = Number(/floe_cloud_completion_tokens_total (\d+)/.exec(metrics)?.[1]);
    expect(generated).toBeGreaterThan(100);
  });
});

describe('cloud stand-in under load and faults', () => {
  it('answers 429 with Retry-After when its queue is full, and serves the rest', async () => {
    const busy = await startCloud({ modelDir: MODEL, port: 0, maxBatch: 1, maxWaiting: 1 });
    try {
      const post = () =>
        fetch(`${busy.url}/v1/completions`, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ model: 'floe-cloud', prompt: 'The', max_tokens: 60, temperature: 0 }),
        });
      const responses = await Promise.all([post(), post(), post(), post()]);
      const refused = responses.filter((r) => r.status === 429);
      expect(refused.length).toBeGreaterThan(0);
      expect(responses.filter((r) => r.status === 200).length).toBeGreaterThan(0);
      for (const r of refused) expect(Number(r.headers.get('retry-after'))).toBeGreaterThanOrEqual(1);
    } finally {
      await busy.close();
    }
  });

  it('injects latency and errors as configured', async () => {
    const flaky = await startCloud({ modelDir: MODEL, port: 0, faults: { errorRate: 1, errorStatus: 503 } });
    try {
      const flakyClient = new OpenAI({ baseURL: `${flaky.url}/v1`, apiKey: 'none', maxRetries: 0 });
      await expect(flakyClient.completions.create({ model: 'floe-cloud', prompt: 'x' })).rejects.toMatchObject({
        status: 503,
      });
      flaky.faults.set({ errorRate: 0, latencyMs: 150 });
      const started = performance.now();
      await flakyClient.completions.create({ model: 'floe-cloud', prompt: 'x', max_tokens: 1 });
      expect(performance.now() - started).toBeGreaterThanOrEqual(150);
    } finally {
      await flaky.close();
    }
  });
});
