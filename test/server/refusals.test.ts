import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type ConnectionError, ServerConnection, enroll } from '@floe/edge-client';
import {
  type ErrorMessage,
  type JobSummary,
  type RoundStart,
  type Update,
  type UpdateAck,
  PROTOCOL_VERSION,
  encodeMessage,
  fromWireAdapter,
  toWireAdapter,
} from '@floe/shared';
import { DEFAULT_PROFILE, type SyntheticDevice, sampleAdapter } from '@floe/simulator';
import { JOIN_TOKEN, type TestServer, jobSpec, startDevices, startTestServer, waitForJob } from './helpers.js';

const PLAN = { rank: 8, targetModules: ['q_proj', 'v_proj'] };
const DISTRIBUTION = { seed: 3, scale: 0.05, noise: 0.5 };

/** Ways a device spoils its own update, and the refusal each must get. */
const TAMPERS: { code: string; tamper: (start: RoundStart, update: Omit<Update, 'type'>) => Omit<Update, 'type'> }[] = [
  {
    // factors of rank 7 where rank 8 was planned
    code: 'wrong_shape',
    tamper: (start, update) => {
      const wrong = sampleAdapter({ ...start, config: { ...start.config, rank: 7 } }, undefined, DISTRIBUTION, 1);
      return { ...update, adapter: toWireAdapter(wrong) };
    },
  },
  {
    code: 'non_finite',
    tamper: (_, update) => {
      const tensor = update.adapter.tensors[0];
      if (tensor) new DataView(tensor.data.buffer, tensor.data.byteOffset).setFloat32(4, Number.NaN, true);
      return update;
    },
  },
  { code: 'wrong_rank', tamper: (_, update) => ({ ...update, plan: { ...update.plan, rank: 4 } }) },
  {
    code: 'wrong_modules',
    tamper: (_, update) => ({ ...update, plan: { ...update.plan, targetModules: ['q_proj', 'k_proj'] } }),
  },
  { code: 'wrong_layers', tamper: (_, update) => ({ ...update, plan: { ...update.plan, layers: [0] } }) },
  {
    // every B scaled by 1e5: the product (alpha/r) B A is far beyond the job's norm bound (1e4)
    code: 'norm_too_large',
    tamper: (_, update) => {
      const adapter = fromWireAdapter(update.adapter);
      for (const factors of adapter.modules.values()) factors.B = factors.B.map((x) => x * 1e5);
      return { ...update, adapter: toWireAdapter(adapter) };
    },
  },
];

/** A client driven by hand: answers its round_start with `answer`, recording the reply. */
async function manualClient(
  url: string,
  answer: (connection: ServerConnection, start: RoundStart) => Promise<UpdateAck | ErrorMessage>,
) {
  const { credential } = await enroll(url, JOIN_TOKEN, DEFAULT_PROFILE);
  const connection = await ServerConnection.open(url, credential, { profile: DEFAULT_PROFILE, plan: PLAN });
  const reply = new Promise<UpdateAck | ErrorMessage>((resolve) => {
    connection.once('round_start', (start) => void answer(connection, start).then(resolve));
  });
  return { connection, reply };
}

