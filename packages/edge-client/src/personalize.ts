/**
 * The adapter a device keeps after a job: how it is chosen was measured (decision 0013). The cluster's
 * final aggregate is fetched over REST at the device's own rank and layers (the server resizes it as it
 * would for a round), then fine-tuned on local data for a few steps if that validates better.
 */
import { type LoraAdapter, type RankPlan, adapterFromTensors, parseSafetensors } from '@floe/shared';
import { request } from './connection.js';
import { FederationError } from './errors.js';
import type { LocalTrainer } from './local-trainer.js';

/** The final aggregate of `clusterId` in `jobId`, resized to `plan`'s rank and layers by the server. */
export async function downloadClusterAdapter(
  serverUrl: string,
  credential: string,
  jobId: string,
  clusterId: number,
  plan: Pick<RankPlan, 'rank' | 'layers'>,
): Promise<LoraAdapter> {
  const query = new URLSearchParams({ rank: String(plan.rank) });
  if (plan.layers) query.set('layers', plan.layers.join(','));
  const base = `/v1/jobs/${encodeURIComponent(jobId)}/clusters/${clusterId}`;
  const get = async (file: string) => {
    const response = await request(serverUrl, `${base}/${file}?${query.toString()}`, {
      headers: { authorization: `Bearer ${credential}` },
    });
    if (!response.ok) {
      const body = (await response.json().catch(() => ({}))) as { code?: string; message?: string };
      throw new FederationError(
        body.code ?? 'download_failed',
        `GET ${file}: ${response.status} ${body.message ?? ''}`,
      );
    }
    return response;
  };
  const config = (await (await get('adapter_config.json')).json()) as { lora_alpha: number };
  const bytes = new Uint8Array(await (await get('adapter_model.safetensors')).arrayBuffer());
  return adapterFromTensors([...parseSafetensors(bytes).tensors.values()], config.lora_alpha);
}

export interface Personalization {
  adapter: LoraAdapter;
  /** `cluster`: the cluster's final aggregate as is; `cluster+local`: then fine-tuned on local data. */
  rule: 'cluster' | 'cluster+local';
  /** Both candidates on the validation split kept back from training, in the data's metric (absent when not fine-tuned). */
  validation?: { metric: string; cluster: number; finetuned: number };
}

/**
 * The adapter a device keeps: its cluster's final aggregate, or that aggregate fine-tuned for `steps`
 * local steps when the fine-tuned one is strictly better on the validation split the device kept back
 * from training (bits per byte for prose, the answers' loss for examples; decision 0013). Ties keep
 * the aggregate.
 */
export async function personalize(
  trainer: LocalTrainer,
  cluster: LoraAdapter,
  options: { steps: number; batchSize: number; learningRate: number; seed: number },
): Promise<Personalization> {
  const finetuned = (await trainer.train({ start: cluster, ...options })).adapter;
  const [before, after] = [await trainer.validate(cluster), await trainer.validate(finetuned)];
  const validation = { metric: before.metric, cluster: before.value, finetuned: after.value };
  return after.value < before.value
    ? { adapter: finetuned, rule: 'cluster+local', validation }
    : { adapter: cluster, rule: 'cluster', validation };
}
