/**
 * The Store contract, on whichever engine this vitest project runs the server suite on: the embedded
 * SQLite file, or a scratch database on a throwaway PostgreSQL server (project "server-on-postgres").
 */
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import Database from 'better-sqlite3';
import pg from 'pg';
import { afterEach, describe, expect, inject, it } from 'vitest';
import type { DeviceProfile } from '@floe/shared';
import { type JobRow, type RoundRow, type Store, sha256Hex } from '../src/store/store.js';
import { openStore } from '../src/store/open-store.js';
import { PostgresStore } from '../src/store/postgres-store.js';
import { configFromEnv } from '../src/config.js';
import { createScratchDatabase } from '../../../scripts/lib/local-postgres.js';

const ENGINE = inject('postgresAdminUrl') ? 'postgres' : 'sqlite';

interface TestStore {
  store: Store;
  /** Closes the store and opens it again on the same data. */
  reopen(): Promise<Store>;
  /** Runs SQL behind the store's back (`$1`-style parameters on both engines). */
  raw(sql: string, params: unknown[]): Promise<void>;
}

const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

async function tempStore(): Promise<TestStore> {
  const dataDir = await mkdtemp(path.join(os.tmpdir(), 'floe-store-'));
  const adminUrl = inject('postgresAdminUrl');
  const database = adminUrl ? await createScratchDatabase(adminUrl) : undefined;
  const config = { dataDir, databaseUrl: database?.url ?? '' };
  const test: TestStore = {
    store: await openStore(config),
    async reopen() {
      await test.store.close();
      return (test.store = await openStore(config));
    },
    async raw(sql, params) {
      if (!database) {
        const db = new Database(path.join(dataDir, 'floe.db'));
        db.prepare(sql.replace(/\$\d+/g, '?')).run(...params);
        db.close();
        return;
      }
      const client = new pg.Client({ connectionString: database.url });
      await client.connect();
      await client.query(sql, params);
      await client.end();
    },
  };
  cleanups.push(async () => {
    await test.store.close().catch(() => undefined);
    await database?.drop();
    await rm(dataDir, { recursive: true, force: true });
  });
  return test;
}

const PROFILE: DeviceProfile = {
  tier: 'laptop',
  memoryMiB: 8192,
  computeGflops: 20,
  uplinkMbps: 10,
  downlinkMbps: 50,
  roundBudgetSec: 60,
};

const job: JobRow = {
  id: 'job-1',
  spec: { name: 'a job' } as JobRow['spec'],
  status: 'running',
  currentRound: 0,
  createdAt: new Date().toISOString(),
  state: { centroids: [], clusterOf: {} },
};

const round: RoundRow = {
  jobId: 'job-1',
  round: 0,
  status: 'open',
  startedAt: new Date().toISOString(),
  deadline: Date.now() + 1000,
  endedAt: null,
  sampled: [
    { clientId: 'c-1', rank: 4, clusterId: 0 },
    { clientId: 'c-2', rank: 8, clusterId: 1 },
  ],
  accepted: 0,
  rejected: 0,
  dropped: 0,
  clusters: 0,
  metrics: {},
  closing: false,
};

const update = (clientId: string, frame: Uint8Array) => ({
  jobId: 'job-1',
  round: 0,
  clientId,
  numSamples: 7,
  rank: 4,
  metrics: { loss: 1.5 },
  frame,
});