describe('bad input', () => {
  let test: TestServer;
  let good: SyntheticDevice[];
  let tampered: SyntheticDevice[];
  let job: JobSummary;
  let manual: { connection: ServerConnection; reply: Promise<UpdateAck | ErrorMessage> }[];

  beforeAll(async () => {
    test = await startTestServer({ maxFrameBytes: 256 * 1024 });
    good = await startDevices(test.url, 10, (i) => ({ plan: PLAN, distribution: DISTRIBUTION, clientSeed: i }));
    tampered = await startDevices(test.url, TAMPERS.length, (i) => ({
      plan: PLAN,
      distribution: DISTRIBUTION,
      clientSeed: 100 + i,
      tamper: TAMPERS[i]!.tamper,
    }));
    const sendRaw = (bytes: Uint8Array) => (connection: ServerConnection, start: RoundStart) =>
      connection.sendFrame('update', bytes, start.jobId, start.round, 10_000);
    const garbage = Uint8Array.from({ length: 4096 }, (_, i) => (i * 7919) % 251);
    manual = [
      await manualClient(test.url, sendRaw(garbage)),
      await manualClient(test.url, (connection, start) => {
        // a schema-valid update above the 256 KiB frame limit: the websocket refuses the message (close 1009)
        // before socket.io buffers it; the device's own sendUpdate refuses it before it leaves
        const big = sampleAdapter({ ...start, config: { ...start.config, rank: 40 } }, undefined, DISTRIBUTION, 9);
        const body = {
          jobId: start.jobId,
          round: start.round,
          numSamples: 10,
          plan: { ...PLAN, rank: 40 },
          adapter: toWireAdapter(big),
          metrics: {},
        };
        const frame = encodeMessage({ type: 'update', ...body });
        expect(frame.byteLength).toBeGreaterThan(256 * 1024);
        const local = connection.sendUpdate(body);
        return local.catch((error: ConnectionError) => {
          expect(error.code).toBe('too_large');
          return new Promise<ErrorMessage>((resolve) => {
            connection.once('disconnect', (reason) => resolve({ type: 'error', code: 'link_closed', message: reason }));
            void connection.sendFrame('update', frame, start.jobId, start.round, 10_000).catch(() => undefined);
          });
        });
      }),
    ];
    const created = await test.admin<JobSummary>(
      'POST',
      '/v1/jobs',
      jobSpec({ rounds: 1, clientsPerRound: 10 + TAMPERS.length + 2, quorum: 10, roundDeadlineSec: 8 }),
    );
    expect(created.status).toBe(201);
    job = await waitForJob(test, created.body.id);
  });

  afterAll(async () => {
    [...good, ...tampered].forEach((d) => d.stop());
    manual.forEach((m) => m.connection.close());
    await test.close();
  });

  it('refuses malformed, oversized, wrong-shape, NaN, wrong-rank, wrong-module, wrong-layer and oversized-norm updates', async () => {
    const [malformed, oversized] = await Promise.all(manual.map((m) => m.reply));
    expect(malformed).toMatchObject({ type: 'error', code: 'bad_magic' });
    expect(oversized).toMatchObject({ type: 'error', code: 'link_closed', message: 'transport close' });
    const acks = tampered.map((d) => d.acks);
    expect(acks).toEqual(
      TAMPERS.map(({ code }) => [
        { type: 'update_ack', jobId: job.id, round: 0, accepted: false, error: { code, message: expect.any(String) } },
      ]),
    );
  });

  it('completes the round with the sound updates', () => {
    expect(job.status).toBe('completed');
    expect(job.rounds[0]).toMatchObject({
      status: 'aggregated',
      sampled: 10 + TAMPERS.length + 2,
      accepted: 10,
      rejected: TAMPERS.length,
      dropped: 2,
    });
    for (const device of good)
      expect(device.acks).toEqual([{ type: 'update_ack', jobId: job.id, round: 0, accepted: true }]);
  });

  it('answers unknown events, and updates for a job that has finished, with an error', async () => {
    const bystander = await manualClient(test.url, () => Promise.reject(new Error('never sampled')));
    try {
      const update = encodeMessage({
        type: 'update',
        jobId: job.id,
        round: 0,
        numSamples: 1,
        plan: PLAN,
        adapter: { alpha: 16, tensors: [] },
        metrics: {},
      });
      const reply = await bystander.connection.sendFrame('update', update, job.id, 0, 5000);
      expect(reply).toMatchObject({ accepted: false, error: { code: 'job_not_running' } });
      const unknown = await bystander.connection.sendFrame('round_end', update, job.id, 0, 5000);
      expect(unknown).toMatchObject({ type: 'error', code: 'unknown_event' });
    } finally {
      bystander.connection.close();
    }
    const health = await fetch(`${test.url}/healthz`);
    expect(health.status).toBe(200);
  });
});

