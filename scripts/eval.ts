/**
 * pnpm eval --model DIR [--adapter DIR] --task speech|email|arithmetic [--split general:test] [--seed 0] [--json FILE]
 * Evaluates a checkpoint (optionally with a LoRA adapter) on one split of one task.
 */
import { writeFile } from 'node:fs/promises';
import { parseArgs } from 'node:util';
import { SingleBar } from 'cli-progress';
import { OrtLlama, loadAdapter, loadCheckpoint } from '@floe/model';
import { TASKS, type TaskName, evaluateTask, namedSplit, taskPartition } from '@floe/tasks';

const { values } = parseArgs({
  options: {
    model: { type: 'string' },
    adapter: { type: 'string' },
    task: { type: 'string' },
    split: { type: 'string', default: 'general:test' },
    seed: { type: 'string', default: '0' },
    json: { type: 'string' },
  },
});
if (!values.model || !values.task || !(TASKS as readonly string[]).includes(values.task)) {
  console.error(
    `usage: pnpm eval --model DIR [--adapter DIR] --task ${TASKS.join('|')} [--split general:test] [--seed 0] [--json FILE]`,
  );
  process.exit(2);
}
const task = values.task as TaskName;
const checkpoint = await loadCheckpoint(values.model);
const adapter = values.adapter ? (await loadAdapter(values.adapter)).adapter : undefined;
const model = await OrtLlama.create(checkpoint.config, checkpoint.weights, {
  loraModules: adapter ? [...adapter.modules.keys()] : [],
});
const split = namedSplit(taskPartition(task, { seed: Number(values.seed) }), values.split);
const bar = new SingleBar({ format: `${task} ${values.split} [{bar}] {value}/{total}`, noTTYOutput: false });
bar.start(1, 0);
const metrics = await evaluateTask(model, task, split, {
  lora: adapter,
  tokenizer: checkpoint.tokenizer,
  onProgress: (done, total) => {
    bar.setTotal(total);
    bar.update(done);
  },
});
bar.stop();
await model.release();
const result = {
  model: values.model,
  adapter: values.adapter ?? null,
  task,
  split: values.split,
  seed: Number(values.seed),
  metrics,
};
console.log(JSON.stringify(result, null, 2));
if (values.json) await writeFile(values.json, `${JSON.stringify(result, null, 2)}\n`);
