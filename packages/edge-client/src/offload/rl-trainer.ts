/**
 * Stage 2 of offloading: reinforcement learning of when to ask the cloud (GAPG, or GRPO as the baseline).
 * A step draws `promptsPerStep` training problems, samples `group` replies to each with the current
 * adapter (one batched decoding run), rewards them (a reply that asks is sent to the cloud, one call
 * per prompt, cached), filters the prompts, and takes one policy-gradient step through the ORT trainer:
 * each reply's tokens weigh its group advantage, summed over the sequence, so the step raises the
 * log-likelihood of replies that did better than their group and lowers the others'.
 *
 * Every step's randomness comes from (seed, step), so a run resumed from its saved state continues as
 * the uninterrupted run would.
 */
import { type Checkpoint, OrtLlama, OrtTrainer, type TrainBatch, type TrainerState, generate } from '@floe/model';
import { type LoraAdapter, Random } from '@floe/shared';
import type { Example } from '@floe/tasks';
import type { CloudAnswers } from './cloud-answers.js';
import {
  type Algorithm,
  DEFAULT_REWARD,
  DEFAULT_RHO,
  type RewardWeights,
  filterPrompts,
  groupAdvantages,
  rewardOf,
} from './gapg.js';
import { HELP_TAG, parseReply } from './help-tag.js';

export interface RlOptions {
  checkpoint: Checkpoint;
  /** The task-tuned adapter RL starts from (stage 1). */
  start: LoraAdapter;
  problems: readonly Example[];
  cloud: CloudAnswers;
  algorithm: Algorithm;
  /** Samples per prompt (G). */
  group?: number;
  promptsPerStep?: number;
  learningRate?: number;
  temperature?: number;
  rho?: number;
  reward?: RewardWeights;
  seed?: number;
  /** A well-formed answer (default: an integer). */
  format?: RegExp;
  /** Bytes a reply may take (enough for the help tag and its newline). */
  maxReplyBytes?: number;
  threads?: number;
}

export interface RlStep {
  step: number;
  /** Mean reward over every sample of the step. */
  reward: number;
  /** Share of samples that asked for help. */
  callRatio: number;
  /** Share of samples that answered correctly on their own. */
  accuracy: number;
  /** Prompts the filter kept, of those drawn. */
  kept: number;
  drawn: number;
  /** Drawn prompts left out because the cloud gave no answer (down, refused, blocked by the guard). */
  unanswered: number;
  seconds: number;
}

export interface RlState {
  algorithm: Algorithm;
  seed: number;
  trainer: TrainerState;
  history: RlStep[];
}

const DEFAULTS = { group: 8, promptsPerStep: 32, learningRate: 2e-5, temperature: 1, maxReplyBytes: 28 };

export class RlTrainer {
  readonly history: RlStep[] = [];
  private readonly seqLen: number;

  private constructor(
    private readonly options: RlOptions,
    private readonly trainer: OrtTrainer,
    private readonly sampler: OrtLlama,
  ) {
    this.seqLen = sequenceRoom(options);
  }

  static async create(options: RlOptions): Promise<RlTrainer> {
    if (options.problems.length === 0) throw new Error('RL needs training problems');
    const { config, weights } = options.checkpoint;
    const microBatch = 32;
    const trainer = await OrtTrainer.create(config, weights, {
      learningRate: options.learningRate ?? DEFAULTS.learningRate,
      maxGradNorm: 1,
      adapter: options.start,
      microBatch,
      seqLen: sequenceRoom(options),
      threads: options.threads ?? 2,
    });
    try {
      const sampler = await OrtLlama.create(config, weights, {
        loraModules: [...options.start.modules.keys()].sort(),
        threads: options.threads ?? 2,
      });
      return new RlTrainer(options, trainer, sampler);
    } catch (error) {
      await trainer.dispose();
      throw error;
    }
  }

  get step(): number {
    return this.history.length;
  }

