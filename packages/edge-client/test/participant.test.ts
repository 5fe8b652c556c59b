/**
 * A device's local training is seeded: by default each job draws its own batches and starting adapter;
 * with `seedPerJob: false` (a simulation's devices) a round trains alike whatever the job's id, so a run
 * replays from its seed although the server names its jobs at random.
 */
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { LocalTrainer, LoraParticipant } from '@floe/edge-client';
import { architectureOf, loadCheckpoint } from '@floe/model';
import type { RoundStart } from '@floe/shared';
import { federationPartition, taskManifest } from '@floe/tasks';

const MODEL = path.join(import.meta.dirname, '..', '..', '..', 'models', 'edge-small');

describe('LoraParticipant seeding', () => {
  it('trains a round alike in two jobs when seeded per device, differently when seeded per job', async () => {
    const checkpoint = await loadCheckpoint(MODEL);
    const [data] = federationPartition('email', { seed: 0, clients: 4, pretrainSeed: 0 }).clients;
    const trainer = new LocalTrainer({
      checkpoint,
      data: { manifest: taskManifest('email'), train: data!.train, test: data!.test },
      seqLen: 64,
      microBatch: 2,
    });
    const plan = { rank: 2, targetModules: ['q_proj', 'v_proj'] };
    const start = (jobId: string): RoundStart => ({
      type: 'round_start',
      jobId,
      round: 1,
      clusterId: 0,
      deadline: Date.now() + 600_000,
      config: {
        baseModel: { id: 'edge-small', sha256: '0'.repeat(64), architecture: architectureOf(checkpoint.config) },
        targetModules: plan.targetModules,
        rank: 2,
        alpha: 4,
        localSteps: 2,
        learningRate: 1e-3,
        batchSize: 2,
      },
      adapter: null,
    });
    const tensors = async (participant: LoraParticipant, jobId: string) =>
      (await participant.onRound(start(jobId))).adapter.tensors.map((t) => Buffer.from(t.data).toString('hex'));

    const perDevice = new LoraParticipant({ trainer, plan, seed: 42, seedPerJob: false });
    expect(await tensors(perDevice, 'job-aaaa')).toEqual(await tensors(perDevice, 'job-bbbb'));
    const perJob = new LoraParticipant({ trainer, plan, seed: 42 });
    const [a, b] = [await tensors(perJob, 'job-aaaa'), await tensors(perJob, 'job-bbbb')];
    expect(a).toHaveLength(b.length);
    expect(a).not.toEqual(b);
    // and the per-device draw is the device's own: another seed trains otherwise
    const other = new LoraParticipant({ trainer, plan, seed: 43, seedPerJob: false });
    expect(await tensors(other, 'job-aaaa')).not.toEqual(await tensors(perDevice, 'job-aaaa'));
  });
});
