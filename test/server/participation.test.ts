import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { JobSummary } from '@floe/shared';
import type { SyntheticDevice } from '@floe/simulator';
import { type TestServer, jobSpec, startDevices, startTestServer, waitForJob } from './helpers.js';

async function until(done: () => boolean, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!done()) {
    if (Date.now() > deadline) throw new Error('timed out');
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

describe('a job that samples some of its devices each round', () => {
  let test: TestServer;
  let devices: SyntheticDevice[];

  beforeAll(async () => {
    test = await startTestServer({ gatherMs: 200 });
    devices = await startDevices(test.url, 8, (i) => ({
      plan: { rank: 4, targetModules: ['q_proj', 'v_proj'] },
      distribution: { seed: 1, scale: 0.05, noise: 0.5 },
      clientSeed: i,
    }));
  });

  afterAll(async () => {
    devices.forEach((d) => d.stop());
    await test.close();
  });

  it('tells every device, sampled last or not, that the job completed', async () => {
    const created = await test.admin<JobSummary>(
      'POST',
      '/v1/jobs',
      jobSpec({ name: 'partial', clientsPerRound: 3, quorum: 2, rounds: 3 }),
    );
    const job = await waitForJob(test, created.body.id);
    expect(job.rounds.map((r) => [r.status, r.sampled])).toEqual([
      ['aggregated', 3],
      ['aggregated', 3],
      ['aggregated', 3],
    ]);
    await until(() => devices.every((d) => d.ends.some((e) => e.jobId === job.id && e.jobStatus !== 'running')));
    const lastRound = new Set(
      devices.filter((d) => d.rounds.some((s) => s.jobId === job.id && s.round === 2)).map((d) => d.clientId),
    );
    expect(lastRound.size).toBe(3);
    for (const device of devices) {
      const ends = device.ends.filter((e) => e.jobId === job.id);
      const final = ends.filter((e) => e.jobStatus !== 'running');
      // one final word each, about the last round; running ends only for the rounds the device was in
      expect(final.map((e) => [e.round, e.jobStatus, e.accepted])).toEqual([[2, 'completed', 3]]);
      const sampledIn = device.rounds.filter((s) => s.jobId === job.id).map((s) => s.round);
      expect(ends.map((e) => e.round)).toEqual(lastRound.has(device.clientId) ? sampledIn : [...sampledIn, 2]);
    }
  });

  it('tells every connected device that a job stopped between rounds', async () => {
    const created = await test.admin<JobSummary>(
      'POST',
      '/v1/jobs',
      jobSpec({ name: 'stopped', clientsPerRound: 3, quorum: 2, rounds: 50 }),
    );
    const jobId = created.body.id;
    await waitForJob(test, jobId, (job) => job.rounds.some((r) => r.status === 'aggregated'));
    const stopped = await test.admin<JobSummary>('POST', `/v1/jobs/${jobId}/stop`);
    expect(stopped.body.status).toBe('stopped');
    await until(() => devices.every((d) => d.ends.some((e) => e.jobId === jobId && e.jobStatus === 'stopped')));
    for (const device of devices) {
      expect(device.ends.filter((e) => e.jobId === jobId && e.jobStatus !== 'running')).toHaveLength(1);
    }
  });
});
