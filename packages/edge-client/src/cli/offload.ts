/**
 * `floe-edge rl-train`: learns when to ask the cloud (GAPG, or GRPO for comparison) on the device's own
 * problems. Without `--adapter` it first tunes one on the problems (stage 1). Progress per step;
 * resumable (the trainer's parameters, moments and history are saved every `--save-every` steps under
 * OUT/rl-state, and a run with the same settings continues from there); the adapter is saved in PEFT
 * layout in OUT.
 */
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { type Command, Option } from '@commander-js/extra-typings';
import {
  checkpointSha256,
  loadAdapter,
  loadCheckpoint,
  readSafetensors,
  saveAdapter,
  writeSafetensors,
} from '@floe/model';
import { readDataDir } from '@floe/tasks';
import { CloudClient } from '../inference/cloud-client.js';
import { CloudAnswers } from '../offload/cloud-answers.js';
import { DEFAULT_REWARD, DEFAULT_RHO, rewardIsOrdered } from '../offload/gapg.js';
import { type RlState, RlTrainer } from '../offload/rl-trainer.js';
import { taskTune } from '../offload/task-tuning.js';
import { CloudCallLog } from '../privacy/call-log.js';
import { PrivacyGuard } from '../privacy/guard.js';
import {
  cloudKeyOption,
  cloudModelOption,
  cloudTimeoutOption,
  cloudUrlOption,
  cloudCallLogFile,
  privacyOption,
} from './inference.js';
import {
  UsageError,
  adapterDir,
  configOption,
  dataOption,
  homeOption,
  integer,
  modelOption,
  positiveNumber,
  required,
  say,
  stamp,
  threadsOption,
} from './options.js';

function share(value: string): number {
  const x = Number(value);
  if (value.trim() === '' || !(x >= 0 && x <= 1)) throw new UsageError(`expected a number from 0 to 1, got ${value}`);
  return x;
}

function pattern(value: string): RegExp {
  try {
    return new RegExp(value);
  } catch (error) {
    throw new UsageError(`--answer-format: ${(error as Error).message}`);
  }
}