describe('a client outside the round', () => {
  it('is refused with not_sampled, and the round goes on with the sampled clients', async () => {
    const test = await startTestServer();
    const clients = await Promise.all(
      [0, 1, 2].map(async () => {
        const { credential } = await enroll(test.url, JOIN_TOKEN, DEFAULT_PROFILE);
        const connection = await ServerConnection.open(test.url, credential, { profile: DEFAULT_PROFILE, plan: PLAN });
        const starts: RoundStart[] = [];
        connection.on('round_start', (start) => starts.push(start));
        return { connection, starts };
      }),
    );
    try {
      const created = await test.admin<JobSummary>(
        'POST',
        '/v1/jobs',
        jobSpec({ rounds: 1, clientsPerRound: 2, quorum: 2, roundDeadlineSec: 30 }),
      );
      await expect.poll(() => clients.filter((c) => c.starts.length > 0).length, { timeout: 10_000 }).toBe(2);
      const outsider = clients.find((c) => c.starts.length === 0)!;
      const [start] = clients.find((c) => c.starts.length > 0)!.starts;
      const update = {
        jobId: created.body.id,
        round: 0,
        numSamples: 10,
        plan: PLAN,
        adapter: toWireAdapter(sampleAdapter(start!, undefined, DISTRIBUTION, 1)),
        metrics: {},
      };
      expect(await outsider.connection.sendUpdate(update)).toMatchObject({
        accepted: false,
        error: { code: 'not_sampled' },
      });
      // the two sampled clients answer and the round aggregates without the outsider
      for (const client of clients.filter((c) => c.starts.length > 0)) {
        const own = sampleAdapter(client.starts[0]!, undefined, DISTRIBUTION, 2);
        expect(await client.connection.sendUpdate({ ...update, adapter: toWireAdapter(own) })).toMatchObject({
          accepted: true,
        });
      }
      const job = await waitForJob(test, created.body.id);
      expect(job.rounds[0]).toMatchObject({ status: 'aggregated', sampled: 2, accepted: 2, rejected: 0 });
    } finally {
      clients.forEach((c) => c.connection.close());
      await test.close();
    }
  });
});

describe('identity', () => {
  let test: TestServer;

  beforeAll(async () => {
    test = await startTestServer();
  });
  afterAll(async () => {
    await test.close();
  });

  const open = (credential: string) =>
    ServerConnection.open(test.url, credential, {
      profile: DEFAULT_PROFILE,
      plan: PLAN,
      reconnect: false,
      timeoutMs: 5000,
    });

  it('refuses a connection without a credential', async () => {
    await expect(open('')).rejects.toMatchObject({ code: 'bad_credential' });
  });

  it('refuses a credential rewritten to name another client (impersonation)', async () => {
    const alice = await enroll(test.url, JOIN_TOKEN, DEFAULT_PROFILE);
    const bob = await enroll(test.url, JOIN_TOKEN, DEFAULT_PROFILE);
    const [header, payload, signature] = alice.credential.split('.') as [string, string, string];
    const claims = JSON.parse(Buffer.from(payload, 'base64url').toString('utf8')) as { sub: string };
    expect(claims.sub).toBe(alice.clientId);
    const forged = [
      header,
      Buffer.from(JSON.stringify({ ...claims, sub: bob.clientId })).toString('base64url'),
      signature,
    ].join('.');
    await expect(open(forged)).rejects.toMatchObject({ code: 'bad_credential' });
    // alice's own credential works, and the server knows her as herself
    const connection = await open(alice.credential);
    expect(connection.clientId).toBe(alice.clientId);
    connection.close();
  });

  it('refuses enrollment with a wrong join token or protocol, and admin calls without the admin token', async () => {
    await expect(enroll(test.url, 'not-the-token', DEFAULT_PROFILE)).rejects.toMatchObject({ code: 'bad_join_token' });
    const versionMismatch = await fetch(`${test.url}/v1/enroll`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ joinToken: JOIN_TOKEN, protocolVersion: PROTOCOL_VERSION + 1, profile: DEFAULT_PROFILE }),
    });
    expect(versionMismatch.status).toBe(400);
    expect(await versionMismatch.json()).toMatchObject({ code: 'version_mismatch' });
    const noToken = await fetch(`${test.url}/v1/jobs`);
    expect(noToken.status).toBe(401);
    const client = await enroll(test.url, JOIN_TOKEN, DEFAULT_PROFILE);
    const asClient = await fetch(`${test.url}/v1/jobs`, { headers: { authorization: `Bearer ${client.credential}` } });
    expect(asClient.status).toBe(401);
    const badSpec = await test.admin<{ code: string }>('POST', '/v1/jobs', { ...jobSpec(), rounds: -1 });
    expect(badSpec).toMatchObject({ status: 400, body: { code: 'invalid_request' } });
    const huge = await fetch(`${test.url}/v1/enroll`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({
        joinToken: 'x'.repeat(100_000),
        protocolVersion: PROTOCOL_VERSION,
        profile: DEFAULT_PROFILE,
      }),
    });
    expect(huge.status).toBe(413);
  });
});

