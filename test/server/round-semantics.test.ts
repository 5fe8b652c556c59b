/**
 * Round semantics a device can reason about (docs/protocol.md): a refused update is not the client's
 * answer (it may send a corrected one until the deadline); `round_end` says whether the round was
 * aggregated or failed; a job's adapters go only to admins and the clients that took part in it, with
 * an ETag that If-None-Match turns into 304.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ServerConnection, enroll, request } from '@floe/edge-client';
import { type JobSummary, type RoundEnd, type RoundStart, type Update, toWireAdapter } from '@floe/shared';
import { DEFAULT_PROFILE, type SyntheticDevice, sampleAdapter } from '@floe/simulator';
import { JOIN_TOKEN, type TestServer, jobSpec, startDevices, startTestServer, waitForJob } from './helpers.js';

const PLAN = { rank: 8, targetModules: ['q_proj', 'v_proj'] };
const DISTRIBUTION = { seed: 5, scale: 0.05, noise: 0.5 };

let test: TestServer;
beforeAll(async () => {
  test = await startTestServer();
});
afterAll(async () => {
  await test.close();
});

/** A client driven by hand, recording its round_start and round_end messages. */
async function handDriven(plan: typeof PLAN & { layers?: number[] } = PLAN) {
  const { clientId, credential } = await enroll(test.url, JOIN_TOKEN, DEFAULT_PROFILE);
  const connection = await ServerConnection.open(test.url, credential, { profile: DEFAULT_PROFILE, plan });
  const ends: RoundEnd[] = [];
  connection.on('round_end', (end) => ends.push(end));
  const started = new Promise<RoundStart>((resolve) => connection.once('round_start', resolve));
  return { clientId, credential, connection, ends, started };
}

function updateFor(start: RoundStart, rank = start.config.rank): Omit<Update, 'type'> {
  return {
    jobId: start.jobId,
    round: start.round,
    numSamples: 50,
    plan: { ...PLAN, rank },
    adapter: toWireAdapter(sampleAdapter(start, undefined, DISTRIBUTION, 1)),
    metrics: { loss: 1 },
  };
}

