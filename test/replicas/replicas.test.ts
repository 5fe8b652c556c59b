/**
 * Two server processes (main.ts, as deployed) over one PostgreSQL database and one Redis, behind one
 * address (a least-connections TCP balancer): devices are split across them, one replica coordinates,
 * and when it is SIGKILLed mid-round the other takes over and finishes the job.
 */
import pg from 'pg';
import { afterEach, describe, expect, inject, it } from 'vitest';
import { ServerConnection, enroll } from '@floe/edge-client';
import { type ServerProcess, spawnServerProcess } from '@floe/server';
import type { ErrorMessage, JobSummary } from '@floe/shared';
import { DEFAULT_PROFILE } from '@floe/simulator';
import { startLocalNginx } from '../../scripts/lib/local-nginx.js';
import { startLocalRedis } from '../../scripts/lib/local-redis.js';
import { type TcpBalancer, startTcpBalancer } from '../../scripts/lib/tcp-balancer.js';
import {
  ADMIN_TOKEN,
  JOIN_TOKEN,
  type TestServer,
  type TestStore,
  adminClient,
  jobSpec,
  startDevices,
  testStore,
  waitForJob,
} from '../server/helpers.js';

const PLAN = { rank: 4, targetModules: ['q_proj', 'v_proj'] };
/** How long a killed coordinator's lease can outlive it: PostgreSQL frees it when the session ends, the poll is 1 s. */
const LEASE_MS = 5000;

interface Replica extends ServerProcess {
  test: TestServer;
}

const cleanups: (() => unknown)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

async function startReplica(store: TestStore, env: Record<string, string> = {}): Promise<Replica> {
  const replica = await spawnServerProcess({
    FLOE_HOST: '127.0.0.1',
    FLOE_PORT: '0',
    ...store.env,
    FLOE_REDIS_URL: inject('redisUrl'),
    FLOE_JOIN_TOKEN: JOIN_TOKEN,
    FLOE_ADMIN_TOKEN: ADMIN_TOKEN,
    FLOE_RATE_LIMIT_MESSAGES: '1000',
    FLOE_HTTP_RATE_LIMIT_PER_MINUTE: '100000',
    FLOE_GATHER_MS: '1000',
    FLOE_CREDENTIAL_SECRET: '',
    ...env,
  });
  cleanups.push(() => replica.child.kill('SIGKILL'));
  return { ...replica, test: { url: replica.url, admin: adminClient(replica.url) } as TestServer };
}

interface Health {
  connectedClients: number;
  coordinating: boolean;
}
const health = async (replica: Replica) => (await (await fetch(`${replica.url}/healthz`)).json()) as Health;

