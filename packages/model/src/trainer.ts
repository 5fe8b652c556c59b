/**
 * One interface for both training engines. `createTrainer` with engine 'auto' picks ONNX Runtime
 * (native kernels, ~10-40x the WebAssembly tfjs backend here) and falls back to tfjs if ORT fails.
 */
import type { LoraAdapter } from '@floe/shared';
import type { LlamaConfig } from './config.js';
import type { Weights } from './checkpoint.js';
import type { AdamWOptions, StepResult, TrainBatch } from './tfjs/train.js';

export interface StepOptions {
  /**
   * The step minimizes sum(w * -log p(target)) / normalizer; by default the normalizer is sum(w), the
   * weighted mean. With a normalizer of its own a batch may carry negative weights: policy-gradient
   * advantages, where a sample that did worse than its group is made less likely.
   */
  normalizer?: number;
}

export interface Trainer {
  readonly engine: 'ort' | 'tfjs';
  /** One optimizer step on the whole batch (ORT accumulates gradients over micro-batches). */
  step(batch: TrainBatch, learningRate?: number, options?: StepOptions): Promise<StepResult>;
  /** Token-weighted mean loss of a batch, no update. */
  evaluate(batch: TrainBatch): Promise<number>;
  /** The trained adapter (fine-tuning), or undefined when training all weights. */
  adapter(): LoraAdapter | undefined;
  /** The model's weights (trained ones when pretraining, the frozen base when fine-tuning). */
  weights(): Weights;
  dispose(): Promise<void>;
}

export type TrainingEngine = 'auto' | 'ort' | 'tfjs';

export interface TrainerOptions extends AdamWOptions {
  engine?: TrainingEngine;
  /** Fine-tune this adapter; train every weight when absent. */
  adapter?: LoraAdapter | undefined;
  /** ORT: rows per gradient run and the sequence length of its graph. */
  microBatch?: number;
  seqLen?: number;
}

export async function createTrainer(config: LlamaConfig, weights: Weights, options: TrainerOptions): Promise<Trainer> {
  const engine = options.engine ?? 'auto';
  if (engine !== 'tfjs') {
    try {
      const { OrtTrainer } = await import('./ort/trainer.js');
      return await OrtTrainer.create(config, weights, {
        ...options,
        microBatch: options.microBatch ?? 8,
        seqLen: options.seqLen ?? config.max_position_embeddings,
      });
    } catch (error) {
      if (engine === 'ort') throw error;
      console.warn(`ONNX Runtime trainer unavailable, using tfjs: ${(error as Error).message}`);
    }
  }
  const { createTfjsTrainer } = await import('./tfjs/train.js');
  return createTfjsTrainer(config, weights, options);
}
