/**
 * Clients that lie about their weight, their metrics or their factors, against a real server: each lie
 * is refused with a typed error or neutralised, and the job goes on.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type JobSummary, type RoundEnd, fromWireAdapter, toWireAdapter } from '@floe/shared';
import type { SyntheticDevice, SyntheticDeviceOptions } from '@floe/simulator';
import { type TestServer, jobSpec, startDevices, startTestServer, waitForJob } from './helpers.js';

const PLAN = { rank: 4, targetModules: ['q_proj', 'v_proj'] };
const DISTRIBUTION = { seed: 2, scale: 0.05, noise: 0.5 };

const LIES: NonNullable<SyntheticDeviceOptions['tamper']>[] = [
  // B = 0 with a huge A: the product (0) passes any product bound; fedavg would average that A
  (_start, update) => {
    const adapter = fromWireAdapter(update.adapter);
    for (const f of adapter.modules.values()) {
      f.A = f.A.map((x) => x * 1e6);
      f.B = f.B.map(() => 0);
    }
    return { ...update, adapter: toWireAdapter(adapter) };
  },
  (_start, update) => ({ ...update, numSamples: 2 ** 31 - 1 }),
  (_start, update) => ({ ...update, metrics: { loss: 1.7e308, steps: 1e308 } }),
];

describe('lying clients', () => {
  let test: TestServer;
  let honest: SyntheticDevice[];
  let liars: SyntheticDevice[];
  let job: JobSummary;
  const ends: RoundEnd[] = [];

  beforeAll(async () => {
    test = await startTestServer({ gatherMs: 200 });
    honest = await startDevices(test.url, 6, (i) => ({ plan: PLAN, distribution: DISTRIBUTION, clientSeed: i }));
    liars = await startDevices(test.url, 3, (i) => ({
      plan: PLAN,
      distribution: DISTRIBUTION,
      clientSeed: 50 + i,
      tamper: LIES[i]!,
    }));
    honest[0]?.connection.on('round_end', (end) => ends.push(end));
    const created = await test.admin<JobSummary>(
      'POST',
      '/v1/jobs',
      jobSpec({ strategy: 'fedavg', maxRank: 4, rounds: 2, clientsPerRound: 9, quorum: 8, roundDeadlineSec: 20 }),
    );
    expect(created.status).toBe(201);
    job = await waitForJob(test, created.body.id);
  });

  afterAll(async () => {
    [...honest, ...liars].forEach((d) => d.stop());
    await test.close();
  });

  it('refuses factors over the bound under fedavg with a typed error', () => {
    expect(liars[0]?.acks.map((a) => (a.type === 'update_ack' ? a.error?.code : a.code))).toEqual([
      'factor_norm_too_large',
      'factor_norm_too_large',
    ]);
  });

  it('caps a claimed sample count and takes the median of metrics, so the job runs to its end', () => {
    expect(job.status).toBe('completed');
    for (const round of job.rounds) {
      expect(round).toMatchObject({ status: 'aggregated', accepted: 8, rejected: 1 });
      // seven honest claims of 100 and one claim of 2^31 - 1, capped at the default 100,000
      expect(round.metrics['samples']).toBe(7 * 100 + 100_000);
      expect(round.metrics['client.loss']).toBeLessThan(10);
    }
    expect(ends.map((e) => [e.round, e.jobStatus])).toEqual([
      [0, 'running'],
      [1, 'completed'],
    ]);
  });
});
