/**
 * pnpm models:pretrain NAME [--steps N] [--seq 256] [--batch 16] [--micro 8] [--lr X] [--seed 0] [--fresh]
 *                            [--mixture speech=0.5,email=0.2,arithmetic=0.3] [--tokenizer FILE] [--init DIR]
 *
 * Trains the preset NAME (edge-tiny, edge-small, cloud) on the general corpora of all tasks with the
 * fastest engine, showing progress; saves its state every --save-every steps and resumes from it unless
 * --fresh. The vocabulary is bytes, or the BPE of --tokenizer (a Hugging Face tokenizer.json); --init
 * starts from a byte-level checkpoint instead of random weights, moved to that vocabulary
 * (transferVocabulary). Writes models/NAME/: config.json, model.safetensors (f16), tokenizer.json (BPE)
 * and MODEL_CARD.md with the data, tokens, steps, wall time, machine and held-out figures for every task.
 */
import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { SingleBar } from 'cli-progress';
import {
  BpeTokenizer,
  ByteTokenizer,
  MODEL_PRESETS,
  type ModelPreset,
  OrtLlama,
  OrtTrainer,
  type TrainerState,
  initWeights,
  loadCheckpoint,
  parameterCount,
  readSafetensors,
  saveCheckpoint,
  type TextTokenizer,
  transferVocabulary,
  writeSafetensors,
} from '@floe/model';
import {
  DEFAULT_MIXTURE,
  DEFAULT_PROMPT_WEIGHT,
  type Mixture,
  PretrainData,
  TASKS,
  TRAINED_CONTEXT,
  evaluateTask,
  taskPartition,
} from '@floe/tasks';
import { type HeldOutFigures, knownGapsSection } from './lib/known-gaps.js';

// Steps, peak learning rates and mixtures of the committed checkpoints. The cloud gets a larger
// arithmetic share for its 2-digit +/- target (>= 90% exact match) and as many steps as fit in the
// 2-hour budget (4,400 x ~1.45 s).
const DEFAULTS: Record<ModelPreset, { steps: number; lr: number; mixture: Mixture }> = {
  'edge-tiny': { steps: 2000, lr: 3e-3, mixture: DEFAULT_MIXTURE },
  'edge-small': { steps: 4000, lr: 2e-3, mixture: DEFAULT_MIXTURE },
  cloud: { steps: 4400, lr: 1.5e-3, mixture: { speech: 0.37, email: 0.27, arithmetic: 0.36 } },
};

function parseMixture(text: string): Mixture {
  const mixture: Mixture = { speech: 0, email: 0, arithmetic: 0 };
  for (const part of text.split(',')) {
    const [task, share] = part.split('=');
    const value = Number(share);
    if (!TASKS.includes(task as never) || !Number.isFinite(value) || value < 0) {
      throw new Error(`--mixture: expected task=share pairs for ${TASKS.join(', ')}, got "${part}"`);
    }
    mixture[task as keyof Mixture] = value;
  }
  return mixture;
}

const { positionals, values } = parseArgs({
  allowPositionals: true,
  options: {
    steps: { type: 'string' },
    seq: { type: 'string', default: String(TRAINED_CONTEXT) },
    batch: { type: 'string', default: '16' },
    micro: { type: 'string', default: '8' },
    lr: { type: 'string' },
    seed: { type: 'string', default: '0' },
    'save-every': { type: 'string', default: '200' },
    out: { type: 'string' },
    fresh: { type: 'boolean', default: false },
    mixture: { type: 'string' },
    'prompt-weight': { type: 'string', default: String(DEFAULT_PROMPT_WEIGHT) },
    tokenizer: { type: 'string' },
    init: { type: 'string' },
  },
});
const name = positionals[0] as ModelPreset | undefined;
if (!name || !(name in MODEL_PRESETS)) {
  console.error(`usage: pnpm models:pretrain <${Object.keys(MODEL_PRESETS).join('|')}> [--steps N] [--fresh] ...`);
  process.exit(2);
}
const tokenizer: TextTokenizer = values.tokenizer ? BpeTokenizer.load(values.tokenizer) : new ByteTokenizer();
const start = values.init
  ? transferVocabulary(await loadCheckpoint(values.init), tokenizer)
  : {
      config: {
        ...MODEL_PRESETS[name],
        vocab_size: tokenizer.vocabSize,
        bos_token_id: tokenizer.bos,
        eos_token_id: tokenizer.eos,
        pad_token_id: tokenizer.pad,
      },
      weights: undefined,
    };
