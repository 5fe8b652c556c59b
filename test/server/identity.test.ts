/** The identity lifecycle: revocation, credential expiry on open connections, refresh, join token rotation, one-time keys. */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import {
  type ConnectionError,
  DeviceStore,
  FederationClient,
  ServerConnection,
  enroll,
  ensureIdentity,
  refreshCredential,
} from '@floe/edge-client';
import { type ErrorMessage, type JobSummary, toWireAdapter } from '@floe/shared';
import { DEFAULT_PROFILE, sampleAdapter } from '@floe/simulator';
import { JOIN_TOKEN, type TestServer, jobSpec, startTestServer, waitForJob } from './helpers.js';

const PLAN = { rank: 4, targetModules: ['q_proj', 'v_proj'] };

function closedWith(connection: ServerConnection): Promise<{ code: string; ms: number }> {
  const started = Date.now();
  return new Promise((resolve) => {
    let code = '';
    connection.on('server_error', (error: ErrorMessage) => (code = error.code));
    connection.once('disconnect', () => resolve({ code, ms: Date.now() - started }));
  });
}

const me = (url: string, credential: string) =>
  fetch(`${url}/v1/me`, { headers: { authorization: `Bearer ${credential}` } }).then(async (r) => ({
    status: r.status,
    body: (await r.json()) as { code?: string; clientId?: string },
  }));

describe('identity lifecycle', () => {
  let test: TestServer;

  beforeAll(async () => {
    test = await startTestServer();
  });

  afterAll(async () => {
    await test.close();
  });

  it('revokes a client: its connection closes at once and its credential is refused everywhere', async () => {
    const { clientId, credential } = await enroll(test.url, JOIN_TOKEN, DEFAULT_PROFILE);
    const connection = await ServerConnection.open(test.url, credential, { profile: DEFAULT_PROFILE, plan: PLAN });
    const closed = closedWith(connection);
    const revoked = await test.admin<{ id: string; revokedAt: string }>('POST', `/v1/clients/${clientId}/revoke`);
    expect(revoked.status).toBe(200);
    const { code, ms } = await closed;
    expect(code).toBe('revoked');
    expect(ms).toBeLessThan(1000);
    expect(await me(test.url, credential)).toMatchObject({ status: 401, body: { code: 'revoked' } });
    const again = await ServerConnection.open(test.url, credential, { profile: DEFAULT_PROFILE }).catch(
      (error: ConnectionError) => error.code,
    );
    expect(again).toBe('revoked');
    const refresh = await fetch(`${test.url}/v1/credentials/refresh`, {
      method: 'POST',
      headers: { authorization: `Bearer ${credential}` },
    });
    expect(refresh.status).toBe(401);
    const clients = await test.admin<{ id: string; revokedAt: string | null }[]>('GET', '/v1/clients');
    expect(clients.body.find((c) => c.id === clientId)?.revokedAt).toBe(revoked.body.revokedAt);
    expect((await test.admin('POST', '/v1/clients/c-nobody/revoke')).status).toBe(404);
    connection.close();
  });

  it('refreshes a valid credential, and rotates the join token', async () => {
    const { clientId, credential } = await enroll(test.url, JOIN_TOKEN, DEFAULT_PROFILE);
    const refreshed = (await (
      await fetch(`${test.url}/v1/credentials/refresh`, {
        method: 'POST',
        headers: { authorization: `Bearer ${credential}` },
      })
    ).json()) as { credential: string; clientId: string };
    expect(refreshed.clientId).toBe(clientId);
    expect(await me(test.url, refreshed.credential)).toMatchObject({ status: 200, body: { clientId } });

    const rotated = await test.admin<{ joinToken: string }>('POST', '/v1/join-token', {});
    expect(rotated.body.joinToken).toMatch(/^[0-9a-f]{48}$/);
    const old = await enroll(test.url, JOIN_TOKEN, DEFAULT_PROFILE).catch((error: ConnectionError) => error.code);
    expect(old).toBe('bad_join_token');
    expect((await enroll(test.url, rotated.body.joinToken, DEFAULT_PROFILE)).clientId).toMatch(/^c-/);
    await test.admin('POST', '/v1/join-token', { joinToken: JOIN_TOKEN });
  });

  it('enrolls one device per one-time key, once, before it expires', async () => {
    const issued = await test.admin<{ keys: string[] }>('POST', '/v1/enrollment-keys', { count: 2 });
    const [first, second] = issued.body.keys as [string, string];
    expect((await enroll(test.url, first, DEFAULT_PROFILE)).clientId).toMatch(/^c-/);
    expect(await enroll(test.url, first, DEFAULT_PROFILE).catch((error: ConnectionError) => error.code)).toBe(
      'bad_join_token',
    );
    expect((await enroll(test.url, second, DEFAULT_PROFILE)).clientId).toMatch(/^c-/);
    const short = await test.admin<{ keys: string[] }>('POST', '/v1/enrollment-keys', { count: 1, ttlSec: 1 });
    await new Promise((resolve) => setTimeout(resolve, 1100));
    expect(
      await enroll(test.url, short.body.keys[0] as string, DEFAULT_PROFILE).catch(
        (error: ConnectionError) => error.code,
      ),
    ).toBe('bad_join_token');
    expect((await test.admin('POST', '/v1/enrollment-keys', { count: 0 })).status).toBe(400);
  });
});

