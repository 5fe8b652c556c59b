/**
 * Training on ONNX Runtime: a gradient graph per micro-batch shape and an AdamW graph, so a step is
 * one run per micro-batch plus one optimizer run. Parameters and moments live in JS typed arrays and
 * are fed to both graphs.
 */
import ort from 'onnxruntime-node';
import type { LoraAdapter, LoraFactors } from '@floe/shared';
import type { LlamaConfig } from '../config.js';
import type { Weights } from '../checkpoint.js';
import { checkAdapter } from '../lora.js';
import { buildAdamWGraph } from '../onnx/adamw-graph.js';
import { type TrainableTensor, buildLlamaTrainGraph } from '../onnx/llama-train-graph.js';
import type { AdamWOptions, StepResult, TrainBatch } from '../tfjs/train.js';
import type { StepOptions, Trainer } from '../trainer.js';

export interface OrtTrainerOptions extends AdamWOptions {
  /** Train this adapter (fine-tuning); all weights are trained when absent (pretraining). */
  adapter?: LoraAdapter | undefined;
  /** Rows per gradient run; larger batches are accumulated over several runs. */
  microBatch: number;
  /** Sequence length of the graph; shorter rows are right-padded with zero weight. */
  seqLen: number;
  threads?: number;
}

export interface TrainerState {
  step: number;
  tensors: { name: string; shape: number[]; value: Float32Array; m: Float32Array; v: Float32Array }[];
}

export class OrtTrainer implements Trainer {
  readonly engine = 'ort';
  private readonly values: Float32Array[];
  private readonly m: Float32Array[];
  private readonly v: Float32Array[];
  private t = 0;
  /** Output buffers ORT writes into (gradients, and the next parameters and moments). */
  private readonly buffers: {
    grads: Float32Array[];
    scratch: Float32Array[];
    spare: { p: Float32Array[]; m: Float32Array[]; v: Float32Array[] };
  };

  private constructor(
    readonly config: LlamaConfig,
    private readonly baseWeights: Weights,
    readonly options: OrtTrainerOptions,
    private readonly trainables: TrainableTensor[],
    private readonly gradSession: ort.InferenceSession,
    private readonly applySession: ort.InferenceSession,
  ) {
    this.values = trainables.map((tensor) => initialValue(tensor, baseWeights, options.adapter));
    this.m = this.values.map((x) => new Float32Array(x.length));
    this.v = this.values.map((x) => new Float32Array(x.length));
    const like = () => this.values.map((x) => new Float32Array(x.length));
    this.buffers = { grads: like(), scratch: like(), spare: { p: like(), m: like(), v: like() } };
  }

  static async create(config: LlamaConfig, weights: Weights, options: OrtTrainerOptions): Promise<OrtTrainer> {
    const adapter = options.adapter;
    if (adapter) checkAdapter(config, adapter);
    const lora = adapter
      ? { alpha: adapter.alpha, ranks: new Map([...adapter.modules].map(([path, f]) => [path, f.rank])) }
      : undefined;
    const graph = buildLlamaTrainGraph(config, weights, {
      batch: options.microBatch,
      seq: options.seqLen,
      ...(lora ? { lora } : {}),
    });
    const apply = buildAdamWGraph(
      graph.trainables.map((x) => x.shape),
      {
        beta1: options.beta1 ?? 0.9,
        beta2: options.beta2 ?? 0.999,
        epsilon: options.epsilon ?? 1e-8,
        weightDecay: options.weightDecay ?? 0,
      },
    );
    const sessionOptions: ort.InferenceSession.SessionOptions = {
      graphOptimizationLevel: 'all',
      intraOpNumThreads: options.threads ?? 2,
      executionMode: 'sequential',
    };
    const [gradSession, applySession] = await Promise.all([
      ort.InferenceSession.create(graph.bytes, sessionOptions),
      ort.InferenceSession.create(apply, sessionOptions),
    ]);
    return new OrtTrainer(config, weights, { ...options }, graph.trainables, gradSession, applySession);
  }

  /**
   * Sum of weighted token losses, their weight and the summed gradients over the micro-batches. The
   * gradient arrays are this trainer's own buffers, valid until its next call.
   */
  async gradients(batch: TrainBatch): Promise<{ lossSum: number; weightSum: number; grads: Float32Array[] }> {
    let lossSum = 0;
    let weightSum = 0;
    let first = true;
    for (const micro of this.microBatches(batch)) {
      const feeds: Record<string, ort.Tensor> = { ...micro };
      this.trainables.forEach(
        (tensor, i) => (feeds[tensor.name] = new ort.Tensor('float32', this.values[i] as Float32Array, tensor.shape)),
      );
      // ORT writes the gradients into buffers of ours: a step allocates no tensor-sized arrays, so the
      // JS heap holds no garbage that grows with the number of steps until a collection
      const into = first ? this.buffers.grads : this.buffers.scratch;
      const fetches: Record<string, ort.Tensor | null> = { loss_sum: null, weight_sum: null };
      this.trainables.forEach(
        (tensor, i) =>
          (fetches[`grad.${tensor.name}`] = new ort.Tensor('float32', into[i] as Float32Array, tensor.shape)),
      );
      const out = await this.gradSession.run(feeds, fetches);
      lossSum += (out['loss_sum']!.data as Float32Array)[0] as number;
      weightSum += (out['weight_sum']!.data as Float32Array)[0] as number;
      if (!first) this.buffers.grads.forEach((g, i) => addInto(g, this.buffers.scratch[i] as Float32Array));
      first = false;
    }
    return { lossSum, weightSum, grads: this.buffers.grads };
  }

