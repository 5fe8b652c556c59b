/**
 * Every committed checkpoint's model card figures are reproduced by evaluating the saved file
 * (the code path of `pnpm eval`). Speech is checked on the smallest model only, for time.
 */
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { OrtLlama, loadCheckpoint } from '@floe/model';
import { type TaskName, evaluateTask, taskPartition } from '@floe/tasks';

const root = path.join(import.meta.dirname, '..', 'models');
const models = existsSync(root) ? readdirSync(root).filter((m) => existsSync(path.join(root, m, 'eval.json'))) : [];

describe.each(models)('models/%s', (name) => {
  const card = JSON.parse(readFileSync(path.join(root, name, 'eval.json'), 'utf8')) as Record<TaskName, unknown>;
  const tasks: TaskName[] = name === 'edge-tiny' ? ['speech', 'email', 'arithmetic'] : ['email', 'arithmetic'];

  it.each(tasks)(
    'reproduces its %s figures on general:test',
    async (task) => {
      const { config, weights } = await loadCheckpoint(path.join(root, name));
      const model = await OrtLlama.create(config, weights);
      const metrics = await evaluateTask(model, task, taskPartition(task, { seed: 0 }).general.test);
      await model.release();
      expect(metrics).toEqual(card[task]);
      // the cloud model's email pass takes ~70 s alone, longer beside the other test files
    },
    600_000,
  );
});

it('has a model card for every committed checkpoint', () => {
  for (const name of models)
    expect(readFileSync(path.join(root, name, 'MODEL_CARD.md'), 'utf8')).toMatch(/Held-out figures/);
});
