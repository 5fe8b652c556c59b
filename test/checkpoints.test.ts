/**
 * Every committed checkpoint's model card figures are reproduced by evaluating the saved file
 * (the code path of `pnpm eval`; speech on the smallest model only, for time), and the figures hold
 * the ordering and targets the checkpoints were trained to meet.
 */
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { OrtLlama, loadCheckpoint } from '@floe/model';
import { type TaskName, evaluateTask, taskPartition } from '@floe/tasks';

const root = path.join(import.meta.dirname, '..', 'models');
const models = existsSync(root) ? readdirSync(root).filter((m) => existsSync(path.join(root, m, 'eval.json'))) : [];

const evalOf = (name: string): unknown => JSON.parse(readFileSync(path.join(root, name, 'eval.json'), 'utf8'));

describe.each(models)('models/%s', (name) => {
  const card = evalOf(name) as Record<TaskName, unknown>;
  const tasks: TaskName[] = name === 'edge-tiny' ? ['speech', 'email', 'arithmetic'] : ['email', 'arithmetic'];

  it.each(tasks)(
    'reproduces its %s figures on general:test',
    async (task) => {
      const { config, weights } = await loadCheckpoint(path.join(root, name));
      const model = await OrtLlama.create(config, weights);
      const metrics = await evaluateTask(model, task, taskPartition(task, { seed: 0 }).general.test);
      await model.release();
      expect(metrics).toEqual(card[task]);
    },
    // the cloud model's email pass takes ~70 s alone, longer beside the other test files
    600_000,
  );
});

interface Figures {
  speech: { bitsPerByte: number };
  email: { accuracy: number };
  arithmetic: { exactMatch: number; byDifficulty: Record<string, { exactMatch: number }> };
}
const figuresOf = (name: string) => evalOf(name) as Figures;

describe.runIf(['edge-tiny', 'edge-small', 'cloud'].every((m) => models.includes(m)))('the three checkpoints', () => {
  const [tiny, small, cloud] = ['edge-tiny', 'edge-small', 'cloud'].map(figuresOf) as [Figures, Figures, Figures];

  it('are ordered cloud > edge-small > edge-tiny on every task, but cloud and edge-small on email', () => {
    expect(cloud.speech.bitsPerByte).toBeLessThan(small.speech.bitsPerByte);
    expect(small.speech.bitsPerByte).toBeLessThan(tiny.speech.bitsPerByte);
    expect(small.email.accuracy).toBeGreaterThan(tiny.email.accuracy);
    expect(cloud.email.accuracy).toBeGreaterThan(tiny.email.accuracy);
    expect(cloud.arithmetic.exactMatch).toBeGreaterThan(small.arithmetic.exactMatch);
    expect(small.arithmetic.exactMatch).toBeGreaterThan(tiny.arithmetic.exactMatch);
  });

  // Open gap (issue 5, decision 0011): edge-small 92.5% vs cloud 90.1% on email, 13 of 533 emails
  // (exact McNemar p = 0.06). Two cloud runs with 16M and 18M tokens and email shares .20 and .27 both
  // score 480 of 533, with different errors, and ~93% on their own training mail. When a retrained cloud
  // passes, this fails: drop `.fails`, fold it in above.
  it.fails('have the cloud ahead of edge-small on email (known gap)', () => {
    expect(cloud.email.accuracy).toBeGreaterThan(small.email.accuracy);
  });

  it('meet their targets: cloud speech <= 1.9 bpb and >= 90% on 2-digit + and -, edge-small speech <= 2.3 bpb', () => {
    expect(cloud.speech.bitsPerByte).toBeLessThanOrEqual(1.9);
    expect(cloud.arithmetic.byDifficulty['+ 2']?.exactMatch).toBeGreaterThanOrEqual(0.9);
    expect(cloud.arithmetic.byDifficulty['- 2']?.exactMatch).toBeGreaterThanOrEqual(0.9);
    expect(small.speech.bitsPerByte).toBeLessThanOrEqual(2.3);
  });
});

it('has a model card for every committed checkpoint', () => {
  for (const name of models)
    expect(readFileSync(path.join(root, name, 'MODEL_CARD.md'), 'utf8')).toMatch(/Held-out figures/);
});
