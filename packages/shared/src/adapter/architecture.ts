/**
 * The shapes of a Llama-style decoder's linear layers, from the few numbers that fix them. The server
 * checks every update against these shapes without loading (or importing) the model.
 */
import type { ModelArchitecture } from '../protocol/schemas.js';

export const LORA_MODULES = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'] as const;
export type LoraModuleKind = (typeof LORA_MODULES)[number];

export function isLoraModuleKind(value: string): value is LoraModuleKind {
  return (LORA_MODULES as readonly string[]).includes(value);
}

/** [outFeatures, inFeatures] of the `kind` projection. */
export function linearShapeOf(arch: ModelArchitecture, kind: LoraModuleKind): [out: number, inn: number] {
  const h = arch.hiddenSize;
  const hd = arch.headDim;
  switch (kind) {
    case 'q_proj':
      return [arch.numAttentionHeads * hd, h];
    case 'k_proj':
    case 'v_proj':
      return [arch.numKeyValueHeads * hd, h];
    case 'o_proj':
      return [h, arch.numAttentionHeads * hd];
    case 'gate_proj':
    case 'up_proj':
      return [arch.intermediateSize, h];
    case 'down_proj':
      return [h, arch.intermediateSize];
  }
}

/** `model.layers.3.self_attn.q_proj` */
export function linearPath(layer: number, kind: LoraModuleKind): string {
  const block = kind === 'gate_proj' || kind === 'up_proj' || kind === 'down_proj' ? 'mlp' : 'self_attn';
  return `model.layers.${layer}.${block}.${kind}`;
}

/**
 * Module path -> [out, in] of every module an adapter of `targetModules` on `layers` (default: all)
 * holds. Unknown module kinds and layers outside the model raise a RangeError.
 */
export function adapterModuleShapes(
  arch: ModelArchitecture,
  targetModules: readonly string[],
  layers?: readonly number[],
): Map<string, [number, number]> {
  const shapes = new Map<string, [number, number]>();
  const chosen = layers ?? Array.from({ length: arch.numHiddenLayers }, (_, i) => i);
  for (const layer of [...chosen].sort((a, b) => a - b)) {
    if (!Number.isInteger(layer) || layer < 0 || layer >= arch.numHiddenLayers) {
      throw new RangeError(`layer ${layer} is outside the model's ${arch.numHiddenLayers} layers`);
    }
    for (const kind of targetModules) {
      if (!isLoraModuleKind(kind)) throw new RangeError(`unknown LoRA module ${kind}`);
      shapes.set(linearPath(layer, kind), linearShapeOf(arch, kind));
    }
  }
  return shapes;
}