describe(`Store on ${ENGINE}`, () => {
  it('keeps accepted updates across reopening and counts them with the round', async () => {
    const test = await tempStore();
    await test.store.addJob(job);
    await test.store.addRound(round);
    const frame = Uint8Array.from({ length: 1000 }, (_, i) => i % 256);
    const stored = await test.store.addUpdate(update('c-1', frame));
    expect(stored?.sha256).toBe(sha256Hex(frame));
    expect(stored?.roundAccepted).toBe(1);
    expect((await test.store.addUpdate(update('c-2', frame)))?.roundAccepted).toBe(2);
    const reopened = await test.reopen();
    const [read] = await reopened.updates('job-1', 0); // ordered by client id
    expect(read?.frame).toEqual(frame);
    expect(read).toMatchObject({ clientId: 'c-1', numSamples: 7, rank: 4, metrics: { loss: 1.5 } });
    expect((await reopened.round('job-1', 0))?.accepted).toBe(2);
    expect(await reopened.openRounds()).toMatchObject([{ jobId: 'job-1', round: 0, sampled: round.sampled }]);
    expect([...(await reopened.acceptedClients('job-1', 0))].sort()).toEqual(['c-1', 'c-2']);
    expect(await reopened.hasUpdate('job-1', 0, 'c-2')).toBe(true);
    expect(await reopened.hasUpdate('job-1', 0, 'c-3')).toBe(false);
    expect(await reopened.hasUpdate('job-1', 1, 'c-1')).toBe(false);
    // a second update of the same client in the same round is refused by the store itself, and not counted
    await expect(reopened.addUpdate(update('c-1', frame))).rejects.toThrow();
    expect((await reopened.round('job-1', 0))?.accepted).toBe(2);
  });

  it('accepts no update into a closing round: the updates stored are exactly the ones acknowledged', async () => {
    const test = await tempStore();
    await test.store.addJob(job);
    const sampled = Array.from({ length: 40 }, (_, i) => ({ clientId: `c-${i}`, rank: 4, clusterId: 0 }));
    await test.store.addRound({ ...round, sampled });
    const frame = new Uint8Array(4096).fill(7);
    // updates racing the coordinator's closing (on PostgreSQL over several pooled connections at once):
    // 10 before it, 10 around it, 20 after it has returned
    const first = sampled.slice(0, 10).map((a) => test.store.addUpdate(update(a.clientId, frame)));
    const closed = Promise.all(first).then(() => test.store.beginClosing('job-1', 0));
    const racing = [
      ...first,
      ...sampled
        .slice(10, 20)
        .map((a, i) =>
          new Promise((r) => setTimeout(r, i % 7)).then(() => test.store.addUpdate(update(a.clientId, frame))),
        ),
      ...sampled.slice(20).map((a) => closed.then(() => test.store.addUpdate(update(a.clientId, frame)))),
    ];
    const results = await Promise.all(racing);
    expect(await closed).toBe(true);
    const acknowledged = results.flatMap((r) => (r ? [r.clientId] : []));
    expect(acknowledged.length).toBeGreaterThanOrEqual(10);
    expect(acknowledged.length).toBeLessThanOrEqual(20);
    expect([...(await test.store.acceptedClients('job-1', 0))].sort()).toEqual(acknowledged.sort());
    expect(await test.store.round('job-1', 0)).toMatchObject({ accepted: acknowledged.length, closing: true });
    expect(await test.store.addUpdate(update('c-39', frame))).toBeUndefined();
    // a closing round is still open (a coordinator that died while aggregating left it so)
    expect(await test.store.openRounds()).toMatchObject([{ round: 0, closing: true }]);
    expect(await test.store.beginClosing('job-1', 0)).toBe(true);
    expect(await test.store.beginClosing('job-1', 5)).toBe(false);
  });

  it('ends a round only if it is still open when asked to: of two servers ending it, one does', async () => {
    const test = await tempStore();
    await test.store.addJob(job);
    await test.store.addRound(round);
    const ending = (status: 'aggregated' | 'failed', jobStatus: 'running' | 'stopped') => ({
      expect: { round: 0, open: true },
      jobId: 'job-1',
      round: { index: 0, fields: { status, endedAt: new Date().toISOString() } },
      job: jobStatus === 'running' ? { currentRound: 1 } : { status: jobStatus },
    });
    const both = await Promise.all([
      test.store.endRound(ending('aggregated', 'running')),
      test.store.endRound(ending('failed', 'stopped')),
    ]);
    expect(both.filter(Boolean)).toHaveLength(1);
    const [job0, round0] = [await test.store.job('job-1'), await test.store.round('job-1', 0)];
    // whichever won, its round and job fields went together
    if (both[0]) expect([round0?.status, job0?.status, job0?.currentRound]).toEqual(['aggregated', 'running', 1]);
    else expect([round0?.status, job0?.status, job0?.currentRound]).toEqual(['failed', 'stopped', 0]);
    expect(await test.store.endRound(ending('failed', 'stopped'))).toBe(false);
  });

  it('starts a round only for a running job at that round, and stops a job only as it was read', async () => {
    const test = await tempStore();
    await test.store.addJob(job);
    const stop = { jobId: 'job-1', job: { status: 'stopped' as const }, expect: { round: 0, open: false } };
    expect(await test.store.addRound({ ...round, round: 1 })).toBe(false); // not the job's current round
    expect(await test.store.addRound(round)).toBe(true);
    expect(await test.store.addRound(round)).toBe(false); // already there
    // a stop that read "no round open" does not stop a job whose round started since
    expect(await test.store.endRound(stop)).toBe(false);
    expect((await test.store.job('job-1'))?.status).toBe('running');
    await test.store.updateRound('job-1', 0, { status: 'failed' });
    expect(await test.store.endRound(stop)).toBe(true);
    expect((await test.store.job('job-1'))?.status).toBe('stopped');
    // and no round starts on a stopped job
    expect(await test.store.addRound({ ...round, round: 0, status: 'open' })).toBe(false);
  });

  it('detects a stored update or adapter whose bytes no longer match their checksum', async () => {
    const test = await tempStore();
    await test.store.addJob(job);
    await test.store.addRound(round);
    await test.store.addUpdate(update('c-1', new Uint8Array(64)));
    await test.store.endRound({
      jobId: 'job-1',
      job: {},
      adapters: [{ jobId: 'job-1', clusterId: 0, round: 0, rank: 4, safetensors: new Uint8Array(128) }],
    });
    expect((await test.store.adapter('job-1', 0))?.safetensors).toEqual(new Uint8Array(128));
    await test.raw('UPDATE updates SET frame = $1', [Buffer.alloc(64, 1)]);
    await test.raw('UPDATE adapters SET safetensors = $1', [Buffer.alloc(128, 2)]);
    const reopened = await test.reopen();
    await expect(reopened.updates('job-1', 0)).rejects.toMatchObject({ code: 'checksum_mismatch' });
    await expect(reopened.adapter('job-1', 0)).rejects.toMatchObject({ code: 'checksum_mismatch' });
  });

  it('ends a round in one transaction: a failing part leaves the adapters and the job as they were', async () => {
    const test = await tempStore();
    await test.store.addJob(job);
    await test.store.addRound(round);
    const adapter = (clusterId: number) => ({
      jobId: 'job-1',
      clusterId,
      round: 0,
      rank: 4,
      safetensors: new Uint8Array(8),
    });
    await test.store.endRound({
      jobId: 'job-1',
      adapters: [adapter(0)],
      round: { index: 0, fields: { status: 'aggregated', endedAt: new Date().toISOString(), clusters: 1 } },
      job: { currentRound: 1 },
    });
    // an unknown round: the adapters written before it in the same ending are rolled back
    await expect(
      test.store.endRound({
        jobId: 'job-1',
        adapters: [adapter(1)],
        round: { index: 9, fields: { status: 'aggregated' } },
        job: { currentRound: 10, status: 'completed' },
      }),
    ).rejects.toMatchObject({ code: 'unknown_round' });
    expect((await test.store.adapters('job-1')).map((a) => a.clusterId)).toEqual([0]);
    expect(await test.store.job('job-1')).toMatchObject({ currentRound: 1, status: 'running' });
    expect(await test.store.round('job-1', 0)).toMatchObject({ status: 'aggregated', clusters: 1 });
  });

  it('changes only the fields it is given, and can set endedAt back to null', async () => {
    const test = await tempStore();
    await test.store.addJob(job);
    await test.store.addRound(round);
    const endedAt = new Date().toISOString();
    await test.store.updateRound('job-1', 0, { status: 'failed', endedAt, metrics: { loss: 2 } });
    await test.store.updateRound('job-1', 0, { deadline: 42 });
    expect(await test.store.round('job-1', 0)).toMatchObject({
      status: 'failed',
      endedAt,
      deadline: 42,
      metrics: { loss: 2 },
    });
    await test.store.updateRound('job-1', 0, { status: 'open', endedAt: null });
    expect(await test.store.round('job-1', 0)).toMatchObject({ status: 'open', endedAt: null, deadline: 42 });
    await expect(test.store.updateRound('job-1', 3, { deadline: 1 })).rejects.toMatchObject({ code: 'unknown_round' });
  });

  it('spends a one-time enrollment key once, even when two enrollments race for it', async () => {
    const test = await tempStore();
    const hash = sha256Hex(Buffer.from('ek-one'));
    await test.store.addEnrollmentKeys([hash, sha256Hex(Buffer.from('ek-old'))], Date.now() + 60_000);
    await test.store.addEnrollmentKeys([sha256Hex(Buffer.from('ek-expired'))], Date.now() - 1);
    const raced = await Promise.all(
      ['a', 'b', 'c', 'd'].map((id) => test.store.enrollWithKey(hash, `client-${id}`, PROFILE)),
    );
    expect(raced.filter(Boolean)).toHaveLength(1);
    expect(await test.store.enrollWithKey(sha256Hex(Buffer.from('ek-expired')), 'client-e', PROFILE)).toBe(false);
    expect(await test.store.enrollWithKey(sha256Hex(Buffer.from('ek-unknown')), 'client-f', PROFILE)).toBe(false);
    const clients = await test.store.clients();
    expect(clients).toHaveLength(1);
    expect(clients[0]).toMatchObject({ revokedAt: null, profile: PROFILE });
    const winner = clients[0]!.id;
    expect(await test.store.clientStatus(winner)).toBe('active');
    const revokedAt = await test.store.revokeClient(winner);
    expect(typeof revokedAt).toBe('string');
    expect(await test.store.revokeClient(winner)).toBe(revokedAt);
    expect(await test.store.clientStatus(winner)).toBe('revoked');
    expect(await test.store.revokeClient('nobody')).toBeUndefined();
    expect(await test.store.clientStatus('nobody')).toBeUndefined();
  });

  it('keeps the first value of a setting initialised by several servers at once', async () => {
    const test = await tempStore();
    const values = await Promise.all(['x', 'y', 'z'].map((v) => test.store.initMeta('credential_secret', v)));
    expect(new Set(values).size).toBe(1);
    expect(await test.store.meta('credential_secret')).toBe(values[0]);
    await test.store.setMeta('credential_secret', 'w');
    expect(await test.store.initMeta('credential_secret', 'v')).toBe('w');
  });

  it('knows who took part in a job: a client sampled in one of its rounds', async () => {
    const test = await tempStore();
    await test.store.addJob(job);
    await test.store.addRound(round);
    expect(await test.store.tookPart('job-1', 'c-2')).toBe(true);
    expect(await test.store.tookPart('job-1', 'c-3')).toBe(false);
    expect(await test.store.tookPart('job-2', 'c-1')).toBe(false);
  });
});

