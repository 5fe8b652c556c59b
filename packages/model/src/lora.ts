/**
 * LoRA adapters for the model: PEFT's adapter_config.json + adapter_model.safetensors, random init
 * as PEFT does (A Kaiming-uniform, B zero, so training starts from the base model), and merging.
 */
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import Type, { type Static } from 'typebox';
import {
  type LoraAdapter,
  type LoraFactors,
  adapterFromTensors,
  adapterToTensors,
  loraProduct,
  moduleKind,
  moduleLayer,
  peftAdapterConfig,
  parse,
} from '@floe/shared';
import {
  type LlamaConfig,
  LORA_MODULES,
  type LoraModuleKind,
  isLoraModuleKind,
  linearPath,
  linearShape,
} from './config.js';
import type { Weights } from './checkpoint.js';
import { Random } from './random.js';
import { readSafetensors, writeSafetensors } from './safetensors.js';

/** The PEFT adapter_config.json fields we read and write. */
export const LoraConfigSchema = Type.Object({
  peft_type: Type.Optional(Type.Literal('LORA')),
  r: Type.Integer({ minimum: 1 }),
  lora_alpha: Type.Number({ exclusiveMinimum: 0 }),
  target_modules: Type.Array(Type.String(), { minItems: 1 }),
  layers_to_transform: Type.Optional(Type.Union([Type.Array(Type.Integer({ minimum: 0 })), Type.Null()])),
  base_model_name_or_path: Type.Optional(Type.Union([Type.String(), Type.Null()])),
});
export type LoraConfig = Static<typeof LoraConfigSchema>;

export function loraModulePaths(config: LlamaConfig, lora: LoraConfig): string[] {
  const kinds = lora.target_modules.filter(isLoraModuleKind);
  if (kinds.length !== lora.target_modules.length) {
    const unknown = lora.target_modules.filter((m) => !isLoraModuleKind(m));
    throw new Error(`unknown LoRA target modules ${unknown.join(', ')}; known: ${LORA_MODULES.join(', ')}`);
  }
  const layers = lora.layers_to_transform ?? [...Array(config.num_hidden_layers).keys()];
  for (const layer of layers) {
    if (layer >= config.num_hidden_layers) throw new Error(`layer ${layer} does not exist`);
  }
  return layers.flatMap((layer) => kinds.map((kind) => linearPath(layer, kind)));
}

export function loraShape(config: LlamaConfig, modulePath: string): [out: number, inn: number] {
  return linearShape(config, moduleKind(modulePath) as LoraModuleKind);
}

/** A Kaiming-uniform (a = sqrt(5), PEFT's default), B = 0: the adapted model starts equal to the base. */
export function initLora(config: LlamaConfig, lora: LoraConfig, seed = 0): LoraAdapter {
  const random = new Random(seed);
  const modules = new Map<string, LoraFactors>();
  for (const modulePath of loraModulePaths(config, lora)) {
    const [outFeatures, inFeatures] = loraShape(config, modulePath);
    const bound = 1 / Math.sqrt(inFeatures);
    modules.set(modulePath, {
      rank: lora.r,
      inFeatures,
      outFeatures,
      A: random.uniformArray(lora.r * inFeatures, bound),
      B: new Float32Array(outFeatures * lora.r),
    });
  }
  return { alpha: lora.lora_alpha, modules };
}

/** Throws unless every module of `adapter` targets a linear layer of `config` with matching shapes. */
export function checkAdapter(config: LlamaConfig, adapter: LoraAdapter): void {
  for (const [modulePath, f] of adapter.modules) {
    const kind = moduleKind(modulePath);
    const layer = moduleLayer(modulePath);
    if (!isLoraModuleKind(kind) || layer === undefined || linearPath(layer, kind) !== modulePath) {
      throw new Error(`${modulePath} is not a LoRA-capable linear layer`);
    }
    if (layer >= config.num_hidden_layers) throw new Error(`${modulePath}: layer ${layer} does not exist`);
    const [out, inn] = linearShape(config, kind);
    if (f.outFeatures !== out || f.inFeatures !== inn) {
      throw new Error(`${modulePath}: adapter is ${f.outFeatures}x${f.inFeatures}, the layer is ${out}x${inn}`);
    }
  }
}

/** Adds (alpha / r) B A into each adapted weight; returns new weights, the input is not modified. */
export function mergeLora(config: LlamaConfig, weights: Weights, adapter: LoraAdapter): Weights {
  checkAdapter(config, adapter);
  const merged: Weights = new Map(weights);
  for (const [modulePath, factors] of adapter.modules) {
    const name = `${modulePath}.weight`;
    const base = weights.get(name);
    if (!base) throw new Error(`base weights lack ${name}`);
    const delta = loraProduct(factors, adapter.alpha).data;
    const data = base.data.map((w, i) => w + (delta[i] as number));
    merged.set(name, { name, shape: [...base.shape], data });
  }
  return merged;
}

export async function saveAdapter(dir: string, adapter: LoraAdapter, baseModel?: string): Promise<void> {
  await mkdir(dir, { recursive: true });
  await writeFile(
    path.join(dir, 'adapter_config.json'),
    `${JSON.stringify(peftAdapterConfig(adapter, baseModel), null, 2)}\n`,
  );
  await writeSafetensors(path.join(dir, 'adapter_model.safetensors'), adapterToTensors(adapter));
}

export async function loadAdapter(dir: string): Promise<{ adapter: LoraAdapter; config: LoraConfig }> {
  const raw: unknown = JSON.parse(await readFile(path.join(dir, 'adapter_config.json'), 'utf8'));
  const config = parse(LoraConfigSchema, raw, 'adapter_config.json');
  const { tensors } = await readSafetensors(path.join(dir, 'adapter_model.safetensors'));
  return { adapter: adapterFromTensors([...tensors.values()], config.lora_alpha), config };
}