  async step(
    batch: TrainBatch,
    learningRate = this.options.learningRate,
    options: StepOptions = {},
  ): Promise<StepResult> {
    const { lossSum, weightSum, grads } = await this.gradients(batch);
    const normalizer = options.normalizer ?? weightSum;
    if (options.normalizer === undefined && !(weightSum > 0)) {
      throw new Error('the batch has no token with a positive loss weight');
    }
    if (!(normalizer > 0) || !Number.isFinite(normalizer)) throw new Error(`normalizer ${normalizer} is not positive`);
    this.t += 1;
    const beta1 = this.options.beta1 ?? 0.9;
    const beta2 = this.options.beta2 ?? 0.999;
    const scalar = (x: number) => new ort.Tensor('float32', Float32Array.of(x), []);
    const feeds: Record<string, ort.Tensor> = {
      inv_weight_sum: scalar(1 / normalizer),
      lr: scalar(learningRate),
      bc1: scalar(1 - beta1 ** this.t),
      bc2: scalar(1 - beta2 ** this.t),
      max_norm: scalar(this.options.maxGradNorm ?? 3.4e38),
    };
    this.trainables.forEach((tensor, i) => {
      feeds[`p.${i}`] = new ort.Tensor('float32', this.values[i] as Float32Array, tensor.shape);
      feeds[`m.${i}`] = new ort.Tensor('float32', this.m[i] as Float32Array, tensor.shape);
      feeds[`v.${i}`] = new ort.Tensor('float32', this.v[i] as Float32Array, tensor.shape);
      feeds[`g.${i}`] = new ort.Tensor('float32', grads[i] as Float32Array, tensor.shape);
    });
    // the updated parameters and moments go to the spare buffers, which then swap with the current ones
    const spare = this.buffers.spare;
    const fetches: Record<string, ort.Tensor | null> = { grad_norm: null };
    this.trainables.forEach((tensor, i) => {
      fetches[`p_out.${i}`] = new ort.Tensor('float32', spare.p[i] as Float32Array, tensor.shape);
      fetches[`m_out.${i}`] = new ort.Tensor('float32', spare.m[i] as Float32Array, tensor.shape);
      fetches[`v_out.${i}`] = new ort.Tensor('float32', spare.v[i] as Float32Array, tensor.shape);
    });
    const out = await this.applySession.run(feeds, fetches);
    this.trainables.forEach((_, i) => {
      [this.values[i], spare.p[i]] = [spare.p[i] as Float32Array, this.values[i] as Float32Array];
      [this.m[i], spare.m[i]] = [spare.m[i] as Float32Array, this.m[i] as Float32Array];
      [this.v[i], spare.v[i]] = [spare.v[i] as Float32Array, this.v[i] as Float32Array];
    });
    return { loss: lossSum / normalizer, gradNorm: (out['grad_norm']!.data as Float32Array)[0] as number };
  }

  /** Everything a resumed run needs: step count, parameters and AdamW moments. */
  state(): TrainerState {
    return {
      step: this.t,
      tensors: this.trainables.map((tensor, i) => ({
        name: tensor.name,
        shape: [...tensor.shape],
        value: (this.values[i] as Float32Array).slice(),
        m: (this.m[i] as Float32Array).slice(),
        v: (this.v[i] as Float32Array).slice(),
      })),
    };
  }

  restore(state: TrainerState): void {
    if (state.tensors.length !== this.trainables.length) {
      throw new Error(`saved state has ${state.tensors.length} tensors, this trainer ${this.trainables.length}`);
    }
    state.tensors.forEach((saved, i) => {
      const tensor = this.trainables[i] as TrainableTensor;
      if (saved.name !== tensor.name || saved.shape.join(',') !== tensor.shape.join(',')) {
        throw new Error(
          `saved tensor ${saved.name} [${saved.shape.join(', ')}] does not match ${tensor.name} [${tensor.shape.join(', ')}]`,
        );
      }
      this.values[i] = saved.value.slice();
      this.m[i] = saved.m.slice();
      this.v[i] = saved.v.slice();
    });
    this.t = state.step;
  }