const config = start.config;
const steps = Number(values.steps ?? DEFAULTS[name].steps);
const seqLen = Number(values.seq);
const rows = Number(values.batch);
const micro = Number(values.micro);
const peakLr = Number(values.lr ?? DEFAULTS[name].lr);
const seed = Number(values.seed);
const saveEvery = Number(values['save-every']);
const out = values.out ?? path.join('models', name);
const stateDir = path.join(out, '.pretrain');
const promptWeight = Number(values['prompt-weight']);
if (!Number.isFinite(promptWeight) || promptWeight < 0) {
  console.error(`--prompt-weight: expected a number >= 0, got "${values['prompt-weight']}"`);
  process.exit(2);
}
const warmup = Math.min(100, Math.floor(steps / 10));

/** Linear warm-up, then cosine decay to 10% of the peak. */
function learningRate(step: number): number {
  if (step < warmup) return (peakLr * (step + 1)) / warmup;
  const progress = (step - warmup) / Math.max(1, steps - warmup);
  return peakLr * (0.1 + 0.45 * (1 + Math.cos(Math.PI * progress)));
}

const mixture = values.mixture ? parseMixture(values.mixture) : DEFAULTS[name].mixture;
const data = new PretrainData(seed, seqLen, mixture, promptWeight, tokenizer);
const trainer = await OrtTrainer.create(config, start.weights ?? initWeights(config, seed), {
  learningRate: peakLr,
  weightDecay: 0.1,
  maxGradNorm: 1,
  beta2: 0.99,
  microBatch: micro,
  seqLen,
});

/** Settings a resumed run must share with the run that saved the state, or it would mix two objectives. */
const sha256 = (file: string) => createHash('sha256').update(readFileSync(file)).digest('hex');
const settings = {
  steps,
  seqLen,
  rows,
  micro,
  peakLr,
  seed,
  mixture,
  promptWeight,
  tokenizer: values.tokenizer ? sha256(values.tokenizer) : 'bytes',
  init: values.init ? sha256(path.join(values.init, 'model.safetensors')) : 'random',
};

interface Progress {
  settings: typeof settings;
  elapsedSeconds: number;
  losses: [step: number, loss: number][];
}
let progress: Progress = { settings, elapsedSeconds: 0, losses: [] };
const statePath = path.join(stateDir, 'state.safetensors');
if (values.fresh) await rm(stateDir, { recursive: true, force: true });
if (existsSync(statePath)) {
  const saved = await readSafetensors(statePath);
  const tensors = trainer.state().tensors.map(({ name: tensor, shape }) => {
    const get = (kind: string) => {
      const t = saved.tensors.get(`${kind}:${tensor}`);
      if (!t) throw new Error(`${statePath} lacks ${kind}:${tensor}; start over with --fresh`);
      return t.data;
    };
    return { name: tensor, shape, value: get('p'), m: get('m'), v: get('v') };
  });
  trainer.restore({ step: Number(saved.metadata['step']), tensors });
  progress = JSON.parse(await readFile(path.join(stateDir, 'progress.json'), 'utf8')) as Progress;
  const changed = Object.keys(settings).filter(
    (key) =>
      JSON.stringify(progress.settings?.[key as keyof typeof settings]) !==
      JSON.stringify(settings[key as keyof typeof settings]),
  );
  if (changed.length > 0) {
    console.error(
      `${stateDir} was saved by a run with other settings (${changed.join(', ')}): ` +
        `was ${JSON.stringify(progress.settings ?? {})}, now ${JSON.stringify(settings)}; ` +
        'pass the same settings or start over with --fresh',
    );
    process.exit(2);
  }
  console.log(`resuming ${name} at step ${trainer.state().step} of ${steps}`);
}

