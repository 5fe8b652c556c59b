/**
 * The server as people run it (packages/server/src/main.ts in its own process), killed with SIGKILL
 * in the middle of a round and started again on the same data directory.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import Database from 'better-sqlite3';
import pg from 'pg';
import { afterAll, describe, expect, it } from 'vitest';
import { ServerConnection, enroll } from '@floe/edge-client';
import { spawnServerProcess } from '@floe/server';
import { type JobSummary, type RoundStart, toWireAdapter } from '@floe/shared';
import { DEFAULT_PROFILE, type SyntheticDevice, sampleAdapter } from '@floe/simulator';
import {
  ADMIN_TOKEN,
  JOIN_TOKEN,
  adminClient,
  type TestServer,
  type TestStore,
  jobSpec,
  startDevices,
  startTestServer,
  testStore,
  waitForJob,
} from './helpers.js';

const PLAN = { rank: 4, targetModules: ['q_proj', 'v_proj'] };
const DISTRIBUTION = { seed: 5, scale: 0.05, noise: 0.5 };

const spawnServer = (store: TestStore, port: number) =>
  spawnServerProcess({
    FLOE_HOST: '127.0.0.1',
    FLOE_PORT: String(port),
    ...store.env,
    FLOE_JOIN_TOKEN: JOIN_TOKEN,
    FLOE_ADMIN_TOKEN: ADMIN_TOKEN,
    FLOE_RESTART_GRACE_MS: '30000',
    FLOE_RATE_LIMIT_MESSAGES: '1000',
  });

describe('SIGKILL mid-round', () => {
  const cleanup: (() => unknown)[] = [];
  afterAll(async () => {
    for (const step of cleanup.reverse()) await step();
  });

  it('restarts, resumes the job and keeps every accepted update', async () => {
    const store = await testStore();
    cleanup.push(() => store.dispose());
    let server = await spawnServer(store, 0);
    cleanup.push(() => server.child.kill('SIGKILL'));
    const port = Number(new URL(server.url).port);
    const test = { url: server.url, admin: adminClient(server.url) } as TestServer;

    // five devices answer at once; five others only after the crash
    const prompt: SyntheticDevice[] = await startDevices(server.url, 5, (i) => ({
      plan: PLAN,
      distribution: DISTRIBUTION,
      clientSeed: i,
    }));
    let armed = false;
    const late: ServerConnection[] = [];
    const lateStarts: RoundStart[] = [];
    for (let i = 0; i < 5; i++) {
      const { credential } = await enroll(server.url, JOIN_TOKEN, DEFAULT_PROFILE);
      const connection = await ServerConnection.open(server.url, credential, { profile: DEFAULT_PROFILE, plan: PLAN });
      connection.on('round_start', (start) => {
        lateStarts.push(start);
        if (!armed) return;
        const adapter = sampleAdapter(start, undefined, DISTRIBUTION, 100 + i);
        void connection.sendUpdate({
          jobId: start.jobId,
          round: start.round,
          numSamples: 50,
          plan: { ...PLAN, rank: start.config.rank },
          adapter: toWireAdapter(adapter),
          metrics: { loss: 2 },
        });
      });
      late.push(connection);
    }
    cleanup.push(() => [...prompt.map((d) => d.connection), ...late].forEach((c) => c.close()));

    const created = await test.admin<JobSummary>(
      'POST',
      '/v1/jobs',
      jobSpec({ rounds: 2, clientsPerRound: 10, quorum: 10, roundDeadlineSec: 120 }),
    );
    expect(created.status).toBe(201);
    const jobId = created.body.id;
    await waitForJob(test, jobId, (job) => job.rounds[0]?.accepted === 5);
    const before = await test.admin<{ clientId: string; sha256: string }[]>(
      'GET',
      `/v1/jobs/${jobId}/rounds/0/updates`,
    );
    expect(before.body).toHaveLength(5);
    expect(lateStarts).toHaveLength(5);

    server.child.kill('SIGKILL');
    await new Promise((resolve) => server.child.once('exit', resolve));
    armed = true;
    server = await spawnServer(store, port);

    // the late devices reconnect by themselves, get round 0 again and finish it; round 1 follows
    const job = await waitForJob(test, jobId, undefined, 90_000);
    expect(job.status).toBe('completed');
    expect(job.rounds.map((r) => [r.round, r.status, r.accepted])).toEqual([
      [0, 'aggregated', 10],
      [1, 'aggregated', 10],
    ]);
    const after = await test.admin<{ clientId: string; sha256: string }[]>('GET', `/v1/jobs/${jobId}/rounds/0/updates`);
    expect(after.body).toHaveLength(10);
    for (const update of before.body) expect(after.body).toContainEqual(expect.objectContaining(update));
    expect(lateStarts.filter((s) => s.round === 0)).toHaveLength(10);
  }, 180_000);
});

/** Overwrites one stored update's frame behind the server's back (its checksum no longer matches). */
async function corruptOneUpdate(config: { dataDir: string; databaseUrl: string }): Promise<void> {
  const sql = 'UPDATE updates SET frame = $1 WHERE client_id = (SELECT MIN(client_id) FROM updates)';
  if (config.databaseUrl === '') {
    const db = new Database(path.join(config.dataDir, 'floe.db'));
    db.prepare(sql.replace('$1', '?')).run(Buffer.alloc(16));
    db.close();
    return;
  }
  const client = new pg.Client({ connectionString: config.databaseUrl });
  await client.connect();
  await client.query(sql, [Buffer.alloc(16)]);
  await client.end();
}