describe('round semantics', { timeout: 120_000 }, () => {
  it('lets a refused client send a corrected update before the deadline; the round waits for it', async () => {
    const [device, other] = [await handDriven(), await handDriven()];
    try {
      const created = await test.admin<JobSummary>(
        'POST',
        '/v1/jobs',
        jobSpec({ rounds: 1, clientsPerRound: 2, quorum: 2, roundDeadlineSec: 30 }),
      );
      const [start, otherStart] = [await device.started, await other.started];
      expect(await other.connection.sendUpdate(updateFor(otherStart))).toMatchObject({ accepted: true });
      // a repeat of an accepted update is refused, and is not counted as a rejected attempt
      const repeat = await other.connection.sendUpdate(updateFor(otherStart));
      expect(repeat).toMatchObject({ accepted: false, error: { code: 'duplicate_update' } });
      // the last client's refusal does not end its turn, nor the round
      const refused = await device.connection.sendUpdate(updateFor(start, 4));
      expect(refused).toMatchObject({ accepted: false, error: { code: 'wrong_rank' } });
      await new Promise((resolve) => setTimeout(resolve, 500));
      const open = await test.admin<JobSummary>('GET', `/v1/jobs/${created.body.id}`);
      expect(open.body.rounds[0]).toMatchObject({ status: 'open', rejected: 1 });
      expect(device.ends).toEqual([]);
      // its corrected update is taken, and the round closes
      expect(await device.connection.sendUpdate(updateFor(start))).toMatchObject({ accepted: true });
      const job = await waitForJob(test, created.body.id);
      expect(job.rounds[0]).toMatchObject({ status: 'aggregated', accepted: 2, rejected: 1, dropped: 0 });
      await new Promise((resolve) => setTimeout(resolve, 200));
      expect(device.ends).toEqual([
        expect.objectContaining({ round: 0, status: 'aggregated', accepted: 2, jobStatus: 'completed' }),
      ]);
    } finally {
      device.connection.close();
      other.connection.close();
    }
  });

  it('refuses layers the base model does not have with wrong_layers, not an internal error', async () => {
    const device = await handDriven({ ...PLAN, layers: [40] });
    try {
      const created = await test.admin<JobSummary>(
        'POST',
        '/v1/jobs',
        jobSpec({ rounds: 1, clientsPerRound: 1, quorum: 1, roundDeadlineSec: 2 }),
      );
      const start = await device.started;
      const ack = await device.connection.sendUpdate({ ...updateFor(start), plan: { ...PLAN, layers: [40] } });
      expect(ack).toMatchObject({ accepted: false, error: { code: 'wrong_layers' } });
      await waitForJob(test, created.body.id);
    } finally {
      device.connection.close();
    }
  });

  it('says in round_end that a round failed', async () => {
    const silent = await handDriven();
    const devices = await startDevices(test.url, 1, () => ({ plan: PLAN, distribution: DISTRIBUTION, clientSeed: 1 }));
    try {
      const created = await test.admin<JobSummary>(
        'POST',
        '/v1/jobs',
        // a deadline of a fraction of a millisecond is kept as whole milliseconds (a bigint in PostgreSQL)
        jobSpec({ rounds: 1, clientsPerRound: 2, quorum: 2, roundDeadlineSec: 1.2345678 }),
      );
      expect(created.status).toBe(201);
      await silent.started; // and never answers
      const job = await waitForJob(test, created.body.id);
      expect(job.rounds[0]).toMatchObject({ status: 'failed', dropped: 1 });
      await new Promise((resolve) => setTimeout(resolve, 200));
      for (const ends of [silent.ends, devices[0]!.ends]) {
        expect(ends.filter((end) => end.jobId === created.body.id)).toEqual([
          expect.objectContaining({ round: 0, status: 'failed', accepted: 0, jobStatus: 'completed' }),
        ]);
      }
    } finally {
      silent.connection.close();
      devices.forEach((d) => d.stop());
    }
  });

  describe('adapter downloads', () => {
    let participants: SyntheticDevice[];
    let outsider: { credential: string };
    let jobId: string;

    beforeAll(async () => {
      participants = await startDevices(test.url, 2, (i) => ({
        plan: PLAN,
        distribution: DISTRIBUTION,
        clientSeed: 10 + i,
      }));
      const created = await test.admin<JobSummary>(
        'POST',
        '/v1/jobs',
        jobSpec({ rounds: 1, clientsPerRound: 2, quorum: 2, roundDeadlineSec: 30 }),
      );
      jobId = created.body.id;
      await waitForJob(test, jobId);
      // enrolled after the job: it took no part in it
      outsider = await enroll(test.url, JOIN_TOKEN, DEFAULT_PROFILE);
    });
    afterAll(() => participants.forEach((d) => d.stop()));

    const download = (credential: string, query = '', headers: Record<string, string> = {}) =>
      request(test.url, `/v1/jobs/${jobId}/clusters/0/adapter_model.safetensors${query}`, {
        headers: { authorization: `Bearer ${credential}`, ...headers },
      });

    it("refuses a client that took no part in the job with 403; serves the job's participants", async () => {
      const refused = await download(outsider.credential);
      expect(refused.status).toBe(403);
      expect(await refused.json()).toMatchObject({ code: 'not_a_participant' });
      const config = await request(test.url, `/v1/jobs/${jobId}/clusters/0/adapter_config.json`, {
        headers: { authorization: `Bearer ${outsider.credential}` },
      });
      expect(config.status).toBe(403);
      const served = await download(participants[0]!.credential);
      expect(served.status).toBe(200);
      expect(served.headers.get('etag')).toMatch(/^"[0-9a-f]{64}"$/);
    });

    it('answers a matching If-None-Match with 304, for the stored adapter and a resized one', async () => {
      const credential = participants[1]!.credential;
      for (const query of ['', '?rank=4']) {
        const first = await download(credential, query);
        const etag = first.headers.get('etag');
        expect(first.status).toBe(200);
        expect(etag).toMatch(/^"[0-9a-f]{64}"$/);
        const again = await download(credential, query, { 'if-none-match': etag! });
        expect(again.status).toBe(304);
        expect((await again.arrayBuffer()).byteLength).toBe(0);
        const other = await download(credential, query, { 'if-none-match': `"${'0'.repeat(64)}"` });
        expect(other.status).toBe(200);
      }
    });
  });
});