export function addOffloadCommands(program: Command): void {
  program
    .command('rl-train')
    .description(
      'learn when to ask the cloud: RL (GAPG) on local problems, the cloud called for what the model asks; adapter saved in PEFT layout',
    )
    .addOption(modelOption())
    .addOption(dataOption())
    .addOption(homeOption())
    .addOption(configOption())
    .addOption(cloudUrlOption())
    .addOption(cloudKeyOption())
    .addOption(cloudModelOption())
    .addOption(cloudTimeoutOption())
    .addOption(privacyOption())
    .addOption(new Option('--out <dir>', 'where the adapter and the run state go (default: HOME/adapters/rl)'))
    .addOption(
      new Option('--adapter <dir>', 'the task-tuned adapter to start from (default: tune one first)').argParser(
        adapterDir,
      ),
    )
    .addOption(
      new Option('--task-tuning-steps <n>', 'stage 1 steps when no --adapter is given')
        .argParser(integer(1, 1_000_000))
        .default(300),
    )
    .addOption(
      new Option('--algorithm <name>', 'gapg, or grpo (the baseline)')
        .choices(['gapg', 'grpo'] as const)
        .default('gapg' as const),
    )
    .addOption(new Option('--steps <n>', 'RL steps').argParser(integer(1, 1_000_000)).default(300))
    .addOption(new Option('--group <n>', 'samples per prompt').argParser(integer(2, 64)).default(8))
    .addOption(new Option('--prompts-per-step <n>', 'prompts a step').argParser(integer(1, 1024)).default(32))
    .addOption(new Option('--lr <rate>', 'learning rate').argParser(positiveNumber).default(2e-5))
    .addOption(
      new Option('--rho <x>', 'cloud-only prompts kept per locally solved one (3/7: at most 30%)')
        .argParser(positiveNumber)
        .default(DEFAULT_RHO),
    )
    .addOption(
      new Option('--help-share <x>', 'stage 1: share of examples answered with the help tag')
        .argParser(share)
        .default(0.3),
    )
    .addOption(
      new Option(
        '--cloud-reward <x>',
        `reward of a request the cloud answers right (alpha_c), above alpha_f = ${DEFAULT_REWARD.format} (a wrong answer) and below alpha_a = ${DEFAULT_REWARD.correct} (a right one)`,
      )
        .argParser(positiveNumber)
        .default(DEFAULT_REWARD.cloud),
    )
    .addOption(new Option('--answer-format <regex>', 'a well-formed answer').argParser(pattern).default(/^-?\d+$/))
    .addOption(new Option('--save-every <n>', 'steps between saved states').argParser(integer(1)).default(10))
    .addOption(new Option('--fresh', 'start over instead of resuming a saved run'))
    .addOption(new Option('--seed <n>', 'seed of stage 1 and of the samples').argParser(integer(0)).default(0))
    .addOption(threadsOption())
    .action(async (o) => {
      const reward = { ...DEFAULT_REWARD, cloud: o.cloudReward };
      if (!rewardIsOrdered(reward)) {
        throw new UsageError(
          `--cloud-reward: ${o.cloudReward} must lie above alpha_f = ${DEFAULT_REWARD.format} and below alpha_a = ${DEFAULT_REWARD.correct}`,
        );
      }
      const modelDir = required(o.model, '--model');
      const cloudUrl = required(o.cloudUrl, '--cloud-url');
      const data = readDataDir(required(o.data, '--data'));
      const problems = data.train.examples;
      if (!problems || problems.length === 0) {
        throw new UsageError('--data: rl-train needs a data directory of examples (prompt and answer)');
      }
      const out = path.resolve(o.out ?? path.join(o.home, 'adapters', 'rl'));
      const stateDir = path.join(out, 'rl-state');
      const checkpoint = await loadCheckpoint(modelDir);
      const settings = {
        model: await checkpointSha256(modelDir),
        algorithm: o.algorithm,
        group: o.group,
        promptsPerStep: o.promptsPerStep,
        lr: o.lr,
        rho: o.rho,
        reward,
        seed: o.seed,
        adapter: o.adapter ?? null,
        taskTuningSteps: o.adapter ? null : o.taskTuningSteps,
        helpShare: o.adapter ? null : o.helpShare,
        answerFormat: o.answerFormat.source,
        // the problems themselves: a resumed run must draw from the same ones
        problems: createHash('sha256')
          .update(JSON.stringify(problems.map((p) => [p.prompt, p.answer])))
          .digest('hex'),
      };
      if (o.fresh) await rm(stateDir, { recursive: true, force: true });
      const saved = existsSync(path.join(stateDir, 'progress.json')) ? await loadState(stateDir, settings) : undefined;

      let start;
      if (o.adapter) start = (await loadAdapter(o.adapter)).adapter;
      else if (saved) start = saved.start;
      else {
        say(`${stamp()} stage 1: tuning an adapter on ${problems.length} problems, ${o.taskTuningSteps} steps`);
        const every = Math.max(1, Math.round(o.taskTuningSteps / 10));
        start = await taskTune({
          checkpoint,
          problems,
          helpShare: o.helpShare,
          steps: o.taskTuningSteps,
          seed: o.seed,
          ...(o.threads ? { threads: o.threads } : {}),
          onStep: (step, loss) => {
            if (step % every === 0)
              say(`${stamp()} stage 1 step ${step}/${o.taskTuningSteps} | loss ${loss.toFixed(4)}`);
          },
        });
      }
      const client = new CloudClient(
        { baseURL: cloudUrl, apiKey: o.cloudKey ?? 'none', model: o.cloudModel, timeoutMs: o.cloudTimeoutMs },
        new PrivacyGuard({ policy: o.privacy, log: new CloudCallLog(cloudCallLogFile(o.home)) }),
      );
      const trainer = await RlTrainer.create({
        checkpoint,
        start,
        problems,
        cloud: new CloudAnswers(client),
        algorithm: o.algorithm,
        group: o.group,
        promptsPerStep: o.promptsPerStep,
        learningRate: o.lr,
        rho: o.rho,
        reward,
        seed: o.seed,
        format: o.answerFormat,
        ...(o.threads ? { threads: o.threads } : {}),
      });
      try {
        if (saved) {
          trainer.restore(saved.state);
          say(`${stamp()} resuming ${o.algorithm} at step ${trainer.step} of ${o.steps} (${stateDir})`);
        }
        while (trainer.step < o.steps) {
          const s = await trainer.next();
          say(
            `${stamp()} ${o.algorithm} step ${s.step}/${o.steps} | reward ${s.reward.toFixed(3)} | call ratio ${s.callRatio.toFixed(2)} | ` +
              `accuracy ${s.accuracy.toFixed(2)} | kept ${s.kept}/${s.drawn} | ${s.seconds.toFixed(1)} s`,
          );
          if (s.step % o.saveEvery === 0 || s.step === o.steps) {
            await saveState(stateDir, settings, start, trainer.state());
          }
        }
        await saveAdapter(out, trainer.adapter(), modelDir);
        say(`${stamp()} adapter saved in ${out}; cloud calls logged in ${cloudCallLogFile(o.home)}`);
      } finally {
        await trainer.dispose();
      }
    });
}

