/**
 * The models a device serves: its base checkpoint and each personalized LoRA adapter as a model of its
 * own (as vLLM lists LoRA adapters), each on the decode engine with its adapter merged into the weights
 * (a fixed personalization runs at the base model's speed). Engines are built on first use and the
 * least recently used is released past `maxLoaded`.
 */
import path from 'node:path';
import { type LoadedCheckpoint, OrtDecoder, checkAdapter, loadAdapter, loadCheckpoint } from '@floe/model';
import type { LoraAdapter } from '@floe/shared';

export interface ServedModel {
  id: string;
  /** The base model's id for an adapter; itself for the base. */
  parent: string;
  /** The adapter's directory (PEFT layout); none for the base. */
  adapterDir?: string;
}

export interface AdapterSource {
  id: string;
  dir: string;
}

export class UnknownModelError extends Error {
  constructor(readonly model: string) {
    super(`The model \`${model}\` does not exist.`);
  }
}

export class EdgeModels {
  private readonly engines = new Map<string, Promise<OrtDecoder>>();

  private constructor(
    readonly checkpoint: LoadedCheckpoint,
    readonly baseId: string,
    private readonly adapters: Map<string, { dir: string; adapter: LoraAdapter }>,
    private readonly threads: number,
    private readonly maxLoaded: number,
  ) {}

  /**
   * Loads the checkpoint and every adapter (each checked against the checkpoint's shapes now, so that a
   * wrong adapter fails at start, not at its first request).
   */
  static async open(options: {
    modelDir: string;
    baseId?: string | undefined;
    adapters?: readonly AdapterSource[];
    threads?: number;
    maxLoaded?: number;
  }): Promise<EdgeModels> {
    const checkpoint = await loadCheckpoint(options.modelDir);
    const baseId = options.baseId ?? path.basename(options.modelDir);
    const adapters = new Map<string, { dir: string; adapter: LoraAdapter }>();
    for (const { id, dir } of options.adapters ?? []) {
      if (id === baseId || adapters.has(id)) throw new Error(`model id ${id} is used twice`);
      const { adapter } = await loadAdapter(dir);
      try {
        checkAdapter(checkpoint.config, adapter);
      } catch (error) {
        throw new Error(`adapter ${id} (${dir}) does not fit ${baseId}: ${(error as Error).message}`);
      }
      adapters.set(id, { dir, adapter });
    }
    return new EdgeModels(checkpoint, baseId, adapters, options.threads ?? 1, Math.max(1, options.maxLoaded ?? 3));
  }

  list(): ServedModel[] {
    return [
      { id: this.baseId, parent: this.baseId },
      ...[...this.adapters].map(([id, { dir }]) => ({ id, parent: this.baseId, adapterDir: dir })),
    ];
  }

  has(id: string): boolean {
    return id === this.baseId || this.adapters.has(id);
  }

  /** The decode engine of a model (its adapter merged), built on first use. */
  engine(id: string): Promise<OrtDecoder> {
    if (!this.has(id)) return Promise.reject(new UnknownModelError(id));
    let engine = this.engines.get(id);
    if (engine) {
      // most recently used last
      this.engines.delete(id);
      this.engines.set(id, engine);
      return engine;
    }
    const adapter = this.adapters.get(id)?.adapter;
    engine = OrtDecoder.create(this.checkpoint.config, this.checkpoint.weights, {
      threads: this.threads,
      ...(adapter ? { mergedAdapter: adapter } : {}),
    });
    this.engines.set(id, engine);
    engine.catch(() => this.engines.delete(id));
    this.evict();
    return engine;
  }

  private evict(): void {
    // the base stays: proxy-tuning needs it beside any adapter
    while (this.engines.size > this.maxLoaded) {
      const oldest = [...this.engines.keys()].find((id) => id !== this.baseId);
      if (oldest === undefined) return;
      const engine = this.engines.get(oldest)!;
      this.engines.delete(oldest);
      void engine.then((e) => e.release()).catch(() => undefined);
    }
  }

  async release(): Promise<void> {
    const engines = [...this.engines.values()];
    this.engines.clear();
    await Promise.all(engines.map((e) => e.then((d) => d.release()).catch(() => undefined)));
  }
}
