/**
 * `floe-edge serve` as an app meets it: the official `openai` client, unchanged, against the edge's
 * endpoint on loopback, with the real cloud stand-in behind it. Completions, chat and streaming; a
 * personalized adapter chosen by model name (its answer is the adapter's own greedy text, not the
 * base's); per-request fusion and privacy (what the stand-in received is read from its request log:
 * a blocked prompt never reaches it, a redacted one reaches it without the personal data); a cloud that
 * is down costs nothing but the fusion; and the refusals an app must be able to act on.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type CloudServer, startCloud } from '@floe/cloud-llm';
import {
  type CloudCallRecord,
  CloudClient,
  EdgeModels,
  type EdgeServer,
  TextGenerator,
  startEdgeServer,
} from '@floe/edge-client';
import { OrtDecoder, SpeculativeByteSource, generateBytes, initLora, loadCheckpoint, saveAdapter } from '@floe/model';
import { Random } from '@floe/shared';

const ROOT = path.join(import.meta.dirname, '..', '..');
const EDGE = path.join(ROOT, 'models', 'edge-small');
const PROMPT = 'Fellow-Citizens of the Senate and House of Representatives: ';
const EMAIL = 'martha.washington@example.org';
const PHONE = '+1 202 555 0143';
const PRIVATE = `Please reply to ${EMAIL} or call ${PHONE}. ${PROMPT}`;

let cloud: CloudServer;
let edge: EdgeServer;
let app: OpenAI;
let records: CloudCallRecord[];
let dir: string;
let adapterText: string;
let baseText: string;

/** The edge's own greedy answer (no server, no cloud) with an optional merged adapter. */
async function directGreedy(prompt: string, maxBytes: number, adapter?: Parameters<typeof OrtDecoder.create>[2]) {
  const { config, weights } = await loadCheckpoint(EDGE);
  const decoder = await OrtDecoder.create(config, weights, adapter);
  try {
    return (await generateBytes(new SpeculativeByteSource(decoder), prompt, { maxBytes })).text;
  } finally {
    await decoder.release();
  }
}

beforeAll(async () => {
  dir = mkdtempSync(path.join(os.tmpdir(), 'floe-serve-'));
  const { config } = await loadCheckpoint(EDGE);
  // an adapter whose B is not zero, so that it changes the model's answers
  const adapter = initLora(config, { r: 4, lora_alpha: 8, target_modules: ['q_proj', 'v_proj', 'up_proj'] }, 7);
  const random = new Random(11);
  for (const f of adapter.modules.values()) f.B = random.normalArray(f.B.length, 0.3);
  await saveAdapter(path.join(dir, 'adapter'), adapter, 'edge-small');
  [baseText, adapterText] = await Promise.all([
    directGreedy(PROMPT, 40),
    directGreedy(PROMPT, 40, { mergedAdapter: adapter }),
  ]);
  expect(adapterText).not.toBe(baseText);

  cloud = await startCloud({ modelDir: path.join(ROOT, 'models', 'cloud'), port: 0 });
  records = [];
  const models = await EdgeModels.open({
    modelDir: EDGE,
    adapters: [{ id: 'job-7', dir: path.join(dir, 'adapter') }],
  });
  const cloudClient = new CloudClient({
    baseURL: `${cloud.url}/v1`,
    apiKey: 'none',
    model: 'floe-cloud',
    timeoutMs: 5000,
  });
  const generator = new TextGenerator(models, cloudClient, { log: { record: (r) => records.push(r) } });
  edge = await startEdgeServer(generator, {
    host: '127.0.0.1',
    port: 0,
    apiKeys: ['app-key'],
    defaults: { mode: 'edge', policy: 'redact', deadlineMs: 200 },
    maxWaiting: 1,
  });
  app = new OpenAI({ baseURL: `${edge.url}/v1`, apiKey: 'app-key', maxRetries: 0 });
}, 180_000);

afterAll(async () => {
  await edge?.close();
  await cloud?.close();
  rmSync(dir, { recursive: true, force: true });
});

/** Requests the stand-in received while `run` ran, as text. */
async function receivedDuring(run: () => Promise<unknown>): Promise<string[]> {
  const before = cloud.received.length;
  await run();
  return cloud.received.slice(before).map((r) => JSON.stringify(r.prompt ?? r.messages));
}

