/**
 * A client's held-out figures under every method, on its own device: the edge model with any adapter,
 * the cloud alone, and the two fused. Fused sources wait for the cloud as long as it takes (a figure of
 * what fusion gives, not of the network; `pnpm bench inference` measures real time), and count any byte
 * that fell back to the edge.
 */
import { CloudByteSource, CloudClient, FusedByteSource } from '@floe/edge-client';
import { type LoadedCheckpoint, ModelByteSource, OrtLlama } from '@floe/model';
import type { LoraAdapter } from '@floe/shared';
import type { LocalData } from '@floe/tasks';
import { type HeldOutModel, type HeldOutScore, cloudModel, scoreHeldOut, sourceModel } from './held-out.js';

/** How long a fused byte or a cloud call may wait in an evaluation (ms). */
const CLOUD_PATIENCE_MS = 60_000;

export class ClientEvaluator {
  private edgeModel: { modules: string; model: OrtLlama } | undefined;
  private baseScore: Promise<HeldOutScore> | undefined;
  private cloudClient: CloudClient | undefined;

  constructor(
    private readonly checkpoint: LoadedCheckpoint,
    private readonly data: LocalData,
    private readonly options: { seqLen: number; threads: number; cloudUrl?: string | undefined },
  ) {
    if (!data.test) throw new Error('the client has no held-out split');
  }

  private async edgeSource(adapter?: LoraAdapter): Promise<ModelByteSource<unknown>> {
    const modules = [...(adapter?.modules.keys() ?? [])].sort();
    const key = modules.join(',');
    if (this.edgeModel?.modules !== key) {
      await this.edgeModel?.model.release();
      const { config, weights } = this.checkpoint;
      const model = await OrtLlama.create(config, weights, { loraModules: modules, threads: this.options.threads });
      this.edgeModel = { modules: key, model };
    }
    return new ModelByteSource(this.edgeModel.model, adapter ? 'edge+lora' : 'edge', adapter);
  }

  private cloud(): CloudClient {
    if (!this.options.cloudUrl) throw new Error('no cloud to score against');
    this.cloudClient ??= new CloudClient({
      baseURL: `${this.options.cloudUrl}/v1`,
      apiKey: 'none',
      model: 'floe-cloud',
      timeoutMs: CLOUD_PATIENCE_MS,
    });
    return this.cloudClient;
  }

  private async score(model: HeldOutModel): Promise<HeldOutScore> {
    const { test, manifest } = this.data;
    return scoreHeldOut(model, test!, manifest, { seqLen: this.options.seqLen });
  }

  /**
   * The edge model with `adapter` (the base model without). An adapter that changes nothing (every
   * module's B or A zero, as a fresh LoRA start is) is the base model: its figure is the base's, scored once.
   */
  async edge(adapter?: LoraAdapter): Promise<HeldOutScore> {
    if (!adapter || changesNothing(adapter)) {
      if (!this.baseScore) {
        const scored = this.edgeSource().then((source) => this.score(sourceModel(source)));
        // a failure is not kept: the next call scores again
        scored.catch(() => (this.baseScore === scored ? (this.baseScore = undefined) : undefined));
        this.baseScore = scored;
      }
      return this.baseScore;
    }
    return this.score(sourceModel(await this.edgeSource(adapter)));
  }

  async cloudAlone(): Promise<HeldOutScore> {
    const client = this.cloud();
    return this.score(cloudModel(client, new CloudByteSource(client)));
  }

  /** The edge with `adapter` fused with the cloud (entropy mode, the default), and the share that fell back. */
  async fused(adapter?: LoraAdapter): Promise<HeldOutScore & { fallback: number }> {
    const source = new FusedByteSource(await this.edgeSource(adapter), this.cloud(), {
      fusion: { mode: 'entropy' },
      deadlineMs: CLOUD_PATIENCE_MS,
    });
    const score = await this.score(sourceModel(source));
    const { positions, fellBack } = source.stats;
    return { ...score, fallback: positions > 0 ? fellBack / positions : 0 };
  }

  async dispose(): Promise<void> {
    await this.edgeModel?.model.release();
    this.edgeModel = undefined;
  }
}

function changesNothing(adapter: LoraAdapter): boolean {
  return [...adapter.modules.values()].every((f) => f.B.every((x) => x === 0) || f.A.every((x) => x === 0));
}