  adapter(): LoraAdapter {
    return this.trainer.adapter() as LoraAdapter;
  }

  state(): RlState {
    return {
      algorithm: this.options.algorithm,
      seed: this.options.seed ?? 0,
      trainer: this.trainer.state(),
      history: [...this.history],
    };
  }

  restore(state: RlState): void {
    if (state.algorithm !== this.options.algorithm || state.seed !== (this.options.seed ?? 0)) {
      throw new Error(`the saved run is ${state.algorithm} seed ${state.seed}, not this one`);
    }
    // saved tensors may come back in any order (a file's), the trainer takes them in its own
    const byName = new Map(state.trainer.tensors.map((t) => [t.name, t]));
    const tensors = this.trainer.state().tensors.map(({ name }) => {
      const saved = byName.get(name);
      if (!saved) throw new Error(`the saved run lacks ${name}`);
      return saved;
    });
    this.trainer.restore({ step: state.trainer.step, tensors });
    this.history.splice(0, this.history.length, ...state.history);
  }

  async next(): Promise<RlStep> {
    const started = performance.now();
    const { options } = this;
    const G = options.group ?? DEFAULTS.group;
    const random = new Random(((options.seed ?? 0) * 1_000_003 + this.step) >>> 0);
    const drawn = random
      .shuffled([...options.problems.keys()])
      .slice(0, Math.min(options.promptsPerStep ?? DEFAULTS.promptsPerStep, options.problems.length))
      .map((i) => options.problems[i] as Example);
    const adapter = this.adapter();
    const replies = await generate(
      this.sampler,
      drawn.flatMap((p) => new Array<string>(G).fill(p.prompt)),
      {
        maxNewTokens: options.maxReplyBytes ?? DEFAULTS.maxReplyBytes,
        stop: ['\n'],
        temperature: options.temperature ?? DEFAULTS.temperature,
        seed: random.integer(2 ** 31),
        lora: adapter,
      },
    );
    // a prompt the cloud gave no answer to (down, refused, blocked) says nothing about asking: left out
    const verdicts = await Promise.all(drawn.map((p) => options.cloud.correct(p)));
    const answered = drawn.filter((_, p) => verdicts[p] !== undefined);
    const cloud = verdicts.filter((v): v is boolean => v !== undefined);
    const groups = answered.map((problem, p) => {
      const at = drawn.indexOf(problem);
      const samples = replies.slice(at * G, (at + 1) * G).map((generation) => {
        const reply = parseReply(generation.text, options.format);
        return {
          generation,
          reply,
          reward: rewardOf(reply, problem.answer, cloud[p] as boolean, options.reward ?? DEFAULT_REWARD),
        };
      });
      return {
        problem,
        samples,
        solvedLocally: samples.some((s) => s.reply.kind === 'answer' && s.reply.answer === problem.answer),
        cloudCorrect: cloud[p] as boolean,
      };
    });
    const kept = filterPrompts(groups, options.rho ?? DEFAULT_RHO, random);
    const rows: Row[] = [];
    for (const index of kept) {
      const group = groups[index]!;
      const advantages = groupAdvantages(
        group.samples.map((s) => s.reward),
        options.algorithm,
      );
      group.samples.forEach((sample, i) => {
        const advantage = advantages[i] as number;
        if (advantage === 0) return;
        const prompt = [this.bos, ...new TextEncoder().encode(group.problem.prompt)];
        const { tokens: reply, chosen } = constrained(
          sample.generation.tokens,
          sample.generation.finishReason,
          this.eos,
        );
        // GRPO averages over each reply's tokens; GAPG sums them (the sequence's log-likelihood)
        const perToken = options.algorithm === 'grpo' ? advantage / Math.max(1, chosen) : advantage;
        rows.push({ tokens: [...prompt, ...reply], answerFrom: prompt.length, chosen, weight: perToken });
      });
    }
    if (rows.length > 0) {
      await this.trainer.step(this.batchOf(rows), undefined, { normalizer: kept.length });
    }
    const all = groups.flatMap((g) => g.samples);
    const report: RlStep = {
      step: this.step + 1,
      reward: mean(all.map((s) => s.reward)),
      callRatio: mean(all.map((s) => (s.reply.kind === 'help' ? 1 : 0))),
      accuracy: mean(
        groups.flatMap((g) =>
          g.samples.map((s) => (s.reply.kind === 'answer' && s.reply.answer === g.problem.answer ? 1 : 0)),
        ),
      ),
      kept: kept.length,
      drawn: drawn.length,
      unanswered: drawn.length - answered.length,
      seconds: (performance.now() - started) / 1000,
    };
    this.history.push(report);
    return report;
  }

