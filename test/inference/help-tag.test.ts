/**
 * Offloading on the device, with the real edge model and the real cloud stand-in on loopback: an
 * adapter tuned to ask for help (stage 1 with every answer the help tag) hands its queries to the
 * cloud through the text generator while the call budget lasts, never shows the tag, and answers
 * itself once the budget is spent; RL from it calls the cloud once per prompt and resumes exactly.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type CloudServer, startCloud } from '@floe/cloud-llm';
import {
  CloudAnswers,
  CloudClient,
  EdgeModels,
  HELP_TAG,
  RlTrainer,
  type TextOutcome,
  TextGenerator,
  TokenBucket,
  greedyReplies,
  taskTune,
} from '@floe/edge-client';
import { type Checkpoint, OrtLlama, loadCheckpoint, saveAdapter } from '@floe/model';
import type { LoraAdapter } from '@floe/shared';
import { type Example, arithmeticTask } from '@floe/tasks';

const ROOT = path.join(import.meta.dirname, '..', '..');
const EDGE = path.join(ROOT, 'models', 'edge-small');

let cloud: CloudServer;
let dir: string;
let checkpoint: Checkpoint;
let asker: LoraAdapter;
let problems: Example[];
let models: EdgeModels;

const client = () =>
  new CloudClient({ baseURL: `${cloud.url}/v1`, apiKey: 'none', model: 'floe-cloud', timeoutMs: 10_000 });

beforeAll(async () => {
  dir = mkdtempSync(path.join(os.tmpdir(), 'floe-help-'));
  checkpoint = await loadCheckpoint(EDGE);
  problems = (arithmeticTask({ seed: 0 }).general.train.examples ?? []).slice(0, 400);
  // every answer the help tag: the tuned model asks whatever it is asked
  asker = await taskTune({ checkpoint, problems, helpShare: 1, steps: 40, seed: 1 });
  await saveAdapter(path.join(dir, 'asker'), asker, 'edge-small');
  models = await EdgeModels.open({ modelDir: EDGE, adapters: [{ id: 'asker', dir: path.join(dir, 'asker') }] });
  cloud = await startCloud({ modelDir: path.join(ROOT, 'models', 'cloud'), port: 0 });
}, 180_000);

afterAll(async () => {
  await cloud?.close();
  rmSync(dir, { recursive: true, force: true });
});

async function answer(generator: TextGenerator, prompt: string): Promise<{ text: string; outcome: TextOutcome }> {
  const stream = generator.generate({
    model: 'asker',
    prompt,
    maxTokens: 40,
    temperature: 0,
    topP: 1,
    stop: ['\n'],
    seed: 0,
    mode: 'edge',
    policy: 'redact',
    deadlineMs: 100,
  });
  let text = '';
  for (;;) {
    const next = await stream.next();
    if (next.done) return { text, outcome: next.value };
    text += next.value;
  }
}

describe('the help tag at inference', () => {
  it('stage 1 with a help share of 1 teaches the tag: every greedy reply asks', async () => {
    const model = await OrtLlama.create(checkpoint.config, checkpoint.weights, {
      loraModules: [...asker.modules.keys()].sort(),
    });
    try {
      const held = (arithmeticTask({ seed: 0 }).general.test.examples ?? []).slice(0, 16);
      const asks = await greedyReplies(
        model,
        asker,
        held.map((p) => p.prompt),
        { help: true },
      );
      expect(asks.map((r) => r.kind)).toEqual(new Array(16).fill('help'));
      const banned = await greedyReplies(
        model,
        asker,
        held.map((p) => p.prompt),
        { help: false },
      );
      for (const r of banned) expect(r.kind === 'help').toBe(false);
    } finally {
      await model.release();
    }
  });

  it('hands the query to the cloud while the budget lasts, then answers on the device; the tag never shows', async () => {
    const generator = new TextGenerator(models, client(), {}, { budget: new TokenBucket(1, 3600) });
    const before = cloud.received.length;
    const first = await answer(generator, '12+34=');
    expect(first.outcome.help).toBe('cloud');
    expect(first.outcome.answeredBy).toBe('edge+cloud');
    const calls = cloud.received.slice(before);
    expect(calls.map((r) => r.prompt)).toEqual(['12+34=']);
    // the text is the cloud's own answer to the prompt
    const direct = await new CloudAnswers(client()).answer('12+34=');
    expect(first.text.trim()).toBe(direct);
    expect(first.text).not.toContain('<unknown');

    const afterFirst = cloud.received.length;
    const second = await answer(generator, '56+21=');
    expect(second.outcome.help).toBe('local');
    expect(cloud.received.length).toBe(afterFirst);
    expect(second.text).not.toContain('<');
    expect(second.text.length).toBeGreaterThan(0);
  });

  it('answers on the device when there is no cloud', async () => {
    const { text, outcome } = await answer(new TextGenerator(models, undefined), '7*8=');
    expect(outcome.help).toBe('local');
    expect(outcome.answeredBy).toBe('edge');
    expect(text).not.toContain(HELP_TAG.slice(0, 2));
  });
});

describe('RL from a task-tuned adapter', () => {
  it('calls the cloud once per prompt, and a run resumed from its state continues exactly', async () => {
    const tuned = await taskTune({ checkpoint, problems, helpShare: 0.3, steps: 30, seed: 2 });
    const options = (cloudAnswers: CloudAnswers) => ({
      checkpoint,
      start: tuned,
      problems: problems.slice(0, 24),
      cloud: cloudAnswers,
      algorithm: 'gapg' as const,
      group: 4,
      promptsPerStep: 8,
      seed: 5,
    });
    const answers = new CloudAnswers(client());
    const straight = await RlTrainer.create(options(answers));
    const steps = [await straight.next(), await straight.next()];
    const saved = straight.state();
    await straight.next();
    const expected = straight.adapter();
    await straight.dispose();
    // 3 steps of 8 prompts from 24: every prompt the cloud was asked about, it was asked about once
    expect(answers.stats.calls).toBe(answers.size);
    expect(answers.stats.calls).toBeGreaterThan(0);
    expect(answers.stats.cached).toBeGreaterThan(0);
    expect(steps.map((s) => s.drawn)).toEqual([8, 8]);

    const resumed = await RlTrainer.create(options(new CloudAnswers(client())));
    resumed.restore(saved);
    expect(resumed.step).toBe(2);
    await resumed.next();
    const got = resumed.adapter();
    await resumed.dispose();
    for (const [name, f] of expected.modules) {
      expect(Array.from(got.modules.get(name)!.A)).toEqual(Array.from(f.A));
      expect(Array.from(got.modules.get(name)!.B)).toEqual(Array.from(f.B));
    }
    // and it moved: the adapter is not the one RL started from
    const start = tuned.modules.values().next().value!;
    const moved = got.modules.values().next().value!;
    expect(Array.from(moved.B)).not.toEqual(Array.from(start.B));
  });
});
