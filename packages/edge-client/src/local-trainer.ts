/**
 * LoRA training and evaluation on the device's own data, with ONNX Runtime. One trainer per adapter
 * shape (modules and ranks) is compiled once and reset for every round; one inference session scores
 * the held-out split with any adapter of the job's modules.
 *
 * `slowdown` emulates a slower device on a faster host: after each step the trainer pauses for
 * (slowdown - 1) times the step's duration, so a simulated phone takes a phone's wall time without
 * burning the host's cores.
 */
import { type Checkpoint, OrtLlama, OrtTrainer, Random, initLora, isLoraModuleKind, linearPath } from '@floe/model';
import type { LoraAdapter } from '@floe/shared';
import {
  type Example,
  type LocalData,
  type RowSampler,
  type Score,
  type Split,
  TRAINED_CONTEXT,
  answerLoss,
  evaluateSplit,
  rowSampler,
  sampleBatch,
} from '@floe/tasks';

export interface LocalTrainerOptions {
  checkpoint: Checkpoint;
  data: LocalData;
  /** Bytes per training row (default: the window the checkpoints were pretrained on). */
  seqLen?: number;
  /** Rows per gradient run; a round's batch is accumulated over ceil(batch / microBatch) runs (default 8). */
  microBatch?: number;
  /** ORT intra-op threads for training (default 2). */
  threads?: number;
  /** >= 1: wall time of a step is multiplied by this (simulated slower devices). */
  slowdown?: number;
}

export interface TrainRequest {
  /** The adapter to start from; its modules and ranks are what is trained. */
  start: LoraAdapter;
  steps: number;
  batchSize: number;
  learningRate: number;
  seed: number;
  /** Stop early (after the current step) when this returns true, e.g. near a round's deadline. */
  shouldStop?: (stepsDone: number, secondsPerStep: number) => boolean;
  onStep?: (step: number, loss: number) => void;
}

/** Local data cut into what trains and what checks the training (never the held-out test split). */
export interface ValidationSplit {
  train: Split;
  validation: Split;
}

/**
 * Every 10th example, or the last tenth of the prose, is kept back to validate choices on the device;
 * data too small to spare it (under 10 examples, or a tenth shorter than two rows) validates on itself.
 */
export function holdOutValidation(train: Split, seqLen: number): ValidationSplit {
  if (train.examples) {
    const examples = train.examples;
    if (examples.length < 10) return { train, validation: train };
    const keep = examples.filter((_, i) => i % 10 !== 9);
    const back = examples.filter((_, i) => i % 10 === 9);
    const split = (list: Example[]): Split => ({
      examples: list,
      documents: list.map((e) => `${e.prompt}${e.answer}\n`),
    });
    return { train: split(keep), validation: split(back) };
  }
  const text = train.documents.join('\n\n');
  const cut = Math.floor(text.length * 0.9);
  if (text.length - cut < 2 * (seqLen + 1)) return { train, validation: train };
  return { train: { documents: [text.slice(0, cut)] }, validation: { documents: [text.slice(cut)] } };
}

export interface TrainResult {
  adapter: LoraAdapter;
  /** Mean loss of the last quarter of the steps (nats per weighted byte). */
  loss: number;
  steps: number;
  seconds: number;
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** The modules a plan adapts: the job's module kinds on the planned layers (all when absent). */
export function plannedModules(
  config: Checkpoint['config'],
  targetModules: readonly string[],
  layers?: readonly number[],
): string[] {
  const kinds = targetModules.filter(isLoraModuleKind);
  const which = layers ?? [...Array(config.num_hidden_layers).keys()];
  return which.flatMap((layer) => kinds.map((kind) => linearPath(layer, kind)));
}

/** PEFT's initial adapter (A random, B zero: the model starts as the base) for a plan. */
export function initialAdapter(
  config: Checkpoint['config'],
  plan: { rank: number; alpha: number; targetModules: readonly string[]; layers?: readonly number[] | undefined },
  seed: number,
): LoraAdapter {
  return initLora(
    config,
    {
      r: plan.rank,
      lora_alpha: plan.alpha,
      target_modules: plan.targetModules.filter(isLoraModuleKind),
      ...(plan.layers ? { layers_to_transform: [...plan.layers] } : {}),
    },
    seed,
  );
}

export class LocalTrainer {
  readonly seqLen: number;
  /**
   * The number of local training examples, the weight this device's update may claim: examples, or
   * for prose the number of training windows its text fills.
   */
  readonly numExamples: number;
  private readonly split: ValidationSplit;
  private readonly sampler: RowSampler;
  private readonly trainers = new Map<string, OrtTrainer>();
  private evaluator: { modules: string; model: OrtLlama } | undefined;