async function saveState(state: TrainerState): Promise<void> {
  await mkdir(stateDir, { recursive: true });
  const tensors = state.tensors.flatMap((t) => [
    { name: `p:${t.name}`, shape: t.shape, data: t.value },
    { name: `m:${t.name}`, shape: t.shape, data: t.m },
    { name: `v:${t.name}`, shape: t.shape, data: t.v },
  ]);
  await writeSafetensors(`${statePath}.tmp`, tensors, 'F32', { step: String(state.step) });
  await writeFile(path.join(stateDir, 'progress.json'), JSON.stringify(progress));
  await rename(`${statePath}.tmp`, statePath);
}

const tokensPerStep = rows * seqLen;
console.log(
  `${name}: ${parameterCount(config).toLocaleString()} parameters, ${steps} steps of ${tokensPerStep} tokens, ` +
    `engine ${trainer.engine}, general corpus bytes ${JSON.stringify(data.bytesByTask)}`,
);
const bar = new SingleBar({
  format: `${name} [{bar}] {value}/{total} | loss {loss} | {speed} tok/s | eta {eta_formatted}`,
  etaBuffer: 50,
});
const first = trainer.state().step;
bar.start(steps, first, { loss: '-', speed: '-' });
let smoothed: number | undefined;
let windowStart = performance.now();
let windowSteps = 0;
const startedAt = performance.now() - progress.elapsedSeconds * 1000;
for (let step = first; step < steps; step++) {
  const { loss } = await trainer.step(data.batch(step, rows), learningRate(step));
  smoothed = smoothed === undefined ? loss : 0.95 * smoothed + 0.05 * loss;
  windowSteps++;
  if ((step + 1) % 10 === 0) progress.losses.push([step + 1, loss]);
  const speed = (windowSteps * tokensPerStep) / ((performance.now() - windowStart) / 1000);
  bar.update(step + 1, { loss: smoothed.toFixed(3), speed: Math.round(speed) });
  if (!process.stdout.isTTY && (step + 1) % 50 === 0) {
    console.log(`step ${step + 1}/${steps} loss ${smoothed.toFixed(3)} ${Math.round(speed)} tok/s`);
  }
  if (windowSteps === 50) {
    windowStart = performance.now();
    windowSteps = 0;
  }
  if ((step + 1) % saveEvery === 0 || step + 1 === steps) {
    progress.elapsedSeconds = (performance.now() - startedAt) / 1000;
    await saveState(trainer.state());
  }
}
bar.stop();
progress.elapsedSeconds = (performance.now() - startedAt) / 1000;
const weights = trainer.weights();
await trainer.dispose();

// Save in f16 and evaluate the saved file, so that `pnpm eval` reproduces the card exactly.
await saveCheckpoint(
  out,
  { config, weights, tokenizer },
  { dtype: 'F16', metadata: { steps: String(steps), seed: String(seed) } },
);
const saved = await loadCheckpoint(out);
const model = await OrtLlama.create(saved.config, saved.weights);
const figures: Record<string, unknown> = {};
for (const task of TASKS) {
  const split = taskPartition(task, { seed }).general.test;
  const started = performance.now();
  figures[task] = await evaluateTask(model, task, split, { contextTokens: seqLen, tokenizer: saved.tokenizer });
  console.log(
    `${task} general:test ${JSON.stringify(figures[task])} (${((performance.now() - started) / 1000).toFixed(0)} s)`,
  );
}
await model.release();