describe('floe-edge serve through the openai client', { timeout: 120_000 }, () => {
  it('lists the base model and the adapter, as vLLM lists LoRA adapters', async () => {
    const models = await app.models.list();
    const ids = models.data.map((m) => m.id);
    expect(ids).toEqual(['edge-small', 'job-7']);
    expect(models.data[1]).toMatchObject({ id: 'job-7', parent: 'edge-small' });
    expect((await app.models.retrieve('job-7')).id).toBe('job-7');
  });

  it("answers with the adapter's model when the app names it, with the base's otherwise", async () => {
    const ask = (model: string) => app.completions.create({ model, prompt: PROMPT, max_tokens: 40, temperature: 0 });
    const [base, adapted] = [await ask('edge-small'), await ask('job-7')];
    expect(base.choices[0]!.text).toBe(baseText);
    expect(adapted.choices[0]!.text).toBe(adapterText);
    expect(adapted.usage).toMatchObject({ completion_tokens: 40 });
    expect(adapted.choices[0]!.finish_reason).toBe('length');
  });

  it('streams completions and chat: the pieces make the whole answer', async () => {
    const stream = await app.completions.create({
      model: 'job-7',
      prompt: PROMPT,
      max_tokens: 40,
      temperature: 0,
      stream: true,
    });
    let streamed = '';
    let finish: string | null = null;
    for await (const chunk of stream) {
      streamed += chunk.choices[0]?.text ?? '';
      finish = chunk.choices[0]?.finish_reason ?? finish;
    }
    expect(streamed).toBe(adapterText);
    expect(finish).toBe('length');

    const messages = [{ role: 'user' as const, content: 'Say something about the union.' }];
    const whole = await app.chat.completions.create({ model: 'job-7', messages, max_tokens: 30, temperature: 0 });
    const content = whole.choices[0]!.message.content ?? '';
    expect(content.length).toBeGreaterThan(0);
    const chat = await app.chat.completions.create({
      model: 'job-7',
      messages,
      max_tokens: 30,
      temperature: 0,
      stream: true,
    });
    let pieces = '';
    let role: string | undefined;
    for await (const chunk of chat) {
      role ??= chunk.choices[0]?.delta.role;
      pieces += chunk.choices[0]?.delta.content ?? '';
    }
    expect(role).toBe('assistant');
    expect(pieces).toBe(content);
  });

  it('fuses with the cloud when asked, and a blocked prompt never reaches it', async () => {
    const fused = (privacy: string, prompt: string) =>
      app.completions.create({
        model: 'edge-small',
        prompt,
        max_tokens: 24,
        temperature: 0,
        // extra fields, as the openai client passes them
        ...({ fusion: 'entropy', privacy } as object),
      });
    const clean = await receivedDuring(() => fused('block', PROMPT));
    expect(clean.length).toBeGreaterThan(0);

    const blocked = await receivedDuring(async () => {
      const answer = await fused('block', PRIVATE);
      expect((answer as unknown as { floe: { blocked_calls: number } }).floe.blocked_calls).toBeGreaterThan(0);
    });
    expect(blocked).toEqual([]);
    expect(records.at(-1)).toMatchObject({ route: 'request', verdict: 'blocked', policy: 'block', sent: null });

    // a request may tighten the device's policy (redact here), never loosen it
    const loosened = await receivedDuring(() => fused('allow', PRIVATE));
    expect(loosened.length).toBeGreaterThan(0);
    for (const text of loosened) expect(text).not.toContain(EMAIL);

    // stop strings go out too: one that holds personal data stays on the device
    const stopped = await receivedDuring(() =>
      app.completions.create({
        model: 'edge-small',
        prompt: PROMPT,
        max_tokens: 24,
        temperature: 0,
        stop: [EMAIL, 'zz'],
        ...({ fusion: 'cloud' } as object),
      }),
    );
    expect(stopped).toHaveLength(1);
    expect(cloud.received.at(-1)).toMatchObject({ prompt: PROMPT, stop: ['zz'] });
  });

  it('redacts: the cloud receives placeholders, never the values, and the log says what was sent', async () => {
    const logged = records.length;
    const received = await receivedDuring(() =>
      app.completions.create({
        model: 'edge-small',
        prompt: PRIVATE,
        max_tokens: 24,
        temperature: 0,
        ...({ fusion: 'entropy', privacy: 'redact' } as object),
      }),
    );
    expect(received.length).toBeGreaterThan(0);
    for (const text of received) {
      expect(text).not.toContain(EMAIL);
      expect(text).not.toContain('555 0143');
      expect(text).toContain('<EMAIL_1>');
    }
    const sent = records.slice(logged).filter((r) => r.sent !== null);
    expect(sent.map((r) => r.verdict)).toContain('redacted');
    for (const r of sent)
      expect(received.some((text) => text.includes(JSON.stringify(r.sent).slice(1, -1)))).toBe(true);

    // a prompt that ends inside a phone number: calls cut at a space would carry a part of it that no
    // detector can recognise on its own; the cut moves before the number
    const tail = await receivedDuring(() =>
      app.completions.create({
        model: 'edge-small',
        prompt: `${PROMPT}You can call me on ${PHONE}`,
        max_tokens: 24,
        temperature: 0,
        ...({ fusion: 'entropy', privacy: 'redact' } as object),
      }),
    );
    expect(tail.length).toBeGreaterThan(0);
    for (const text of tail) expect(text).not.toMatch(/202 555|\+1 202/);

    // offloading: the cloud answers a redacted prompt and the device maps its placeholders back
    const offloaded = await receivedDuring(() =>
      app.completions.create({
        model: 'edge-small',
        prompt: PRIVATE,
        max_tokens: 24,
        temperature: 0,
        ...({ fusion: 'cloud', privacy: 'redact' } as object),
      }),
    );
    expect(offloaded).toHaveLength(1);
    expect(offloaded[0]).not.toContain(EMAIL);
  });

  it('refuses what an app must correct: unknown model, wrong key, unknown field, a full queue', async () => {
    await expect(app.completions.create({ model: 'nope', prompt: 'x' })).rejects.toMatchObject({ status: 404 });
    const stranger = new OpenAI({ baseURL: `${edge.url}/v1`, apiKey: 'wrong', maxRetries: 0 });
    await expect(stranger.models.list()).rejects.toMatchObject({ status: 401 });
    await expect(
      app.completions.create({ model: 'edge-small', prompt: 'x', ...({ fusion: 'telepathy' } as object) }),
    ).rejects.toMatchObject({ status: 400 });
    await expect(app.completions.create({ model: 'edge-small', prompt: 'x', max_tokens: 600 })).rejects.toMatchObject({
      status: 400,
      code: 'context_length_exceeded',
    });
    // one answering, one waiting (maxWaiting 1): the third is refused with Retry-After
    const long = { model: 'edge-small', prompt: PROMPT, max_tokens: 300, temperature: 0 };
    const results = await Promise.allSettled([
      app.completions.create(long),
      app.completions.create(long),
      app.completions.create(long),
    ]);
    const refused = results.filter((r) => r.status === 'rejected');
    expect(refused).toHaveLength(1);
    expect((refused[0] as PromiseRejectedResult).reason).toMatchObject({ status: 429 });
  });
});