async function until<T>(what: string, probe: () => Promise<T | undefined>, timeoutMs = 30_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe().catch(() => undefined);
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

const hostPort = (url: string) => new URL(url).host;

describe('two replicas over PostgreSQL and Redis', () => {
  it('run a job whose devices are split across them; the coordinator is killed mid-round and nothing accepted is lost', async () => {
    const store = await testStore();
    cleanups.push(() => store.dispose());
    const first = await startReplica(store);
    const second = await startReplica(store);
    await until('the first replica to coordinate', async () => ((await health(first)).coordinating ? true : undefined));
    expect((await health(second)).coordinating).toBe(false);
    const balancer: TcpBalancer = await startTcpBalancer([hostPort(first.url), hostPort(second.url)]);
    cleanups.push(() => balancer.close());

    // half the devices take their time in round 1, so that the coordinator dies with the round half in
    const devices = await startDevices(balancer.url, 10, (i) => ({
      plan: PLAN,
      distribution: { seed: 3, scale: 0.05, noise: 0.5 },
      clientSeed: i,
      answerDelayMs: (start) => (start.round === 1 && i % 2 === 1 ? 4000 : 0),
    }));
    cleanups.push(() => devices.forEach((d) => d.stop()));
    const split = [(await health(first)).connectedClients, (await health(second)).connectedClients];
    expect(split[0]! + split[1]!).toBe(10);
    expect(Math.min(...split)).toBeGreaterThanOrEqual(3);

    // the job is created through the replica that does not coordinate
    const spec = jobSpec({ strategy: 'fedavg', rounds: 4, clientsPerRound: 10, quorum: 5, roundDeadlineSec: 25 });
    const created = await second.test.admin<JobSummary>('POST', '/v1/jobs', spec);
    expect(created.status).toBe(201);
    const jobId = created.body.id;

    const roundOneHalfIn = await until(
      'round 1 to be half in',
      async () => {
        const { body } = await second.test.admin<JobSummary>('GET', `/v1/jobs/${jobId}`);
        const round = body.rounds.find((r) => r.round === 1);
        return round && round.status === 'open' && round.accepted >= 5 ? round : undefined;
      },
      60_000,
    );
    expect(roundOneHalfIn.accepted).toBeLessThan(10);
    first.child.kill('SIGKILL');
    const killedAt = Date.now();
    balancer.setBackends([hostPort(second.url)]);

    await until('the second replica to take over', async () =>
      (await health(second)).coordinating ? true : undefined,
    );
    expect(Date.now() - killedAt).toBeLessThan(LEASE_MS);
    const job = await waitForJob(second.test, jobId, undefined, 120_000);
    expect(job.status).toBe('completed');
    expect(job.rounds.map((r) => r.status)).toEqual(['aggregated', 'aggregated', 'aggregated', 'aggregated']);
    const roundOne = job.rounds[1]!;
    expect(Date.parse(roundOne.endedAt!)).toBeLessThanOrEqual(
      Date.parse(roundOne.startedAt) + spec.roundDeadlineSec * 1000 + LEASE_MS,
    );

    // every acknowledged update is in the database and was aggregated into its round
    const db = new pg.Client({ connectionString: store.config.databaseUrl });
    await db.connect();
    cleanups.push(() => db.end());
    for (const round of job.rounds) {
      const acked = devices
        .filter((d) => d.acks.some((a) => a.type === 'update_ack' && a.accepted && a.round === round.round))
        .map((d) => d.clientId);
      const { rows } = await db.query<{ client_id: string }>(
        'SELECT client_id FROM updates WHERE job_id = $1 AND round = $2',
        [jobId, round.round],
      );
      const stored = rows.map((r) => r.client_id);
      expect(stored).toEqual(expect.arrayContaining(acked));
      expect(round.accepted).toBe(stored.length);
      expect(round.metrics['samples']).toBe(100 * stored.length);
    }
    // every device took part in every round: those of the coordinator's peer got their round_start through
    // Redis, those of the dead replica reconnected to the other (and were sent round 1's start again)
    expect(job.rounds.map((r) => r.accepted)).toEqual([10, 10, 10, 10]);
    expect(devices.every((d) => d.rounds.some((r) => r.round === 3))).toBe(true);
  });

  it('hold revocation, one connection per client and the message rate limit across replicas', async () => {
    const store = await testStore();
    cleanups.push(() => store.dispose());
    const env = { FLOE_RATE_LIMIT_MESSAGES: '5', FLOE_RATE_WINDOW_SEC: '60' };
    const [first, second] = [await startReplica(store, env), await startReplica(store, env)];
    const { clientId, credential } = await enroll(first.url, JOIN_TOKEN, DEFAULT_PROFILE);
    const open = async (replica: Replica) => {
      const connection = await ServerConnection.open(replica.url, credential, {
        profile: DEFAULT_PROFILE,
        plan: PLAN,
        reconnect: false,
      });
      cleanups.push(() => connection.close());
      const errors: ErrorMessage[] = [];
      connection.on('server_error', (error) => errors.push(error));
      return { connection, errors };
    };
    const probe = (connection: ServerConnection) => connection.sendFrame('probe', new Uint8Array(1), 'none', 0);

    // hello, then two probes on the first replica; hello and one probe on the second fill the window of 5
    const onFirst = await open(first);
    expect(await probe(onFirst.connection)).toMatchObject({ code: 'unknown_event' });
    expect(await probe(onFirst.connection)).toMatchObject({ code: 'unknown_event' });
    const onSecond = await open(second);
    await until('the first connection to be replaced', () =>
      Promise.resolve(onFirst.errors.some((e) => e.code === 'replaced') ? true : undefined),
    );
    expect(await probe(onSecond.connection)).toMatchObject({ code: 'unknown_event' });
    expect(await probe(onSecond.connection)).toMatchObject({ code: 'rate_limited' });
    expect((await health(first)).connectedClients).toBe(0);

    // revoked through the first replica, its connection on the second ends
    const revoked = await first.test.admin('POST', `/v1/clients/${clientId}/revoke`);
    expect(revoked.status).toBe(200);
    await until('the connection on the other replica to end', async () =>
      onSecond.errors.some((e) => e.code === 'revoked') && (await health(second)).connectedClients === 0
        ? true
        : undefined,
    );
  });

  it('stay up through a Redis outage, answering devices and admins, and federate across replicas once it is back', async () => {
    const store = await testStore();
    cleanups.push(() => store.dispose());
    let redis = await startLocalRedis();
    cleanups.push(() => redis.stop());
    const env = { FLOE_REDIS_URL: redis.url };
    const [first, second] = [await startReplica(store, env), await startReplica(store, env)];
    const exits: string[] = [];
    for (const [name, replica] of [
      ['first', first],
      ['second', second],
    ] as const)
      replica.child.once('exit', (code, signal) => exits.push(`${name} exited ${code ?? signal}`));
    await until('a replica to coordinate', async () =>
      (await health(first)).coordinating || (await health(second)).coordinating ? true : undefined,
    );
    const devices = [
      ...(await startDevices(first.url, 3, (i) => ({
        plan: PLAN,
        distribution: { seed: 3, scale: 0.05, noise: 0.5 },
        clientSeed: i,
      }))),
      ...(await startDevices(second.url, 3, (i) => ({
        plan: PLAN,
        distribution: { seed: 3, scale: 0.05, noise: 0.5 },
        clientSeed: 3 + i,
      }))),
    ];
    cleanups.push(() => devices.forEach((d) => d.stop()));

    await redis.stop();
    // what reaches a replica while Redis is gone: health checks, a job created (an event for the other
    // replica), device messages (the shared rate limiter), presence asks; then the retries of 10 s
    const { clientId, credential } = await enroll(second.url, JOIN_TOKEN, DEFAULT_PROFILE);
    const connection = await ServerConnection.open(second.url, credential, {
      profile: DEFAULT_PROFILE,
      plan: PLAN,
      reconnect: false,
    });
    cleanups.push(() => connection.close());
    expect(clientId).toBeTruthy();
    expect(await connection.sendFrame('probe', new Uint8Array(1), 'none', 0)).toMatchObject({ code: 'unknown_event' });
    const during = await second.test.admin<JobSummary>(
      'POST',
      '/v1/jobs',
      jobSpec({ strategy: 'fedavg', rounds: 1, clientsPerRound: 6, quorum: 1, roundDeadlineSec: 10 }),
    );
    expect(during.status).toBe(201);
    const outageEnds = Date.now() + 10_000;
    while (Date.now() < outageEnds) {
      for (const replica of [first, second]) expect((await fetch(`${replica.url}/healthz`)).status).toBe(200);
      await new Promise((resolve) => setTimeout(resolve, 500));
    }
    connection.close();
    expect(exits).toEqual([]);

    redis = await startLocalRedis(redis.port);
    // the job started in the outage ends (its round may miss devices whose start was lost)
    await waitForJob(second.test, during.body.id, undefined, 60_000);
    const after = await second.test.admin<JobSummary>(
      'POST',
      '/v1/jobs',
      jobSpec({ strategy: 'fedavg', rounds: 2, clientsPerRound: 6, quorum: 6, roundDeadlineSec: 30 }),
    );
    const job = await waitForJob(second.test, after.body.id, undefined, 90_000);
    expect(job.status).toBe('completed');
    expect(job.rounds.map((r) => r.accepted)).toEqual([6, 6]);
    expect(exits).toEqual([]);
  }, 180_000);

  it('count the HTTP rate limit over both replicas, and in each one alone while Redis is down', async () => {
    const store = await testStore();
    cleanups.push(() => store.dispose());
    const redis = await startLocalRedis();
    cleanups.push(() => redis.stop());
    const env = { FLOE_REDIS_URL: redis.url, FLOE_HTTP_RATE_LIMIT_PER_MINUTE: '6' };
    const [first, second] = [await startReplica(store, env), await startReplica(store, env)];
    const status = async (replica: Replica) => (await fetch(`${replica.url}/healthz`)).status;
    // six requests spread over both replicas fill the minute; the seventh is refused wherever it goes
    const spread = [];
    for (let i = 0; i < 6; i++) spread.push(await status(i % 2 === 0 ? first : second));
    expect(spread).toEqual([200, 200, 200, 200, 200, 200]);
    expect(await status(first)).toBe(429);
    expect(await status(second)).toBe(429);
    // enrollment has its own quarter of the limit (2): one on each replica, then refused on either
    expect((await enroll(first.url, JOIN_TOKEN, DEFAULT_PROFILE)).clientId).toBeTruthy();
    expect((await enroll(second.url, JOIN_TOKEN, DEFAULT_PROFILE)).clientId).toBeTruthy();
    await expect(enroll(first.url, JOIN_TOKEN, DEFAULT_PROFILE)).rejects.toThrow(/Rate limit exceeded/);

    // a Redis that stops answering but keeps its connections (a network cut): its commands time out and
    // each replica counts alone in memory, six more each, then refused
    redis.pause();
    for (const replica of [first, second]) {
      const answers = [];
      for (let i = 0; i < 7; i++) answers.push(await status(replica));
      expect(answers).toEqual([200, 200, 200, 200, 200, 200, 429]);
    }
    redis.resume();
    await redis.stop();
    // a Redis gone (connections closed): the same, at once
    const third = await startReplica(store, env).catch(() => undefined);
    expect(third).toBeUndefined(); // a replica cannot start without its Redis
    for (const replica of [first, second]) expect(await status(replica)).toBe(429);
  }, 180_000);

  it("serve devices through the deployment's load balancer (docker/nginx-replicas.conf)", async () => {
    const store = await testStore();
    cleanups.push(() => store.dispose());
    const [first, second] = [await startReplica(store), await startReplica(store)];
    const nginx = await startLocalNginx([hostPort(first.url), hostPort(second.url)]);
    cleanups.push(() => nginx.stop());
    const devices = await startDevices(nginx.url, 6, (i) => ({
      plan: PLAN,
      distribution: { seed: 4, scale: 0.05, noise: 0.5 },
      clientSeed: i,
    }));
    cleanups.push(() => devices.forEach((d) => d.stop()));
    // websockets went through it to both replicas
    const split = [(await health(first)).connectedClients, (await health(second)).connectedClients];
    expect(split[0]! + split[1]!).toBe(6);
    expect(Math.min(...split)).toBeGreaterThanOrEqual(2);
    const test = { url: nginx.url, admin: adminClient(nginx.url) } as TestServer;
    const spec = jobSpec({ strategy: 'fedavg', rounds: 2, clientsPerRound: 6, quorum: 6 });
    const created = await test.admin<JobSummary>('POST', '/v1/jobs', spec);
    expect(created.status).toBe(201);
    const job = await waitForJob(test, created.body.id, undefined, 60_000);
    expect(job.rounds.map((r) => [r.status, r.accepted])).toEqual([
      ['aggregated', 6],
      ['aggregated', 6],
    ]);
  });
});
