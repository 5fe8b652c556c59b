/**
 * Fused device-cloud generation against the real cloud stand-in on loopback: the cloud is used when it
 * answers, and when it is down, slow, or answers 429 or 5xx, generation carries on with the edge alone
 * (the same text as edge-only decoding), with no error to the caller, and the breaker stops calling.
 */
import { createServer } from 'node:net';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type CloudServer, startCloud } from '@floe/cloud-llm';
import { CloudByteSource, CloudClient, FusedByteSource, type FusionOptions } from '@floe/edge-client';
import { ModelByteSource, OrtLlama, generateBytes, loadCheckpoint } from '@floe/model';

const ROOT = path.join(import.meta.dirname, '..', '..');
const PROMPT = 'Fellow-Citizens of the Senate and House of Representatives: ';
const MAX_BYTES = 48;

let cloud: CloudServer;
let edgeModel: OrtLlama;
let edge: ModelByteSource<unknown>;
let edgeOnly: string;

function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const server = createServer().listen(0, '127.0.0.1', () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolve(port));
    });
  });
}

function fusedOver(
  baseURL: string,
  options: {
    deadlineMs?: number;
    cooldownMs?: number;
    timeoutMs?: number;
    fusion?: FusionOptions;
    minSpeedShare?: number;
  } = {},
) {
  const client = new CloudClient({
    baseURL,
    apiKey: 'none',
    model: 'floe-cloud',
    timeoutMs: options.timeoutMs ?? 2000,
    failureThreshold: 3,
    cooldownMs: options.cooldownMs ?? 60_000,
  });
  const source = new FusedByteSource(edge, client, {
    fusion: options.fusion ?? { mode: 'entropy' },
    lookahead: 8,
    deadlineMs: options.deadlineMs ?? 1000,
    // no speed floor unless asked: these tests are about what the cloud's answers do
    minSpeedShare: options.minSpeedShare ?? 0,
  });
  return { client, source };
}

beforeAll(async () => {
  cloud = await startCloud({ modelDir: path.join(ROOT, 'models', 'cloud'), port: 0 });
  const checkpoint = await loadCheckpoint(path.join(ROOT, 'models', 'edge-small'));
  edgeModel = await OrtLlama.create(checkpoint.config, checkpoint.weights);
  edge = new ModelByteSource(edgeModel);
  edgeOnly = (await generateBytes(edge, PROMPT, { maxBytes: MAX_BYTES })).text;
});

afterAll(async () => {
  await cloud?.close();
  await edgeModel?.release();
});

describe('fused generation with a healthy cloud', () => {
  it('fuses most bytes and changes what the edge alone would say', async () => {
    const { client, source } = fusedOver(`${cloud.url}/v1`);
    const fused = await generateBytes(source, PROMPT, { maxBytes: MAX_BYTES });
    expect(fused.bytes.length).toBe(MAX_BYTES);
    expect(source.stats.fused).toBeGreaterThan(source.stats.positions / 2);
    expect(client.stats.failures).toBe(0);
    expect(fused.text).not.toBe(edgeOnly);
  });

  it('needs one call per stretch of lookahead while the text follows the cloud', async () => {
    const { client, source } = fusedOver(`${cloud.url}/v1`, { fusion: { mode: 'linear', weight: 1 } });
    await generateBytes(source, PROMPT, { maxBytes: MAX_BYTES });
    expect(source.stats.fused).toBeGreaterThan(0.75 * source.stats.positions);
    expect(client.stats.calls).toBeLessThan(source.stats.positions / 3);
  });

  it('scores a known text with one call, and the fused distributions are proper', async () => {
    const { client, source } = fusedOver(`${cloud.url}/v1`);
    const text = 'The state of the Union is strong.';
    const fused = await source.score(text);
    const alone = await edge.score(text);
    expect(client.stats.calls).toBe(1);
    expect(fused).toHaveLength(new TextEncoder().encode(text).length + 1);
    for (const p of fused) expect(p.reduce((s, x) => s + x, 0)).toBeCloseTo(1, 9);
    expect(fused[5]).not.toEqual(alone[5]);
  });
});

describe('the cloud alone as a byte source', () => {
  it("scores a text at no more than the cloud's own log-likelihood, and generates through lookahead", async () => {
    const client = new CloudClient({ baseURL: `${cloud.url}/v1`, apiKey: 'none', model: 'floe-cloud' });
    const source = new CloudByteSource(client, 8);
    const text = 'The state of the Union is strong, and our people are free.';
    const bytes = new TextEncoder().encode(text);
    const distributions = await source.score(text);
    const aligned = -bytes.reduce((s, byte, t) => s + Math.log(distributions[t]![byte]!), 0);
    const own = -(await client.score(text))!.logprobs.reduce<number>((s, lp) => s + (lp ?? 0), 0);
    // each byte gets at least the probability of the cloud's own token through it (plus what other
    // tokens sharing its bytes carry), so the byte view never costs more than the cloud's own path
    expect(aligned).toBeLessThan(own + 1e-6);
    expect(Number.isFinite(aligned)).toBe(true);
    const generated = await generateBytes(source, PROMPT, { maxBytes: 24 });
    expect(generated.bytes.length).toBeGreaterThan(0);
    expect(client.stats.calls).toBeLessThan(24);
  });
});