describe('corrupted state', () => {
  it('fails the round, not the server, when a stored update no longer matches its checksum', async () => {
    const test = await startTestServer();
    const devices = await startDevices(test.url, 3, (i) => ({ plan: PLAN, distribution: DISTRIBUTION, clientSeed: i }));
    const { credential } = await enroll(test.url, JOIN_TOKEN, DEFAULT_PROFILE);
    const silent = await ServerConnection.open(test.url, credential, { profile: DEFAULT_PROFILE, plan: PLAN });
    try {
      const created = await test.admin<JobSummary>(
        'POST',
        '/v1/jobs',
        jobSpec({ rounds: 1, clientsPerRound: 4, quorum: 3, roundDeadlineSec: 10 }),
      );
      await waitForJob(test, created.body.id, (job) => job.rounds[0]?.accepted === 3);
      await corruptOneUpdate(test.server.config);
      const job = await waitForJob(test, created.body.id);
      expect(job.rounds[0]).toMatchObject({ status: 'failed', accepted: 3 });
      const health = await fetch(`${test.url}/healthz`);
      expect(health.status).toBe(200);
    } finally {
      silent.close();
      devices.forEach((d) => d.stop());
      await test.close();
    }
  });
});

describe('bad settings', () => {
  it('stop the server process at start-up instead of leaving it half-started', async () => {
    const dataDir = await mkdtemp(path.join(os.tmpdir(), 'floe-settings-'));
    await expect(
      spawnServerProcess({ FLOE_HOST: '127.0.0.1', FLOE_PORT: 'eighty', FLOE_DATA_DIR: dataDir }),
    ).rejects.toThrow(/server exited with 2/);
    // a database it cannot open (nothing listens on port 1): one line on stderr, exit 1
    await expect(
      spawnServerProcess({
        FLOE_HOST: '127.0.0.1',
        FLOE_PORT: '0',
        FLOE_DATA_DIR: dataDir,
        FLOE_JOIN_TOKEN: JOIN_TOKEN,
        FLOE_ADMIN_TOKEN: ADMIN_TOKEN,
        FLOE_DATABASE_URL: 'postgres://floe:secret@127.0.0.1:1/floe',
      }),
    ).rejects.toThrow(/server exited with 1/);
    await rm(dataDir, { recursive: true, force: true });
  }, 60_000);
});