type Settings = Record<string, unknown>;

async function saveState(
  dir: string,
  settings: Settings,
  start: Awaited<ReturnType<typeof loadAdapter>>['adapter'],
  state: RlState,
): Promise<void> {
  await mkdir(dir, { recursive: true });
  const tensors = state.trainer.tensors.flatMap((t) => [
    { name: `p:${t.name}`, shape: t.shape, data: t.value },
    { name: `m:${t.name}`, shape: t.shape, data: t.m },
    { name: `v:${t.name}`, shape: t.shape, data: t.v },
  ]);
  await writeSafetensors(path.join(dir, 'state.safetensors.tmp'), tensors, 'F32', {
    step: String(state.trainer.step),
    rlSteps: String(state.history.length),
  });
  // the start adapter is the run's own: written once, before the first saved step names it
  if (!existsSync(path.join(dir, 'start', 'adapter_config.json'))) {
    await saveAdapter(path.join(dir, 'start.tmp'), start);
    await rename(path.join(dir, 'start.tmp'), path.join(dir, 'start'));
  }
  await writeFile(
    path.join(dir, 'progress.json.tmp'),
    JSON.stringify({ settings, algorithm: state.algorithm, seed: state.seed, history: state.history }),
  );
  // the tensors first, the progress last: a run killed between the two renames resumes from the older
  // progress only if it matches the tensors' step (checked on load)
  await rename(path.join(dir, 'state.safetensors.tmp'), path.join(dir, 'state.safetensors'));
  await rename(path.join(dir, 'progress.json.tmp'), path.join(dir, 'progress.json'));
}

async function loadState(
  dir: string,
  settings: Settings,
): Promise<{ state: RlState; start: Awaited<ReturnType<typeof loadAdapter>>['adapter'] }> {
  const progress = JSON.parse(await readFile(path.join(dir, 'progress.json'), 'utf8')) as {
    settings: Settings;
    algorithm: RlState['algorithm'];
    seed: number;
    history: RlState['history'];
  };
  const changed = Object.keys(settings).filter(
    (key) => JSON.stringify(progress.settings[key]) !== JSON.stringify(settings[key]),
  );
  if (changed.length > 0) {
    throw new UsageError(
      `${dir} holds a run with other settings (${changed.join(', ')}); pass the same ones or --fresh to start over`,
    );
  }
  const saved = await readSafetensors(path.join(dir, 'state.safetensors'));
  // a step that kept no prompt updates nothing: the optimizer's step count may trail the RL steps
  const step = Number(saved.metadata['step']);
  const rlSteps = Number(saved.metadata['rlSteps']);
  if (rlSteps !== progress.history.length) {
    throw new UsageError(
      `${dir}: the saved tensors (step ${rlSteps}) and history (${progress.history.length}) disagree; --fresh`,
    );
  }
  const names = [...new Set([...saved.tensors.keys()].map((k) => k.slice(2)))];
  const tensors = names.map((name) => {
    const get = (kind: string) => {
      const t = saved.tensors.get(`${kind}:${name}`);
      if (!t) throw new UsageError(`${dir} lacks ${kind}:${name}; --fresh to start over`);
      return t;
    };
    return { name, shape: get('p').shape, value: get('p').data, m: get('m').data, v: get('v').data };
  });
  return {
    state: {
      algorithm: progress.algorithm,
      seed: progress.seed,
      history: progress.history,
      trainer: { step, tensors },
    },
    start: (await loadAdapter(path.join(dir, 'start'))).adapter,
  };
}