// what only a shared database has: the coordinator's lease (these tests run in the server-on-postgres project)
if (ENGINE === 'postgres') {
  describe('PostgresStore lease', () => {
    const leaseHolder = async (url: string): Promise<number[]> => {
      const client = new pg.Client({ connectionString: url });
      await client.connect();
      const { rows } = await client.query<{ pid: number }>(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
      );
      await client.end();
      return rows.map((r) => r.pid);
    };

    it('lets one server coordinate a database, and takes the lease back after its connection is cut', async () => {
      const adminUrl = inject('postgresAdminUrl');
      const database = await createScratchDatabase(adminUrl);
      cleanups.push(() => database.drop());
      const lost: string[] = [];
      const first = await PostgresStore.open(database.url, { onLeaseLost: () => lost.push('first') });
      cleanups.push(() => first.close());
      await expect(PostgresStore.open(database.url, { leaseWaitMs: 300 })).rejects.toMatchObject({
        code: 'database_in_use',
      });
      // the database drops the lease's connection: the first server takes the lease again by itself
      const [holder] = await leaseHolder(database.url);
      const admin = new pg.Client({ connectionString: database.url });
      await admin.connect();
      await admin.query('SELECT pg_terminate_backend($1)', [holder]);
      await expect.poll(() => leaseHolder(database.url), { timeout: 5000 }).toHaveLength(1);
      expect(await leaseHolder(database.url)).not.toContain(holder);
      await expect(PostgresStore.open(database.url, { leaseWaitMs: 300 })).rejects.toMatchObject({
        code: 'database_in_use',
      });
      expect(lost).toEqual([]);
      // cut again, and another server is quicker: the first learns that it lost the lease
      const [again] = await leaseHolder(database.url);
      await admin.query('SELECT pg_terminate_backend($1)', [again]);
      const second = await PostgresStore.open(database.url, { leaseWaitMs: 5000 });
      cleanups.push(() => second.close());
      await admin.end();
      await expect.poll(() => lost, { timeout: 5000 }).toEqual(['first']);
      // and a closed server frees the lease at once
      await second.close();
      const third = await PostgresStore.open(database.url, { leaseWaitMs: 0 });
      await third.close();
    });
  });
}

describe('configFromEnv', () => {
  it('reads FLOE_* variables and refuses non-numbers where numbers go', () => {
    const config = configFromEnv({
      FLOE_PORT: '9000',
      FLOE_JOIN_TOKEN: 'j',
      FLOE_DATA_DIR: '/var/floe',
      FLOE_DATABASE_URL: 'postgres://floe@db/floe',
    });
    expect(config).toMatchObject({
      port: 9000,
      joinToken: 'j',
      dataDir: '/var/floe',
      databaseUrl: 'postgres://floe@db/floe',
      host: '127.0.0.1',
    });
    expect(() => configFromEnv({ FLOE_PORT: 'eighty' })).toThrow(/FLOE_PORT must be a non-negative number/);
  });
});
