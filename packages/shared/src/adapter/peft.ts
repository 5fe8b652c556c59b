/**
 * LoRA adapters in the PEFT layout, so adapters trained here load in PEFT and vLLM:
 * tensors `base_model.model.<module path>.lora_A.weight` [r, in] and `...lora_B.weight` [out, r],
 * e.g. module path `model.layers.0.self_attn.q_proj`.
 */
import { AdapterMathError } from '../errors.js';
import type { Tensor } from '../codec/tensor.js';
import type { LoraFactors } from './math.js';

export interface LoraAdapter {
  alpha: number;
  /** Keyed by module path, e.g. `model.layers.0.self_attn.q_proj`. */
  modules: Map<string, LoraFactors>;
}

const PEFT_PREFIX = 'base_model.model.';
const PEFT_NAME = /^base_model\.model\.([A-Za-z0-9_.]+)\.lora_([AB])\.weight$/;

export function loraTensorName(modulePath: string, factor: 'A' | 'B'): string {
  return `${PEFT_PREFIX}${modulePath}.lora_${factor}.weight`;
}

export function parseLoraTensorName(name: string): { modulePath: string; factor: 'A' | 'B' } | undefined {
  const match = PEFT_NAME.exec(name);
  if (!match) return undefined;
  return { modulePath: match[1] as string, factor: match[2] as 'A' | 'B' };
}

/** `q_proj` for `model.layers.3.self_attn.q_proj`. */
export function moduleKind(modulePath: string): string {
  return modulePath.slice(modulePath.lastIndexOf('.') + 1);
}

/** 3 for `model.layers.3.self_attn.q_proj`; undefined when the path names no layer. */
export function moduleLayer(modulePath: string): number | undefined {
  const match = /(?:^|\.)layers\.(\d+)\./.exec(modulePath);
  return match ? Number(match[1]) : undefined;
}

export function adapterToTensors(adapter: LoraAdapter): Tensor[] {
  const tensors: Tensor[] = [];
  for (const [path, f] of [...adapter.modules].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) {
    tensors.push({ name: loraTensorName(path, 'A'), shape: [f.rank, f.inFeatures], data: f.A });
    tensors.push({ name: loraTensorName(path, 'B'), shape: [f.outFeatures, f.rank], data: f.B });
  }
  return tensors;
}

/** Pairs PEFT tensors into modules; every module needs A [r, in] and B [out, r] with the same r. */
export function adapterFromTensors(tensors: readonly Tensor[], alpha: number): LoraAdapter {
  const halves = new Map<string, { A?: Tensor; B?: Tensor }>();
  for (const tensor of tensors) {
    const parsed = parseLoraTensorName(tensor.name);
    if (!parsed) throw new AdapterMathError('invalid_argument', `${tensor.name} is not a PEFT LoRA tensor name`);
    if (tensor.shape.length !== 2) {
      throw new AdapterMathError(
        'shape_mismatch',
        `${tensor.name} must be 2-D, has shape [${tensor.shape.join(', ')}]`,
      );
    }
    const pair = halves.get(parsed.modulePath) ?? {};
    if (pair[parsed.factor]) throw new AdapterMathError('invalid_argument', `${tensor.name} appears twice`);
    pair[parsed.factor] = tensor;
    halves.set(parsed.modulePath, pair);
  }
  const modules = new Map<string, LoraFactors>();
  for (const [path, { A, B }] of halves) {
    if (!A || !B)
      throw new AdapterMathError('invalid_argument', `module ${path} lacks its lora_${A ? 'B' : 'A'} tensor`);
    const [rank, inFeatures] = A.shape as [number, number];
    const [outFeatures, rankB] = B.shape as [number, number];
    if (rank !== rankB) {
      throw new AdapterMathError(
        'shape_mismatch',
        `module ${path}: lora_A has rank ${String(rank)}, lora_B has rank ${String(rankB)}`,
      );
    }
    modules.set(path, { rank, inFeatures, outFeatures, A: A.data, B: B.data });
  }
  return { alpha, modules };
}

/** The adapter_config.json of `adapter` (one rank for all modules, as PEFT requires). */
export function peftAdapterConfig(adapter: LoraAdapter, baseModel?: string) {
  const ranks = new Set([...adapter.modules.values()].map((f) => f.rank));
  if (ranks.size > 1) {
    throw new AdapterMathError('invalid_argument', `adapter mixes ranks ${[...ranks].join(', ')}; PEFT needs one r`);
  }
  const kinds = [...new Set([...adapter.modules.keys()].map(moduleKind))];
  const layers = [...new Set([...adapter.modules.keys()].map((p) => moduleLayer(p) ?? 0))].sort((a, b) => a - b);
  return {
    peft_type: 'LORA' as const,
    r: [...ranks][0] ?? 1,
    lora_alpha: adapter.alpha,
    target_modules: kinds,
    layers_to_transform: layers,
    base_model_name_or_path: baseModel ?? null,
    task_type: 'CAUSAL_LM',
    bias: 'none',
    lora_dropout: 0,
    fan_in_fan_out: false,
    inference_mode: true,
  };
}
