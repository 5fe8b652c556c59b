/**
 * Training in tfjs: the token-weighted causal-LM loss, AdamW with decoupled weight decay, global-norm
 * gradient clipping, and one train step. The same recipe is implemented by the ONNX Runtime engine.
 */
import * as tf from '@tensorflow/tfjs';
import type { LoraAdapter, LoraFactors } from '@floe/shared';
import type { LlamaConfig } from '../config.js';
import type { Weights } from '../checkpoint.js';
import type { StepOptions, Trainer } from '../trainer.js';
import { TfjsLlama, type TfjsLora, tfjsLora } from './llama.js';

/**
 * A batch: predict targets[b][t] from inputIds[b][..t]. weights[b][t] scales each token's loss
 * (0/1 masks for supervised tokens, or any real weight such as an advantage).
 */
export interface TrainBatch {
  inputIds: number[][];
  targets: number[][];
  weights: number[][];
  attentionMask?: number[][];
}

export interface AdamWOptions {
  learningRate: number;
  beta1?: number;
  beta2?: number;
  epsilon?: number;
  weightDecay?: number;
  /** Clip gradients to this global L2 norm; no clipping when absent. */
  maxGradNorm?: number;
}

export interface StepResult {
  loss: number;
  /** Global gradient norm before clipping. */
  gradNorm: number;
}

/**
 * sum(w * -log p(target)) / normalizer (default sum(w)). Cross-entropy by one-hot product: gather has no
 * gradient on wasm.
 */
export function weightedCrossEntropy(
  logits: tf.Tensor3D,
  targets: number[][],
  weights: number[][],
  normalizer?: number,
): tf.Scalar {
  return tf.tidy(() => {
    const [b, s, V] = logits.shape;
    const logProbs = tf.logSoftmax(logits.reshape([b * s, V]));
    const oneHot = tf.oneHot(tf.tensor1d(targets.flat(), 'int32'), V);
    const nll = tf.neg(tf.sum(tf.mul(logProbs, oneHot), -1)); // [b*s]
    const w = tf.tensor1d(weights.flat());
    const denominator = normalizer === undefined ? tf.maximum(tf.sum(w), 1e-12) : tf.scalar(normalizer);
    return tf.div<tf.Scalar>(tf.sum(tf.mul(nll, w)), denominator);
  });
}

/** Scales gradients so their global L2 norm is at most maxNorm (PyTorch's clip_grad_norm_). Returns the norm. */
export function clipByGlobalNorm(
  grads: tf.Tensor[],
  maxNorm: number | undefined,
): { grads: tf.Tensor[]; norm: number } {
  const norm = Math.sqrt(
    grads.reduce((sum, g) => sum + (tf.tidy(() => tf.sum(tf.square(g))).dataSync()[0] as number), 0),
  );
  if (maxNorm === undefined || norm <= maxNorm) return { grads, norm };
  const scale = maxNorm / (norm + 1e-6);
  return { grads: grads.map((g) => tf.mul(g, scale)), norm };
}

export class AdamW {
  private readonly m = new Map<tf.Variable, tf.Tensor>();
  private readonly v = new Map<tf.Variable, tf.Tensor>();
  private t = 0;

  constructor(readonly options: AdamWOptions) {}

  /** One update: m, v moments with bias correction, then p -= lr * (m_hat / (sqrt(v_hat) + eps) + wd * p), wd on matrices only. */
  apply(params: tf.Variable[], grads: tf.Tensor[], learningRate = this.options.learningRate): void {
    const { beta1 = 0.9, beta2 = 0.999, epsilon = 1e-8, weightDecay = 0 } = this.options;
    this.t += 1;
    const c1 = 1 - beta1 ** this.t;
    const c2 = 1 - beta2 ** this.t;
    params.forEach((p, i) => {
      const g = grads[i] as tf.Tensor;
      const m0 = this.m.get(p);
      const v0 = this.v.get(p);
      const m = tf.tidy(() => tf.add(tf.mul(m0 ?? tf.zerosLike(p), beta1), tf.mul(g, 1 - beta1)));
      const v = tf.tidy(() => tf.add(tf.mul(v0 ?? tf.zerosLike(p), beta2), tf.mul(tf.square(g), 1 - beta2)));
      m0?.dispose();
      v0?.dispose();
      this.m.set(p, m);
      this.v.set(p, v);
      tf.tidy(() => {
        const adam = tf.div(tf.div(m, c1), tf.add(tf.sqrt(tf.div(v, c2)), epsilon));
        // decay matrices only, not RMSNorm gains (as in the ORT optimizer graph)
        const update = p.rank >= 2 && weightDecay !== 0 ? tf.add(adam, tf.mul(p, weightDecay)) : adam;
        p.assign(tf.sub(p, tf.mul(update, learningRate)));
      });
    });
  }

