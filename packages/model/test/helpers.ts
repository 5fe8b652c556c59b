import type { LoraAdapter, LoraFactors } from '@floe/shared';
import {
  type LlamaConfig,
  type Weights,
  BYTE_VOCAB_SIZE,
  Random,
  SPECIAL_TOKENS,
  initWeights,
  loraModulePaths,
  loraShape,
  type LoraModuleKind,
} from '../src/index.js';

export function tinyConfig(overrides: Partial<LlamaConfig> = {}): LlamaConfig {
  return {
    model_type: 'llama',
    vocab_size: BYTE_VOCAB_SIZE,
    hidden_size: 32,
    intermediate_size: 88,
    num_hidden_layers: 2,
    num_attention_heads: 4,
    num_key_value_heads: 4,
    max_position_embeddings: 256,
    rms_norm_eps: 1e-5,
    rope_theta: 10000,
    tie_word_embeddings: false,
    bos_token_id: SPECIAL_TOKENS.bos,
    eos_token_id: SPECIAL_TOKENS.eos,
    pad_token_id: SPECIAL_TOKENS.pad,
    ...overrides,
  };
}

/** Random weights large enough that every path matters, norm gains around 1. */
export function randomWeights(config: LlamaConfig, seed: number): Weights {
  const weights = initWeights(config, seed, 0.15);
  const random = new Random(seed + 1);
  for (const tensor of weights.values()) {
    if (tensor.shape.length === 1) tensor.data.forEach((_, i) => (tensor.data[i] = 0.5 + random.next()));
  }
  return weights;
}

/** LoRA with both factors random (PEFT init leaves B = 0, which would test nothing). */
export function randomLora(config: LlamaConfig, rank: number, modules: LoraModuleKind[], seed: number): LoraAdapter {
  const random = new Random(seed);
  const factors = new Map<string, LoraFactors>();
  for (const path of loraModulePaths(config, { r: rank, lora_alpha: 2 * rank, target_modules: modules })) {
    const [outFeatures, inFeatures] = loraShape(config, path);
    factors.set(path, {
      rank,
      inFeatures,
      outFeatures,
      A: random.normalArray(rank * inFeatures, 0.1),
      B: random.normalArray(outFeatures * rank, 0.1),
    });
  }
  return { alpha: 2 * rank, modules: factors };
}

export function randomIds(random: Random, batch: number, seq: number, vocab: number): number[][] {
  return Array.from({ length: batch }, () => Array.from({ length: seq }, () => random.integer(vocab)));
}

export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`length ${a.length} vs ${b.length}`);
  let max = 0;
  for (let i = 0; i < a.length; i++) max = Math.max(max, Math.abs((a[i] as number) - (b[i] as number)));
  return max;
}