  private get bos(): number {
    return this.options.checkpoint.config.bos_token_id;
  }

  private get eos(): number {
    return this.options.checkpoint.config.eos_token_id;
  }

  /** Rows right-padded to the graph's length; only the reply's tokens carry weight. */
  private batchOf(rows: readonly Row[]): TrainBatch {
    const pad = this.options.checkpoint.config.pad_token_id;
    const S = this.seqLen;
    const batch: TrainBatch = { inputIds: [], targets: [], weights: [], attentionMask: [] };
    for (const row of rows) {
      const tokens = row.tokens.slice(0, S + 1);
      const n = tokens.length - 1;
      const fill = (values: number[], value: number) => [
        ...values,
        ...new Array<number>(S - values.length).fill(value),
      ];
      batch.inputIds.push(fill(tokens.slice(0, -1), pad));
      batch.targets.push(fill(tokens.slice(1), pad));
      // target j is token j + 1: a reply token the policy chose when answerFrom <= j + 1 < answerFrom + chosen
      // (the forced rest of a help tag carries no choice, so no weight)
      const chosen = (j: number) => j + 1 >= row.answerFrom && j + 1 < row.answerFrom + row.chosen;
      batch.weights.push(
        fill(
          Array.from({ length: n }, (_, j) => (chosen(j) ? row.weight : 0)),
          0,
        ),
      );
      batch.attentionMask!.push(fill(new Array<number>(n).fill(1), 0));
    }
    return batch;
  }

  async dispose(): Promise<void> {
    await Promise.all([this.trainer.dispose(), this.sampler.release()]);
  }
}

interface Row {
  tokens: number[];
  /** Where the reply starts in `tokens`. */
  answerFrom: number;
  /** Reply tokens the policy chose (those after the help tag's first byte are forced). */
  chosen: number;
  weight: number;
}

const TAG_BYTES = [...new TextEncoder().encode(HELP_TAG)];
const NEWLINE = 10;

/**
 * A sampled reply as the constrained policy produced it: once it opens the help tag, the rest of the
 * tag and the newline are forced (they carry no choice, so no gradient); otherwise the reply as sampled
 * and its end (EOS when the model ended the text).
 */
function constrained(sampled: readonly number[], finish: string, eos: number): { tokens: number[]; chosen: number } {
  const opens = sampled.indexOf(TAG_BYTES[0] as number);
  if (opens >= 0) return { tokens: [...sampled.slice(0, opens), ...TAG_BYTES, NEWLINE], chosen: opens + 1 };
  const tokens = finish === 'eos' ? [...sampled, eos] : [...sampled];
  return { tokens, chosen: tokens.length };
}

/** Tokens a training row holds: BOS, the longest prompt, the longest reply and its end. */
function sequenceRoom(options: RlOptions): number {
  const longestPrompt = options.problems.reduce((n, p) => Math.max(n, new TextEncoder().encode(p.prompt).length), 0);
  const reply = Math.max(options.maxReplyBytes ?? DEFAULTS.maxReplyBytes, HELP_TAG.length) + 1;
  return 1 + longestPrompt + reply;
}

function mean(values: readonly number[]): number {
  return values.length === 0 ? 0 : values.reduce((a, b) => a + b, 0) / values.length;
}