const cpu = os.cpus()[0]?.model ?? 'unknown CPU';
const bpe = tokenizer instanceof BpeTokenizer;
const card = `# ${name}

${bpe ? 'A Llama-family model with a byte-level BPE vocabulary' : 'A byte-level Llama-family model'} trained by Floe-TS (\`pnpm models:pretrain ${name}${bpe ? ` --tokenizer ${values.tokenizer}` : ''}${values.init ? ` --init ${values.init}` : ''}\`), ${values.init ? `continued from the byte-level checkpoint then in \`${values.init}\` (body kept; byte tokens keep their embeddings, subword tokens start at the mean of their bytes', decision 0017)` : 'from scratch'}.

| | |
| --- | --- |
| parameters | ${parameterCount(config).toLocaleString('en-US')} |
| shape | hidden ${config.hidden_size}, ${config.num_hidden_layers} layers, ${config.num_attention_heads} heads (${config.num_key_value_heads} key/value), MLP ${config.intermediate_size}, tied embeddings: ${config.tie_word_embeddings} |
| vocabulary | ${bpe ? `${tokenizer.vocabSize.toLocaleString('en-US')} tokens: byte-level BPE in tokenizer.json (256 bytes, single digits, merges learnt on the general corpus; decision 0016), \`<|bos|>\` ${tokenizer.bos}, \`<|eos|>\` ${tokenizer.eos}, \`<|pad|>\` ${tokenizer.pad}` : '256 bytes + `<bos>` 256, `<eos>` 257, `<pad>` 258'} |
| context | ${config.max_position_embeddings} positions; trained on ${seqLen}-token windows |
| data | general (non-client) corpora of the seed-${seed} partitions: speech ${data.bytesByTask.speech.toLocaleString('en-US')} bytes (State of the Union addresses of non-client presidents, Moby-Dick), email ${data.bytesByTask.email.toLocaleString('en-US')} bytes, arithmetic ${data.bytesByTask.arithmetic.toLocaleString('en-US')} bytes; mixture ${JSON.stringify(data.mixture)}; rows are windows of speech and packed email/arithmetic examples (a prompt longer than the window keeps its last tokens, the same number for every answer), prompt tokens weigh ${promptWeight} of the answer tokens in the loss |
| training | ${steps} steps x ${tokensPerStep} tokens = ${(steps * tokensPerStep).toLocaleString('en-US')} tokens; AdamW (b2 0.99, wd 0.1, clip 1), peak lr ${peakLr}, warm-up ${warmup} steps, cosine to 10% |
| engine | ONNX Runtime training graph (packages/model/src/onnx/llama-train-graph.ts) |
| wall time | ${(progress.elapsedSeconds / 60).toFixed(1)} min on ${cpu}, ${os.cpus().length} cores |
| weights | model.safetensors in f16 |

## Held-out figures (general:test of each task, seed ${seed})

Reproduce with \`pnpm eval --model models/${name} --task TASK --split general:test\`. Speech is scored on non-overlapping windows of the training length (BOS + ${seqLen - 1} tokens); bits per byte sum the tokens' log-likelihoods over their bytes.

\`\`\`json
${JSON.stringify(figures, null, 2)}
\`\`\`

${knownGapsSection(name, config, figures as HeldOutFigures, path.dirname(out))}
## Training loss

${lossTable(progress.losses)}
`;
await writeFile(path.join(out, 'MODEL_CARD.md'), card);
await writeFile(path.join(out, 'eval.json'), `${JSON.stringify(figures, null, 2)}\n`);
console.log(`wrote ${out}`);

function lossTable(losses: [number, number][]): string {
  const every = Math.max(1, Math.floor(losses.length / 12));
  const rowsOut = losses.filter((_, i) => i % every === 0 || i === losses.length - 1);
  return [
    `| step | loss (nats/${bpe ? 'token' : 'byte'}) |`,
    '| --- | --- |',
    ...rowsOut.map(([s, l]) => `| ${s} | ${l.toFixed(3)} |`),
  ].join('\n');
}