describe('a cloud that is down', { timeout: 120_000 }, () => {
  it('costs the fusion, not the answer: the edge answers alone, as edge-only decoding would', async () => {
    const models = await EdgeModels.open({ modelDir: EDGE });
    const down = new CloudClient({ baseURL: 'http://127.0.0.1:9/v1', apiKey: 'none', model: 'floe-cloud' });
    const server = await startEdgeServer(new TextGenerator(models, down), {
      host: '127.0.0.1',
      port: 0,
      apiKeys: [],
      defaults: { mode: 'entropy', policy: 'redact', deadlineMs: 50 },
    });
    try {
      // without keys it answers this machine's own names only (a page that rebinds its DNS name to
      // 127.0.0.1 sends its own name)
      const status = (host: string) =>
        new Promise<number | undefined>((resolve, reject) => {
          const url = new URL(`${server.url}/v1/models`);
          http
            .get({ hostname: url.hostname, port: url.port, path: url.pathname, headers: { host } }, (res) => {
              res.resume();
              resolve(res.statusCode);
            })
            .on('error', reject);
        });
      expect(await status('evil.example:80')).toBe(403);
      expect(await status(`localhost:${new URL(server.url).port}`)).toBe(200);
      const client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: 'none', maxRetries: 0 });
      for (const fusion of ['entropy', 'cloud']) {
        const answer = await client.completions.create({
          model: 'edge-small',
          prompt: PROMPT,
          max_tokens: 40,
          temperature: 0,
          ...({ fusion } as object),
        });
        expect(answer.choices[0]!.text).toBe(baseText);
      }
    } finally {
      await server.close();
      await models.release();
    }
  });
});
