/**
 * A checkpoint directory: config.json + model.safetensors (Hugging Face layout), and tokenizer.json when the
 * vocabulary is not the byte-level one (the cloud's BPE).
 */
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { Tensor } from '@floe/shared';
import { type LlamaConfig, parseLlamaConfig, weightShapes } from './config.js';
import { Random } from './random.js';
import { type SafetensorsDType } from '@floe/shared';
import { readSafetensors, writeSafetensors } from './safetensors.js';
import { BpeTokenizer } from './bpe-tokenizer.js';
import { ByteTokenizer, type TextTokenizer, checkTokenizer } from './tokenizer.js';

export type Weights = Map<string, Tensor>;

export interface Checkpoint {
  config: LlamaConfig;
  weights: Weights;
  /** The safetensors header's `__metadata__` (training steps, the partition seed it was pretrained on...). */
  metadata?: Record<string, string>;
  /** The vocabulary (byte-level when absent). */
  tokenizer?: TextTokenizer;
}

export type LoadedCheckpoint = Checkpoint & { tokenizer: TextTokenizer };

/** GPT-2 style init: N(0, 0.02) for matrices, ones for RMSNorm gains. */
export function initWeights(config: LlamaConfig, seed = 0, std = 0.02): Weights {
  const random = new Random(seed);
  const weights: Weights = new Map();
  for (const [name, shape] of weightShapes(config)) {
    const count = shape.reduce((a, b) => a * b, 1);
    const data = shape.length === 1 ? new Float32Array(count).fill(1) : random.normalArray(count, std);
    weights.set(name, { name, shape, data });
  }
  return weights;
}

/** Throws unless `weights` holds exactly the tensors `config` needs, with the right shapes. */
export function checkWeights(config: LlamaConfig, weights: Weights): void {
  const expected = weightShapes(config);
  for (const [name, shape] of expected) {
    const tensor = weights.get(name);
    if (!tensor) throw new Error(`checkpoint lacks ${name}`);
    if (tensor.shape.join(',') !== shape.join(',')) {
      throw new Error(`${name} has shape [${tensor.shape.join(', ')}], config needs [${shape.join(', ')}]`);
    }
  }
  const known = new Set(expected.map(([name]) => name));
  for (const name of weights.keys()) if (!known.has(name)) throw new Error(`checkpoint has unexpected tensor ${name}`);
}

export async function saveCheckpoint(
  dir: string,
  checkpoint: Checkpoint,
  options: { dtype?: SafetensorsDType; metadata?: Record<string, string> } = {},
): Promise<void> {
  checkWeights(checkpoint.config, checkpoint.weights);
  await mkdir(dir, { recursive: true });
  const dtype = options.dtype ?? 'F32';
  const config = { ...checkpoint.config, torch_dtype: { F32: 'float32', F16: 'float16', BF16: 'bfloat16' }[dtype] };
  await writeFile(path.join(dir, 'config.json'), `${JSON.stringify(config, null, 2)}\n`);
  const ordered = weightShapes(checkpoint.config).map(([name]) => checkpoint.weights.get(name) as Tensor);
  await writeSafetensors(path.join(dir, 'model.safetensors'), ordered, dtype, options.metadata);
  if (checkpoint.tokenizer) checkTokenizer(checkpoint.config, checkpoint.tokenizer);
  if (checkpoint.tokenizer instanceof BpeTokenizer) {
    await writeFile(path.join(dir, 'tokenizer.json'), checkpoint.tokenizer.text);
  }
}

/** The checkpoint's vocabulary: its tokenizer.json, else bytes; checked against its config. */
export function loadTokenizer(dir: string, config: LlamaConfig): TextTokenizer {
  const file = path.join(dir, 'tokenizer.json');
  const tokenizer = existsSync(file) ? BpeTokenizer.load(file) : new ByteTokenizer();
  checkTokenizer(config, tokenizer);
  return tokenizer;
}

export async function loadCheckpoint(dir: string): Promise<LoadedCheckpoint> {
  const config = parseLlamaConfig(JSON.parse(await readFile(path.join(dir, 'config.json'), 'utf8')));
  const { tensors, metadata } = await readSafetensors(path.join(dir, 'model.safetensors'));
  checkWeights(config, tensors);
  return { config, weights: tensors, metadata, tokenizer: loadTokenizer(dir, config) };
}

/** SHA-256 (hex) of a checkpoint's weights file: how a job names the base model its devices must hold. */
export async function checkpointSha256(dir: string): Promise<string> {
  return createHash('sha256')
    .update(await readFile(path.join(dir, 'model.safetensors')))
    .digest('hex');
}