describe('job lifecycle', () => {
  it('stops a job on request and answers unknown jobs with 404', async () => {
    const test = await startTestServer();
    try {
      const created = await test.admin<JobSummary>('POST', '/v1/jobs', jobSpec());
      expect(created.body).toMatchObject({ status: 'running', currentRound: 0, rounds: [] });
      const stopped = await test.admin<JobSummary>('POST', `/v1/jobs/${created.body.id}/stop`);
      expect(stopped).toMatchObject({ status: 200, body: { id: created.body.id, status: 'stopped' } });
      const listed = await test.admin<JobSummary[]>('GET', '/v1/jobs');
      expect(listed.body.map((j) => [j.id, j.status])).toEqual([[created.body.id, 'stopped']]);
      const unknown = await test.admin<{ code: string }>('POST', '/v1/jobs/job-nope/stop');
      expect(unknown).toMatchObject({ status: 404, body: { code: 'unknown_job' } });
      const quorum = await test.admin<{ code: string }>('POST', '/v1/jobs', jobSpec({ clientsPerRound: 2, quorum: 3 }));
      expect(quorum).toMatchObject({ status: 400, body: { code: 'invalid_job' } });
      // a combiner that needs every update at once is capped; the mean folds any number of clients
      const big = { clientsPerRound: 2500, quorum: 2500 };
      const median = await test.admin<{ code: string; message: string }>(
        'POST',
        '/v1/jobs',
        jobSpec({ ...big, robustAggregation: 'median' }),
      );
      expect(median).toMatchObject({ status: 400, body: { code: 'invalid_job', message: /at most 2000 clients/ } });
      expect(await test.admin('POST', '/v1/jobs', jobSpec(big))).toMatchObject({ status: 201 });
    } finally {
      await test.close();
    }
  });
});

describe('rate limits', () => {
  it('answers a client that sends too fast with rate_limited and keeps serving it later', async () => {
    const test = await startTestServer({ rateLimitMessages: 5, rateWindowSec: 2 });
    try {
      const { credential } = await enroll(test.url, JOIN_TOKEN, DEFAULT_PROFILE);
      const connection = await ServerConnection.open(test.url, credential, { profile: DEFAULT_PROFILE, plan: PLAN });
      const junk = Uint8Array.of(1, 2, 3);
      const codes: string[] = [];
      connection.on('server_error', (error) => codes.push(error.code));
      // a burst of 8 in one tick against 5 per window (hello may still hold one of them)
      for (let i = 0; i < 8; i++) void connection.sendFrame('update', junk, 'none', 0, 5000).catch(() => undefined);
      await expect.poll(() => codes.length, { timeout: 10_000 }).toBe(8);
      const limited = codes.filter((c) => c === 'rate_limited').length;
      expect(limited).toBeGreaterThanOrEqual(3);
      expect(codes.filter((c) => c === 'truncated')).toHaveLength(8 - limited);
      expect(codes[0]).toBe('truncated');
      await new Promise((resolve) => setTimeout(resolve, 2100));
      const later = await connection.sendFrame('update', junk, 'none', 0, 5000);
      expect(later).toMatchObject({ type: 'error', code: 'truncated' });
      connection.close();
    } finally {
      await test.close();
    }
  });
});
