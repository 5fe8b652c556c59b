/**
 * A LoRA adapter as the runtime inputs of an ORT Llama graph, prepared once per adapter object.
 */
import ort from 'onnxruntime-node';
import type { LoraAdapter } from '@floe/shared';
import type { LlamaConfig } from '../config.js';
import { checkAdapter } from '../lora.js';
import {
  type ProjectionGroup,
  type QkvLayout,
  loraGroupFeed,
  loraGroups,
  loraInputNames,
} from '../onnx/llama-graph.js';

export class LoraFeeds {
  private readonly prepared = new WeakMap<LoraAdapter, Record<string, ort.Tensor>>();
  private zero: Record<string, ort.Tensor> | undefined;
  private readonly groups: { layer: number; group: ProjectionGroup }[];

  constructor(
    private readonly config: LlamaConfig,
    readonly modules: readonly string[],
    private readonly layout: QkvLayout,
  ) {
    this.groups = loraGroups(config, modules);
  }

  /** The feeds of `adapter` (zeros when undefined); an adapter of modules without inputs is refused. */
  feeds(adapter: LoraAdapter | undefined): Record<string, ort.Tensor> {
    if (this.modules.length === 0) {
      if (adapter && adapter.modules.size > 0) throw new Error('this session was built without LoRA inputs');
      return {};
    }
    if (!adapter) return (this.zero ??= this.prepare(undefined));
    let feeds = this.prepared.get(adapter);
    if (!feeds) {
      feeds = this.prepare(adapter);
      this.prepared.set(adapter, feeds);
    }
    return feeds;
  }

  /** Fused per-group inputs (see llama-graph.ts); groups the adapter does not cover get rank-1 zeros. */
  private prepare(adapter: LoraAdapter | undefined): Record<string, ort.Tensor> {
    if (adapter) {
      checkAdapter(this.config, adapter);
      for (const path of adapter.modules.keys()) {
        if (!this.modules.includes(path)) throw new Error(`this session has no LoRA inputs for ${path}`);
      }
    }
    const feeds: Record<string, ort.Tensor> = {};
    for (const { layer, group } of this.groups) {
      const names = loraInputNames(layer, group);
      const feed = loraGroupFeed(this.config, adapter, layer, group, this.layout);
      feeds[names.A] = new ort.Tensor('float32', feed.A, [feed.inFeatures, feed.rank]);
      feeds[names.B] = new ort.Tensor('float32', feed.B, [feed.rank, feed.width]);
    }
    return feeds;
  }
}
