/**
 * Model configuration with Hugging Face Llama keys, so that config.json files move between Floe-TS
 * and other tools unchanged. Everything about a checkpoint is read from here; nothing is hard-coded.
 */
import Type, { type Static } from 'typebox';
import {
  LORA_MODULES,
  type LoraModuleKind,
  type ModelArchitecture,
  linearPath,
  linearShapeOf,
  parse,
} from '@floe/shared';

export const LlamaConfigSchema = Type.Object({
  model_type: Type.Literal('llama'),
  architectures: Type.Optional(Type.Array(Type.String())),
  vocab_size: Type.Integer({ minimum: 1 }),
  hidden_size: Type.Integer({ minimum: 1 }),
  intermediate_size: Type.Integer({ minimum: 1 }),
  num_hidden_layers: Type.Integer({ minimum: 1 }),
  num_attention_heads: Type.Integer({ minimum: 1 }),
  num_key_value_heads: Type.Integer({ minimum: 1 }),
  head_dim: Type.Optional(Type.Integer({ minimum: 2 })),
  max_position_embeddings: Type.Integer({ minimum: 1 }),
  rms_norm_eps: Type.Number({ exclusiveMinimum: 0 }),
  rope_theta: Type.Number({ exclusiveMinimum: 0 }),
  tie_word_embeddings: Type.Boolean(),
  bos_token_id: Type.Integer({ minimum: 0 }),
  eos_token_id: Type.Integer({ minimum: 0 }),
  pad_token_id: Type.Integer({ minimum: 0 }),
  hidden_act: Type.Optional(Type.Literal('silu')),
  torch_dtype: Type.Optional(Type.String()),
});
export type LlamaConfig = Static<typeof LlamaConfigSchema>;

/** Parses and checks a config.json object; unknown keys (other HF fields) are kept but ignored. */
export function parseLlamaConfig(value: unknown): LlamaConfig {
  const config = parse(LlamaConfigSchema, value, 'model config');
  if (config.num_attention_heads % config.num_key_value_heads !== 0) {
    throw new Error(
      `num_attention_heads (${config.num_attention_heads}) must be a multiple of num_key_value_heads (${config.num_key_value_heads})`,
    );
  }
  if (headDim(config) % 2 !== 0) throw new Error(`head_dim must be even for rotary embeddings, got ${headDim(config)}`);
  for (const key of ['bos_token_id', 'eos_token_id', 'pad_token_id'] as const) {
    if (config[key] >= config.vocab_size) throw new Error(`${key} ${config[key]} is outside the vocabulary`);
  }
  return config;
}

export function headDim(config: LlamaConfig): number {
  return config.head_dim ?? config.hidden_size / config.num_attention_heads;
}

/** The linear layers LoRA can target, with their [out, in] shapes. */
export { LORA_MODULES, type LoraModuleKind, isLoraModuleKind, linearPath } from '@floe/shared';

/** The shape-fixing numbers of `config`, as a job spec carries them to the server. */
export function architectureOf(config: LlamaConfig): ModelArchitecture {
  return {
    hiddenSize: config.hidden_size,
    intermediateSize: config.intermediate_size,
    numHiddenLayers: config.num_hidden_layers,
    numAttentionHeads: config.num_attention_heads,
    numKeyValueHeads: config.num_key_value_heads,
    headDim: headDim(config),
  };
}

export function linearShape(config: LlamaConfig, kind: LoraModuleKind): [out: number, inn: number] {
  return linearShapeOf(architectureOf(config), kind);
}

/** Every weight tensor of the model with its HF name and shape, in a fixed order. */
export function weightShapes(config: LlamaConfig): [name: string, shape: number[]][] {
  const h = config.hidden_size;
  const shapes: [string, number[]][] = [['model.embed_tokens.weight', [config.vocab_size, h]]];
  for (let layer = 0; layer < config.num_hidden_layers; layer++) {
    shapes.push([`model.layers.${layer}.input_layernorm.weight`, [h]]);
    for (const kind of LORA_MODULES) {
      if (kind === 'gate_proj') shapes.push([`model.layers.${layer}.post_attention_layernorm.weight`, [h]]);
      shapes.push([`${linearPath(layer, kind)}.weight`, linearShape(config, kind)]);
    }
  }
  shapes.push(['model.norm.weight', [h]]);
  if (!config.tie_word_embeddings) shapes.push(['lm_head.weight', [config.vocab_size, h]]);
  return shapes;
}

export function parameterCount(config: LlamaConfig): number {
  return weightShapes(config).reduce((n, [, shape]) => n + shape.reduce((a, b) => a * b, 1), 0);
}

function byteLlama(
  shape: Pick<
    LlamaConfig,
    'hidden_size' | 'intermediate_size' | 'num_hidden_layers' | 'num_attention_heads' | 'num_key_value_heads'
  >,
): LlamaConfig {
  return {
    model_type: 'llama',
    architectures: ['LlamaForCausalLM'],
    vocab_size: 259,
    max_position_embeddings: 512,
    rms_norm_eps: 1e-5,
    rope_theta: 10000,
    tie_word_embeddings: true,
    bos_token_id: 256,
    eos_token_id: 257,
    pad_token_id: 258,
    hidden_act: 'silu',
    ...shape,
  };
}

/** The project's own checkpoint shapes (byte-level vocabulary, see tokenizer.ts). */
export const MODEL_PRESETS = {
  /** ~0.11M parameters */
  'edge-tiny': byteLlama({
    hidden_size: 64,
    intermediate_size: 176,
    num_hidden_layers: 2,
    num_attention_heads: 4,
    num_key_value_heads: 2,
  }),
  /** ~0.84M parameters */
  'edge-small': byteLlama({
    hidden_size: 128,
    intermediate_size: 352,
    num_hidden_layers: 4,
    num_attention_heads: 4,
    num_key_value_heads: 4,
  }),
  /** ~3.9M parameters, 4.6x edge-small */
  cloud: byteLlama({
    hidden_size: 256,
    intermediate_size: 608,
    num_hidden_layers: 6,
    num_attention_heads: 8,
    num_key_value_heads: 2,
  }),
} as const satisfies Record<string, LlamaConfig>;
export type ModelPreset = keyof typeof MODEL_PRESETS;
