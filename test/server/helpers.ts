import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { MODEL_PRESETS, architectureOf } from '@floe/model';
import { request } from '@floe/edge-client';
import { inject } from 'vitest';
import { type FloeServer, type ServerConfig, startServer } from '@floe/server';
import type { JobSpec, JobSummary } from '@floe/shared';
import { type SyntheticDevice, type SyntheticDeviceOptions, startSyntheticDevice } from '@floe/simulator';
import { createScratchDatabase } from '../../scripts/lib/local-postgres.js';

export const JOIN_TOKEN = 'join-token-for-tests';
export const ADMIN_TOKEN = 'admin-token-for-tests';
export const EDGE_SMALL = architectureOf(MODEL_PRESETS['edge-small']);

export function jobSpec(overrides: Partial<JobSpec> = {}): JobSpec {
  return {
    name: 'test',
    baseModel: { id: 'edge-small', sha256: 'b'.repeat(64), architecture: EDGE_SMALL },
    targetModules: ['q_proj', 'v_proj'],
    strategy: 'flexlora',
    clustering: false,
    rounds: 3,
    clientsPerRound: 10,
    quorum: 10,
    roundDeadlineSec: 30,
    localSteps: 10,
    learningRate: 1e-3,
    batchSize: 8,
    maxRank: 8,
    alpha: 16,
    ...overrides,
  };
}

export interface TestServer {
  server: FloeServer;
  url: string;
  admin<T>(method: 'GET' | 'POST', route: string, body?: unknown): Promise<{ status: number; body: T }>;
  close(): Promise<void>;
}

/** Admin REST calls against the server at `url`. */
export function adminClient(url: string): TestServer['admin'] {
  return async <T>(method: 'GET' | 'POST', route: string, body?: unknown) => {
    // through the edge client's request: it honours a trusted certificate authority (the TLS test)
    const response = await request(url, route, {
      method,
      headers: {
        authorization: `Bearer ${ADMIN_TOKEN}`,
        ...(body === undefined ? {} : { 'content-type': 'application/json' }),
      },
      ...(body === undefined ? {} : { body: JSON.stringify(body) }),
    });
    return { status: response.status, body: (await response.json()) as T };
  };
}

/** The engine this run of the server suite keeps the server's state in (the vitest project decides). */
export const STORE_ENGINE: 'sqlite' | 'postgres' = inject('postgresAdminUrl') ? 'postgres' : 'sqlite';

export interface TestStore {
  /** The server settings that select it. */
  config: Pick<ServerConfig, 'dataDir' | 'databaseUrl'>;
  /** The same as FLOE_* variables, for a server process. */
  env: Record<string, string>;
  dispose(): Promise<void>;
}

/** A fresh store: a temporary SQLite directory, or a scratch database on the run's PostgreSQL server. */
export async function testStore(): Promise<TestStore> {
  const dataDir = await mkdtemp(path.join(os.tmpdir(), 'floe-server-'));
  const adminUrl = inject('postgresAdminUrl');
  const database = adminUrl ? await createScratchDatabase(adminUrl) : undefined;
  return {
    config: { dataDir, databaseUrl: database?.url ?? '' },
    env: { FLOE_DATA_DIR: dataDir, FLOE_DATABASE_URL: database?.url ?? '' },
    async dispose() {
      await database?.drop();
      await rm(dataDir, { recursive: true, force: true });
    },
  };
}

export async function startTestServer(overrides: Partial<ServerConfig> = {}): Promise<TestServer> {
  const store = await testStore();
  const server = await startServer({
    host: '127.0.0.1',
    port: 0,
    ...store.config,
    joinToken: JOIN_TOKEN,
    adminToken: ADMIN_TOKEN,
    gatherMs: 10_000,
    logLevel: 'error',
    rateLimitMessages: 1000,
    httpRateLimitPerMinute: 100_000,
    ...overrides,
  });
  return {
    server,
    url: server.url,
    admin: adminClient(server.url),
    async close() {
      await server.close();
      await store.dispose();
    },
  };
}

export async function startDevices(
  url: string,
  count: number,
  options: (i: number) => Omit<SyntheticDeviceOptions, 'serverUrl' | 'joinToken'>,
): Promise<SyntheticDevice[]> {
  const devices: SyntheticDevice[] = [];
  // a few at a time: enrollment and the socket.io handshake are cheap, but not free
  for (let i = 0; i < count; i += 10) {
    const batch = Array.from({ length: Math.min(10, count - i) }, (_, k) =>
      startSyntheticDevice({ serverUrl: url, joinToken: JOIN_TOKEN, ...options(i + k) }),
    );
    devices.push(...(await Promise.all(batch)));
  }
  return devices;
}

/** Polls the job until `done` holds (default: not running). */
export async function waitForJob(
  test: TestServer,
  jobId: string,
  done: (job: JobSummary) => boolean = (job) => job.status !== 'running',
  timeoutMs = 60_000,
): Promise<JobSummary> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const { body } = await test.admin<JobSummary>('GET', `/v1/jobs/${jobId}`);
    if (done(body)) return body;
    if (Date.now() > until) throw new Error(`job ${jobId} did not finish: ${JSON.stringify(body.rounds)}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}