  dispose(): void {
    tf.dispose([...this.m.values(), ...this.v.values()]);
  }
}

export interface TfjsTrainerOptions extends AdamWOptions {
  /** Train these LoRA tensors; when absent, all model weights are trained (pretraining). */
  lora?: TfjsLora;
  /** The adapter's alpha, to hand the trained factors back as an adapter. */
  loraAlpha?: number;
}

/** Trains LoRA factors (fine-tuning) or all weights (pretraining) of a TfjsLlama. */
export class TfjsTrainer implements Trainer {
  readonly engine = 'tfjs';
  readonly optimizer: AdamW;
  private readonly params: tf.Variable[];
  private readonly fullModel: boolean;

  constructor(
    readonly model: TfjsLlama,
    readonly options: TfjsTrainerOptions,
  ) {
    this.optimizer = new AdamW(options);
    this.fullModel = !options.lora;
    this.params = options.lora
      ? [...options.lora.values()].flatMap((m) => [m.A as tf.Variable, m.B as tf.Variable])
      : [...model.params.values()];
  }

  /** Loss and gradients without an update (for gradient checks). */
  gradients(batch: TrainBatch, normalizer?: number): { loss: number; grads: tf.Tensor[] } {
    const { value, grads } = tf.variableGrads(() => this.loss(batch, normalizer), this.params);
    const loss = value.dataSync()[0] as number;
    value.dispose();
    return { loss, grads: this.params.map((p) => grads[p.name] as tf.Tensor) };
  }

  stepSync(batch: TrainBatch, learningRate?: number, options: StepOptions = {}): StepResult {
    if (options.normalizer !== undefined && !(options.normalizer > 0 && Number.isFinite(options.normalizer))) {
      throw new Error(`normalizer ${options.normalizer} is not positive`);
    }
    const { loss, grads } = this.gradients(batch, options.normalizer);
    const clipped = clipByGlobalNorm(grads, this.options.maxGradNorm);
    this.optimizer.apply(this.params, clipped.grads, learningRate);
    tf.dispose(grads);
    if (clipped.grads !== grads) tf.dispose(clipped.grads);
    return { loss, gradNorm: clipped.norm };
  }

  step(batch: TrainBatch, learningRate?: number, options?: StepOptions): Promise<StepResult> {
    return Promise.resolve(this.stepSync(batch, learningRate, options));
  }

  evaluateSync(batch: TrainBatch): number {
    return tf.tidy(() => this.loss(batch).dataSync()[0] as number);
  }

  evaluate(batch: TrainBatch): Promise<number> {
    return Promise.resolve(this.evaluateSync(batch));
  }

  adapter(): LoraAdapter | undefined {
    return this.options.lora ? adapterFromTfjs(this.options.lora, this.options.loraAlpha ?? 1) : undefined;
  }

  weights(): Weights {
    return this.model.weights();
  }

  private loss(batch: TrainBatch, normalizer?: number): tf.Scalar {
    const { logits } = this.model.forward(batch.inputIds, {
      attentionMask: batch.attentionMask,
      lora: this.options.lora,
      oneHotEmbedding: this.fullModel,
      returnCache: false,
    });
    return weightedCrossEntropy(logits, batch.targets, batch.weights, normalizer);
  }

  dispose(): Promise<void> {
    this.optimizer.dispose();
    this.model.dispose();
    if (this.options.lora) for (const m of this.options.lora.values()) tf.dispose([m.A, m.B]);
    return Promise.resolve();
  }
}

/** A tfjs trainer behind the Trainer interface: LoRA when `adapter` is given, else every weight. */
export function createTfjsTrainer(
  config: LlamaConfig,
  weights: Weights,
  options: AdamWOptions & { adapter?: LoraAdapter | undefined },
): TfjsTrainer {
  const { adapter, ...adamw } = options;
  const model = new TfjsLlama(config, weights, !adapter);
  if (!adapter) return new TfjsTrainer(model, adamw);
  return new TfjsTrainer(model, { ...adamw, lora: tfjsLora(config, adapter, true), loraAlpha: adapter.alpha });
}

/** The trained LoRA factors back as a plain adapter. */
export function adapterFromTfjs(lora: TfjsLora, alpha: number): LoraAdapter {
  const modules = new Map<string, LoraFactors>();
  for (const [path, m] of lora) {
    const [rank, inFeatures] = m.A.shape;
    const outFeatures = m.B.shape[0];
    modules.set(path, {
      rank,
      inFeatures,
      outFeatures,
      A: m.A.dataSync() as Float32Array,
      B: m.B.dataSync() as Float32Array,
    });
  }
  return { alpha, modules };
}