  constructor(readonly options: LocalTrainerOptions) {
    const { config } = options.checkpoint;
    this.seqLen = Math.min(options.seqLen ?? TRAINED_CONTEXT, config.max_position_embeddings);
    this.split = holdOutValidation(options.data.train, this.seqLen);
    this.sampler = rowSampler(this.split.train, this.seqLen);
    const { train } = this.split;
    const proseBytes = () => train.documents.reduce((n, d) => n + new TextEncoder().encode(d).length, 0);
    this.numExamples = train.examples?.length ?? Math.max(1, Math.ceil(proseBytes() / this.seqLen));
  }

  private async trainerFor(adapter: LoraAdapter): Promise<OrtTrainer> {
    const key = `${adapter.alpha}|${[...adapter.modules].map(([p, f]) => `${p}:${f.rank}`).join(',')}`;
    let trainer = this.trainers.get(key);
    if (trainer) {
      trainer.reset(adapter);
      return trainer;
    }
    const { config, weights } = this.options.checkpoint;
    trainer = await OrtTrainer.create(config, weights, {
      learningRate: 0,
      maxGradNorm: 1,
      adapter,
      microBatch: this.options.microBatch ?? 8,
      seqLen: this.seqLen,
      threads: this.options.threads ?? 2,
    });
    this.trainers.set(key, trainer);
    return trainer;
  }

  async train(request: TrainRequest): Promise<TrainResult> {
    const started = performance.now();
    const trainer = await this.trainerFor(request.start);
    const random = new Random(request.seed);
    const slowdown = Math.max(1, this.options.slowdown ?? 1);
    const losses: number[] = [];
    let stepSeconds = 0;
    for (let step = 0; step < request.steps; step++) {
      if (step > 0 && request.shouldStop?.(step, stepSeconds)) break;
      const stepStarted = performance.now();
      const { loss } = await trainer.step(sampleBatch(this.sampler, random, request.batchSize), request.learningRate);
      if (slowdown > 1) await sleep((slowdown - 1) * (performance.now() - stepStarted));
      stepSeconds = (performance.now() - stepStarted) / 1000;
      losses.push(loss);
      request.onStep?.(step, loss);
    }
    const tail = losses.slice(-Math.max(1, Math.ceil(losses.length / 4)));
    return {
      adapter: trainer.adapter() as LoraAdapter,
      loss: tail.reduce((a, b) => a + b, 0) / tail.length,
      steps: losses.length,
      seconds: (performance.now() - started) / 1000,
    };
  }

  /**
   * `adapter` on the validation split kept back from training, lower is better: bits per byte for prose,
   * the answers' loss (nats per byte) for examples, whose accuracies on a tenth of the data move by
   * whole examples.
   */
  async validate(adapter?: LoraAdapter): Promise<{ metric: string; value: number }> {
    const { validation } = this.split;
    if (!validation.examples) {
      const score = (await this.score(validation, adapter)) as Score;
      return { metric: score.metric, value: score.value };
    }
    const model = await this.evaluatorFor(adapter);
    const loss = await answerLoss(model, validation.examples, { lora: adapter, contextTokens: this.seqLen });
    return { metric: 'answer-loss', value: loss.nats };
  }

  /** The held-out figure with `adapter` (the base model when absent); undefined without a test split. */
  async evaluate(
    adapter?: LoraAdapter,
    onProgress?: (done: number, total: number) => void,
  ): Promise<Score | undefined> {
    return this.options.data.test ? this.score(this.options.data.test, adapter, onProgress) : undefined;
  }

  private async score(
    split: Split,
    adapter?: LoraAdapter,
    onProgress?: (done: number, total: number) => void,
  ): Promise<Score | undefined> {
    const model = await this.evaluatorFor(adapter);
    return evaluateSplit(model, split, this.options.data.manifest, {
      lora: adapter,
      contextTokens: this.seqLen,
      ...(onProgress ? { onProgress } : {}),
    });
  }

  /** An inference session with LoRA inputs for the modules of `adapter` (kept while they stay the same). */
  private async evaluatorFor(adapter: LoraAdapter | undefined): Promise<OrtLlama> {
    const { checkpoint } = this.options;
    const modules = [...(adapter?.modules.keys() ?? [])].sort();
    const key = modules.join(',');
    if (this.evaluator?.modules !== key) {
      await this.evaluator?.model.release();
      const model = await OrtLlama.create(checkpoint.config, checkpoint.weights, { loraModules: modules });
      this.evaluator = { modules: key, model };
    }
    return this.evaluator.model;
  }

  async dispose(): Promise<void> {
    await Promise.all([...this.trainers.values()].map((t) => t.dispose()));
    this.trainers.clear();
    await this.evaluator?.model.release();
    this.evaluator = undefined;
  }
}