  /**
   * Starts over from `adapter` (same modules and ranks as the one this trainer was built for): its
   * factors become the parameters, moments and step count are reset. Reuses the compiled sessions, so a
   * device trains round after round without rebuilding its graphs.
   */
  reset(adapter: LoraAdapter): void {
    const own = this.options.adapter;
    if (!own) throw new Error('reset(adapter) needs a LoRA trainer; this one trains every weight');
    checkAdapter(this.config, adapter);
    for (const [path, f] of own.modules) {
      const other = adapter.modules.get(path);
      if (!other || other.rank !== f.rank) {
        throw new Error(
          `reset: ${path} needs rank ${f.rank}, the adapter has ${other ? `rank ${other.rank}` : 'none'}`,
        );
      }
    }
    if (adapter.modules.size !== own.modules.size || adapter.alpha !== own.alpha) {
      throw new Error('reset: the adapter must have the same modules and alpha as the trainer');
    }
    this.values.forEach(
      (_, i) => (this.values[i] = initialValue(this.trainables[i] as TrainableTensor, this.baseWeights, adapter)),
    );
    this.m.forEach((m, i) => (this.m[i] = new Float32Array(m.length)));
    this.v.forEach((v, i) => (this.v[i] = new Float32Array(v.length)));
    this.t = 0;
    this.options.adapter = adapter;
  }

  /** The trainable tensors and their live values (mutating a value changes the next step's input). */
  parameters(): { tensor: TrainableTensor; value: Float32Array }[] {
    return this.trainables.map((tensor, i) => ({ tensor, value: this.values[i] as Float32Array }));
  }

  async evaluate(batch: TrainBatch): Promise<number> {
    const { lossSum, weightSum } = await this.gradients(batch);
    return lossSum / weightSum;
  }

  adapter(): LoraAdapter | undefined {
    const adapter = this.options.adapter;
    if (!adapter) return undefined;
    const modules = new Map<string, LoraFactors>();
    for (const [path, f] of adapter.modules) {
      const A = this.trainables.findIndex((x) => x.kind === 'lora' && x.modulePath === path && x.factor === 'A');
      const B = this.trainables.findIndex((x) => x.kind === 'lora' && x.modulePath === path && x.factor === 'B');
      modules.set(path, {
        ...f,
        A: (this.values[A] as Float32Array).slice(),
        B: (this.values[B] as Float32Array).slice(),
      });
    }
    return { alpha: adapter.alpha, modules };
  }

  weights(): Weights {
    const out: Weights = new Map(this.baseWeights);
    this.trainables.forEach((tensor, i) => {
      if (tensor.kind === 'weight')
        out.set(tensor.name, {
          name: tensor.name,
          shape: [...tensor.shape],
          data: (this.values[i] as Float32Array).slice(),
        });
    });
    return out;
  }

  async dispose(): Promise<void> {
    await Promise.all([this.gradSession.release(), this.applySession.release()]);
  }

  /** Splits rows into [microBatch, seqLen] feeds, right-padding rows and the last micro-batch with zero weight. */
  private *microBatches(batch: TrainBatch): Generator<Record<string, ort.Tensor>> {
    const { microBatch: B, seqLen: S } = this.options;
    const rows = batch.inputIds.length;
    batch.inputIds.forEach((row, r) => {
      if (row.length > S) throw new Error(`row ${r} has ${row.length} tokens; this trainer's sequence length is ${S}`);
      if (!isRightPadded(batch.attentionMask?.[r])) {
        throw new Error(`row ${r}: the ONNX Runtime trainer needs right-padded rows (attention mask 1...1 0...0)`);
      }
    });
    for (let start = 0; start < rows; start += B) {
      const ids = new BigInt64Array(B * S);
      const targets = new BigInt64Array(B * S);
      const weights = new Float32Array(B * S);
      const idWords = new Int32Array(ids.buffer);
      const targetWords = new Int32Array(targets.buffer);
      for (let b = 0; b < B && start + b < rows; b++) {
        const r = start + b;
        const mask = batch.attentionMask?.[r];
        (batch.inputIds[r] as number[]).forEach((id, j) => {
          idWords[2 * (b * S + j)] = id;
          targetWords[2 * (b * S + j)] = batch.targets[r]?.[j] ?? 0;
          weights[b * S + j] = mask && mask[j] === 0 ? 0 : (batch.weights[r]?.[j] ?? 0);
        });
      }
      yield {
        input_ids: new ort.Tensor('int64', ids, [B, S]),
        targets: new ort.Tensor('int64', targets, [B, S]),
        loss_weights: new ort.Tensor('float32', weights, [B, S]),
      };
    }
  }
}

function initialValue(tensor: TrainableTensor, weights: Weights, adapter: LoraAdapter | undefined): Float32Array {
  if (tensor.kind === 'weight') return (weights.get(tensor.name) as { data: Float32Array }).data.slice();
  const factors = adapter?.modules.get(tensor.modulePath) as LoraFactors;
  return (tensor.factor === 'A' ? factors.A : factors.B).slice();
}

/** No mask, or a mask of ones followed only by zeros. */
function isRightPadded(mask: readonly number[] | undefined): boolean {
  if (!mask) return true;
  const real = mask.indexOf(0) === -1 ? mask.length : mask.indexOf(0);
  return mask.every((x, j) => x === (j < real ? 1 : 0));
}

function addInto(target: Float32Array, source: Float32Array): void {
  for (let i = 0; i < target.length; i++) target[i] = (target[i] as number) + (source[i] as number);
}