describe('a credential that expires while connected', () => {
  it('ends the connection when it expires', async () => {
    const test = await startTestServer({ credentialTtlSec: 2 });
    try {
      const { credential } = await enroll(test.url, JOIN_TOKEN, DEFAULT_PROFILE);
      const connection = await ServerConnection.open(test.url, credential, { profile: DEFAULT_PROFILE, plan: PLAN });
      const { code, ms } = await closedWith(connection);
      expect(code).toBe('credential_expired');
      expect(ms).toBeLessThan(3000);
      connection.close();
      // a device that starts with a credential past half its life trades it for a fresh one
      const home = await mkdtemp(path.join(os.tmpdir(), 'floe-identity-'));
      try {
        const store = new DeviceStore(home);
        const first = await ensureIdentity(store, test.url, JOIN_TOKEN, DEFAULT_PROFILE);
        expect(first.enrolled).toBe(true);
        await new Promise((resolve) => setTimeout(resolve, 1200));
        const second = await ensureIdentity(store, test.url, JOIN_TOKEN, DEFAULT_PROFILE);
        expect([second.enrolled, second.clientId, second.credential === first.credential]).toEqual([
          false,
          first.clientId,
          false,
        ]);
        expect(store.identity(test.url)?.credential).toBe(second.credential);
      } finally {
        await rm(home, { recursive: true, force: true });
      }
    } finally {
      await test.close();
    }
  });
});

describe('a link ended at expiry', () => {
  it('reopens when a fresh credential arrives after the cut', async () => {
    const test = await startTestServer({ credentialTtlSec: 4 });
    try {
      const { credential } = await enroll(test.url, JOIN_TOKEN, DEFAULT_PROFILE);
      const connection = await ServerConnection.open(test.url, credential, { profile: DEFAULT_PROFILE, plan: PLAN });
      // issued two seconds later (iat is in whole seconds), so it outlives the first by as much
      await new Promise((resolve) => setTimeout(resolve, 2100));
      const fresh = await refreshCredential(test.url, credential);
      expect((await closedWith(connection)).code).toBe('credential_expired');
      const reopened = new Promise<void>((resolve) => connection.once('reconnect', () => resolve()));
      connection.useCredential(fresh);
      await reopened;
      expect(connection.connected).toBe(true);
      connection.close();
    } finally {
      await test.close();
    }
  }, 30_000);
});

describe('a long-lived device with short-lived credentials', () => {
  it('refreshes at half-life, reopens its link when the old credential expires, and keeps taking rounds', async () => {
    // an even lifetime: with iat in whole seconds, each credential's half-life falls on its predecessor's
    // expiry, so the refresh and the server's cut race on every cycle
    const test = await startTestServer({ credentialTtlSec: 2 });
    const home = await mkdtemp(path.join(os.tmpdir(), 'floe-identity-'));
    const store = new DeviceStore(home);
    const client = new FederationClient({
      serverUrl: test.url,
      joinToken: JOIN_TOKEN,
      store,
      profile: DEFAULT_PROFILE,
      plan: PLAN,
      maxReconnectDelayMs: 500,
      participant: {
        onRound: (start) =>
          Promise.resolve({
            jobId: start.jobId,
            round: start.round,
            numSamples: 10,
            plan: { ...PLAN, rank: start.config.rank },
            adapter: toWireAdapter(sampleAdapter(start, undefined, { seed: 1, scale: 0.05, noise: 0.5 }, 0)),
            metrics: { loss: 1 },
          }),
      },
    });
    const errors: string[] = [];
    let reconnects = 0;
    client.on('server_error', (error) => errors.push(error.code));
    client.on('reconnect', () => reconnects++);
    try {
      await client.start();
      const first = store.identity(test.url)!.credential;
      // three lifetimes of the first credential
      await new Promise((resolve) => setTimeout(resolve, 6500));
      expect(store.identity(test.url)!.credential).not.toBe(first);
      expect(errors.length).toBeGreaterThanOrEqual(2);
      expect(new Set(errors)).toEqual(new Set(['credential_expired']));
      expect(reconnects).toBeGreaterThanOrEqual(2);
      expect(await me(test.url, store.identity(test.url)!.credential)).toMatchObject({ status: 200 });

      const created = await test.admin<JobSummary>(
        'POST',
        '/v1/jobs',
        jobSpec({ rounds: 1, clientsPerRound: 1, quorum: 1, roundDeadlineSec: 20 }),
      );
      const job = await waitForJob(test, created.body.id);
      expect(job.rounds.map((r) => [r.status, r.accepted])).toEqual([['aggregated', 1]]);
    } finally {
      await client.stop();
      await test.close();
      await rm(home, { recursive: true, force: true });
    }
  });
});
