/**
 * Stage 1 of offloading: a LoRA adapter tuned on problems of mixed difficulty, so that the edge model
 * answers in format. A random share of the examples is answered with the help tag instead, whatever
 * their difficulty: the tuned model then knows the tag and emits it now and then, which is what RL
 * needs to explore asking, but has learned nothing about when to ask.
 */
import { ByteTokenizer, type Checkpoint, type OrtLlama, OrtTrainer, generate } from '@floe/model';
import { type LoraAdapter, Random } from '@floe/shared';
import { type Example, ExampleSampler, sampleBatch } from '@floe/tasks';
import { initialAdapter } from '../local-trainer.js';
import { HELP_TAG, HELP_TAG_FIRST_BYTE, type Reply, parseReply } from './help-tag.js';

export interface TaskTuningOptions {
  checkpoint: Checkpoint;
  problems: readonly Example[];
  /** Share of examples answered with the help tag (default 0.3). */
  helpShare?: number;
  rank?: number;
  alpha?: number;
  targetModules?: readonly string[];
  steps: number;
  batchSize?: number;
  learningRate?: number;
  seed?: number;
  threads?: number;
  onStep?: (step: number, loss: number) => void;
}

/** The problems with a random `share` of them answered with the help tag. */
export function withHelpExamples(problems: readonly Example[], share: number, seed: number): Example[] {
  const random = new Random(seed);
  return problems.map((p) => (random.next() < share ? { prompt: p.prompt, answer: HELP_TAG } : p));
}

export const OFFLOAD_LORA = { rank: 8, alpha: 16, targetModules: ['q_proj', 'v_proj', 'up_proj', 'down_proj'] };

export async function taskTune(options: TaskTuningOptions): Promise<LoraAdapter> {
  const seed = options.seed ?? 0;
  const { config, weights } = options.checkpoint;
  const start = initialAdapter(
    config,
    {
      rank: options.rank ?? OFFLOAD_LORA.rank,
      alpha: options.alpha ?? OFFLOAD_LORA.alpha,
      targetModules: options.targetModules ?? OFFLOAD_LORA.targetModules,
    },
    seed,
  );
  const seqLen = 64;
  const sampler = new ExampleSampler(withHelpExamples(options.problems, options.helpShare ?? 0.3, seed), seqLen);
  const trainer = await OrtTrainer.create(config, weights, {
    learningRate: options.learningRate ?? 2e-3,
    maxGradNorm: 1,
    adapter: start,
    microBatch: 16,
    seqLen,
    threads: options.threads ?? 2,
  });
  try {
    const random = new Random(seed + 1);
    for (let step = 1; step <= options.steps; step++) {
      const { loss } = await trainer.step(sampleBatch(sampler, random, options.batchSize ?? 32));
      options.onStep?.(step, loss);
    }
    return trainer.adapter() as LoraAdapter;
  } finally {
    await trainer.dispose();
  }
}

/**
 * The model's greedy replies to `prompts` with `adapter`; `help: false` bans the help tag's first byte,
 * so every reply is the edge's own attempt.
 */
export async function greedyReplies(
  model: OrtLlama,
  adapter: LoraAdapter | undefined,
  prompts: readonly string[],
  options: { help: boolean; batch?: number; maxReplyBytes?: number },
): Promise<Reply[]> {
  const out: Reply[] = [];
  const batch = options.batch ?? 64;
  for (let i = 0; i < prompts.length; i += batch) {
    const generations = await generate(model, prompts.slice(i, i + batch), {
      maxNewTokens: options.maxReplyBytes ?? HELP_TAG.length + 2,
      stop: ['\n'],
      lora: adapter,
      ...(options.help ? {} : { logitBias: new Map([[HELP_TAG_FIRST_BYTE, -Infinity]]) }),
    });
    out.push(...generations.map((g) => parseReply(g.text)));
  }
  return out;
}

/**
 * The probability that the model's reply to each prompt opens with the help tag (its first byte), a
 * policy's inclination to ask: ranking prompts by it lets a budget be filled, or cut, by a threshold.
 */
export async function askProbabilities(
  model: OrtLlama,
  adapter: LoraAdapter | undefined,
  prompts: readonly string[],
  batch = 64,
): Promise<number[]> {
  const { config } = model;
  const tokenizer = new ByteTokenizer();
  const out: number[] = [];
  for (let i = 0; i < prompts.length; i += batch) {
    const encoded = prompts.slice(i, i + batch).map((p) => tokenizer.encode(p, { bos: true }));
    const width = Math.max(...encoded.map((e) => e.length));
    const ids = encoded.map((e) => [...new Array<number>(width - e.length).fill(config.pad_token_id), ...e]);
    const mask = encoded.map((e) => [
      ...new Array<number>(width - e.length).fill(0),
      ...new Array<number>(e.length).fill(1),
    ]);
    const { logits } = await model.forward(ids, { attentionMask: mask, lora: adapter });
    const V = config.vocab_size;
    encoded.forEach((_, b) => {
      const row = logits.subarray((b * width + width - 1) * V, (b * width + width) * V);
      let max = -Infinity;
      for (let id = 0; id < V; id++)
        if (id !== config.pad_token_id && id !== config.bos_token_id) max = Math.max(max, row[id] as number);
      let total = 0;
      for (let id = 0; id < V; id++)
        if (id !== config.pad_token_id && id !== config.bos_token_id) total += Math.exp((row[id] as number) - max);
      out.push(Math.exp((row[HELP_TAG_FIRST_BYTE] as number) - max) / total);
    });
  }
  return out;
}
