import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { UpdateSketch, adjustedRandIndex } from '@floe/federation';
import type { JobSummary, RoundStart } from '@floe/shared';
import { type SyntheticDevice, type UpdateDistribution, sampleAdapter } from '@floe/simulator';
import { type TestServer, jobSpec, startDevices, startTestServer, waitForJob } from './helpers.js';

/** Two update distributions that share most of their direction (see `common`), with client noise. */
const distribution = (task: number): UpdateDistribution => ({ seed: 10 + task, scale: 0.05, noise: 0.5, common: 1.85 });

/** Cosine of the noise-free products of two distributions, as the server's sketch sees them. */
function productCosine(a: UpdateDistribution, b: UpdateDistribution): number {
  const { baseModel, targetModules } = jobSpec();
  const start: RoundStart = {
    type: 'round_start',
    jobId: 'probe',
    round: 0,
    clusterId: 0,
    deadline: 0,
    adapter: null,
    config: { baseModel, targetModules, rank: 4, alpha: 16, localSteps: 1, learningRate: 1e-3, batchSize: 1 },
  };
  const sketch = new UpdateSketch(256, 3);
  const [x, y] = [a, b].map((d) => sketch.sketch(sampleAdapter(start, undefined, { ...d, noise: 0 }, 0)));
  let [xy, xx, yy] = [0, 0, 0];
  x!.forEach((v, k) => {
    xy += v * y![k]!;
    xx += v * v;
    yy += y![k]! * y![k]!;
  });
  return xy / Math.sqrt(xx * yy);
}

describe('task-aware clustering on the live server', () => {
  let test: TestServer;
  let devices: SyntheticDevice[];
  const truth = Array.from({ length: 20 }, (_, i) => i % 2);

  beforeAll(async () => {
    test = await startTestServer();
    devices = await startDevices(test.url, 20, (i) => ({
      plan: { rank: [4, 8][Math.floor(i / 2) % 2] as number, targetModules: ['q_proj', 'v_proj'] },
      distribution: distribution(truth[i]!),
      clientSeed: i,
    }));
  });
  afterAll(async () => {
    devices.forEach((d) => d.stop());
    await test.close();
  });

  it('puts clients of two distributions whose products have cosine > 0.5 in two clusters (ARI 1.0), ids stable', async () => {
    expect(productCosine(distribution(0), distribution(1))).toBeGreaterThan(0.5);
    const created = await test.admin<JobSummary>(
      'POST',
      '/v1/jobs',
      jobSpec({
        strategy: 'flexlora',
        clustering: true,
        rounds: 3,
        clientsPerRound: 20,
        quorum: 20,
        seed: 'two-tasks',
      }),
    );
    const job = await waitForJob(test, created.body.id);
    expect(job.rounds.map((r) => [r.status, r.accepted, r.clusters])).toEqual([
      ['aggregated', 20, 2],
      ['aggregated', 20, 2],
      ['aggregated', 20, 2],
    ]);
    const clusters = await test.admin<{ clusterId: number; clients: string[] }[]>('GET', `/v1/jobs/${job.id}/clusters`);
    const clusterOf = new Map(clusters.body.flatMap((c) => c.clients.map((id) => [id, c.clusterId] as const)));
    const found = devices.map((d) => clusterOf.get(d.clientId) ?? -1);
    expect(adjustedRandIndex(truth, found)).toBe(1);
    // every round after the first starts each device from its own cluster's adapter, same id each time
    for (const [i, device] of devices.entries()) {
      const starts = device.rounds.filter((r) => r.jobId === job.id);
      expect(starts.slice(1).map((s) => s.clusterId)).toEqual([found[i], found[i]]);
    }
  });
});

describe('clustering with one update distribution', () => {
  it('keeps one cluster', async () => {
    const test = await startTestServer();
    const devices = await startDevices(test.url, 12, (i) => ({
      plan: { rank: [2, 4, 8][i % 3] as number, targetModules: ['q_proj', 'v_proj'] },
      distribution: { seed: 42, scale: 0.05, noise: 0.5 },
      clientSeed: i,
    }));
    try {
      const created = await test.admin<JobSummary>(
        'POST',
        '/v1/jobs',
        // a seeded job: the split test errs on about 0.5% of random starts (its 1% level), not on this one
        jobSpec({
          strategy: 'hetlora',
          clustering: true,
          rounds: 2,
          clientsPerRound: 12,
          quorum: 12,
          seed: 'one-task',
        }),
      );
      const job = await waitForJob(test, created.body.id);
      expect(job.rounds.map((r) => [r.status, r.clusters])).toEqual([
        ['aggregated', 1],
        ['aggregated', 1],
      ]);
    } finally {
      devices.forEach((d) => d.stop());
      await test.close();
    }
  });
});