describe('fused generation when the cloud fails', () => {
  it('carries on edge-only when nothing listens, and stops calling', async () => {
    const { client, source } = fusedOver(`http://127.0.0.1:${await freePort()}/v1`);
    const fused = await generateBytes(source, PROMPT, { maxBytes: MAX_BYTES });
    expect(fused.text).toBe(edgeOnly);
    expect(source.stats.fused).toBe(0);
    expect(client.breaker.state).toBe('open');
    expect(client.stats.calls).toBe(3);
    expect(client.stats.skipped).toBeGreaterThan(0);
    // scoring falls back the same way
    expect(await source.score('Union')).toEqual(await edge.score('Union'));
  });

  it.each([429, 500, 503])('carries on edge-only when the cloud answers %i', async (status) => {
    cloud.faults.set({ errorRate: 1, errorStatus: status, latencyMs: 0 });
    try {
      const { client, source } = fusedOver(`${cloud.url}/v1`);
      const fused = await generateBytes(source, PROMPT, { maxBytes: MAX_BYTES });
      expect(fused.text).toBe(edgeOnly);
      expect(client.stats.failures).toBe(3);
      expect(client.breaker.state).toBe('open');
    } finally {
      cloud.faults.set({ errorRate: 0 });
    }
  });

  it('does not let a slow cloud hold a byte past its deadline', async () => {
    cloud.faults.set({ errorRate: 0, latencyMs: 600 });
    try {
      const { source } = fusedOver(`${cloud.url}/v1`, { deadlineMs: 20 });
      const fused = await generateBytes(source, PROMPT, { maxBytes: 16 });
      expect(fused.bytes.length).toBe(16);
      expect(source.stats.fellBack).toBeGreaterThan(0);
      expect(Math.max(...source.stats.waits)).toBeLessThan(300);
    } finally {
      cloud.faults.set({ latencyMs: 0 });
    }
  });

  it('counts a stream that goes quiet after its headers as a failure, and opens the breaker', async () => {
    cloud.faults.set({ errorRate: 0, latencyMs: 0, streamStallMs: 1500 });
    try {
      const { client, source } = fusedOver(`${cloud.url}/v1`, { timeoutMs: 150, deadlineMs: 40 });
      const fused = await generateBytes(source, PROMPT, { maxBytes: 24 });
      expect(fused.text).toBe(edgeOnly.slice(0, fused.text.length));
      expect(fused.bytes.length).toBe(24);
      expect(client.stats.failures).toBe(3);
      expect(client.breaker.state).toBe('open');
      expect(source.stats.fused).toBe(0);
    } finally {
      cloud.faults.set({ streamStallMs: 0 });
    }
  });

  it('waits for a late cloud only as long as the speed floor allows', async () => {
    cloud.faults.set({ errorRate: 0, latencyMs: 300 });
    try {
      const patient = fusedOver(`${cloud.url}/v1`, { deadlineMs: 1000 }).source;
      await generateBytes(patient, PROMPT, { maxBytes: 16 });
      // without a floor the first byte waits out the round trip and the cloud is used
      expect(Math.max(...patient.stats.waits)).toBeGreaterThan(250);
      expect(patient.stats.fused).toBeGreaterThan(0);
      const floored = fusedOver(`${cloud.url}/v1`, { deadlineMs: 1000, minSpeedShare: 0.5 }).source;
      const text = await generateBytes(floored, PROMPT, { maxBytes: 16 });
      // half the edge's speed leaves about one edge step of waiting per byte: never the 300 ms
      expect(Math.max(...floored.stats.waits)).toBeLessThan(150);
      expect(floored.stats.fused).toBe(0);
      expect(text.text).toBe(edgeOnly.slice(0, text.text.length));
    } finally {
      cloud.faults.set({ latencyMs: 0 });
    }
  });

  it('times out a call that never answers, and probes the cloud back after the cooldown', async () => {
    cloud.faults.set({ errorRate: 0, latencyMs: 1500 });
    const { client, source } = fusedOver(`${cloud.url}/v1`, { timeoutMs: 200, cooldownMs: 300, deadlineMs: 1000 });
    const slow = await generateBytes(source, PROMPT, { maxBytes: 8 });
    expect(slow.bytes.length).toBe(8);
    expect(client.stats.failures).toBeGreaterThan(0);
    cloud.faults.set({ latencyMs: 0 });
    await new Promise((resolve) => setTimeout(resolve, 350));
    const fusedBefore = source.stats.fused;
    await generateBytes(source, PROMPT, { maxBytes: 24 });
    expect(client.breaker.state).toBe('closed');
    expect(source.stats.fused).toBeGreaterThan(fusedBefore);
  });
});
