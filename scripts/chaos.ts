/**
 * pnpm chaos: a federated job of many rounds on server replicas while things die. Two (or more)
 * server processes over a throwaway PostgreSQL and Redis, behind a least-connections TCP balancer;
 * each round a share of the devices is killed mid-round (its connection cut before it answers; it comes
 * back a moment later with the same credential, as a restarted device does), and every few rounds a
 * replica is SIGKILLed (the coordinating one and the other in turn), then restarted. At the end every
 * acknowledged update is looked up in the database and in its round's aggregate: the report counts
 * those missing. Exit status 1 when one is missing or the job does not complete in time.
 */
import { writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import pg from 'pg';
import { ServerConnection, enroll } from '@floe/edge-client';
import { type ServerProcess, spawnServerProcess } from '@floe/server';
import { type JobSpec, type JobSummary, type RoundStart, toWireAdapter } from '@floe/shared';
import { DEFAULT_PROFILE, sampleAdapter } from '@floe/simulator';
import { MODEL_PRESETS, architectureOf } from '@floe/model';
import { machine } from './lib/bench-report.js';
import { createScratchDatabase, startLocalPostgres } from './lib/local-postgres.js';
import { startLocalRedis } from './lib/local-redis.js';
import { startTcpBalancer } from './lib/tcp-balancer.js';

const USAGE = `usage: pnpm chaos [--rounds N] [--devices N] [--replicas N] [--kill-share X] [--replica-every N]
                  [--deadline-sec S] [--timeout-sec S] [--seed N] [--json FILE]

A job of --rounds (30) rounds over --replicas (2) server processes on PostgreSQL and Redis, with
--devices (20) devices: each round --kill-share (0.2) of them is killed mid-round and comes back, and
every --replica-every (5) rounds a replica is SIGKILLed and restarted. Needs Debian's postgresql and
redis-server. Prints a line per round; writes the report to --json FILE if given. Exits 1 if an
acknowledged update is missing from the database or from its round's aggregate, or the job does not
complete within --timeout-sec (900).`;

const JOIN = 'chaos-join-token';
const ADMIN = 'chaos-admin-token';
const PLAN = { rank: 4, targetModules: ['q_proj', 'v_proj'] };
const SAMPLES = 100;

function fail(message: string): never {
  console.error(`pnpm chaos: ${message}\n\n${USAGE}`);
  process.exit(2);
}

function options() {
  let values;
  try {
    ({ values } = parseArgs({
      options: {
        rounds: { type: 'string', default: '30' },
        devices: { type: 'string', default: '20' },
        replicas: { type: 'string', default: '2' },
        'kill-share': { type: 'string', default: '0.2' },
        'replica-every': { type: 'string', default: '5' },
        'deadline-sec': { type: 'string', default: '15' },
        'timeout-sec': { type: 'string', default: '900' },
        seed: { type: 'string', default: '1' },
        json: { type: 'string' },
        help: { type: 'boolean', short: 'h' },
      },
    }));
  } catch (error) {
    fail(error instanceof Error ? error.message : String(error));
  }
  if (values.help) {
    console.log(USAGE);
    process.exit(0);
  }
  const number = (name: keyof typeof values, min: number, max: number, integer = true): number => {
    const value = Number(values[name]);
    if (!Number.isFinite(value) || value < min || value > max || (integer && !Number.isInteger(value))) {
      fail(
        `--${name} must be ${integer ? 'an integer' : 'a number'} in [${min}, ${max}], got "${String(values[name])}"`,
      );
    }
    return value;
  };
  return {
    rounds: number('rounds', 1, 1000),
    devices: number('devices', 2, 500),
    replicas: number('replicas', 2, 8),
    killShare: number('kill-share', 0, 0.5, false),
    replicaEvery: number('replica-every', 1, 1000),
    deadlineSec: number('deadline-sec', 2, 600, false),
    timeoutSec: number('timeout-sec', 10, 24 * 3600),
    seed: number('seed', 0, 2 ** 31),
    json: values.json,
  };
}

/** A small deterministic generator, so a seed replays the same kills. */
function random(seed: number): () => number {
  let state = seed >>> 0 || 1;
  return () => {
    state ^= state << 13;
    state ^= state >>> 17;
    state ^= state << 5;
    return (state >>> 0) / 2 ** 32;
  };
}

interface Device {
  index: number;
  clientId: string;
  credential: string;
  connection: ServerConnection | undefined;
  /** Rounds whose update this device saw acknowledged. */
  acked: Set<number>;
  /** Rounds in which it was killed (once each). */
  diedIn: Set<number>;
}

interface Replica {
  name: string;
  process: ServerProcess;
}

interface RoundLine {
  round: number;
  status: string;
  accepted: number;
  sampled: number;
  devicesKilled: number;
  replicaKilled?: string;
  seconds: number;
}

async function main(): Promise<void> {
  const opts = options();
  const rng = random(opts.seed);
  const started = performance.now();
  const postgres = await startLocalPostgres();
  const redis = await startLocalRedis();
  const database = await createScratchDatabase(postgres.adminUrl);
  const replicas: Replica[] = [];
  const devices: Device[] = [];
  let exitCode = 1;
  const spawnReplica = (name: string) =>
    spawnServerProcess({
      FLOE_HOST: '127.0.0.1',
      FLOE_PORT: '0',
      FLOE_DATABASE_URL: database.url,
      FLOE_REDIS_URL: redis.url,
      FLOE_JOIN_TOKEN: JOIN,
      FLOE_ADMIN_TOKEN: ADMIN,
      FLOE_GATHER_MS: '1000',
      FLOE_RATE_LIMIT_MESSAGES: '1000',
      FLOE_HTTP_RATE_LIMIT_PER_MINUTE: '1000000',
      FLOE_LOG_LEVEL: 'info', // spawnServerProcess waits for the line saying it listens
    }).then((process) => ({ name, process }));
  const backends = () => replicas.map((r) => new URL(r.process.url).host);
  try {
    for (let i = 0; i < opts.replicas; i++) replicas.push(await spawnReplica(`replica-${i + 1}`));
    const balancer = await startTcpBalancer(backends());
    const url = balancer.url;
    const admin = async <T>(method: 'GET' | 'POST', route: string, body?: unknown): Promise<T> => {
      for (let attempt = 0; ; attempt++) {
        try {
          const response = await fetch(`${url}${route}`, {
            method,
            headers: { authorization: `Bearer ${ADMIN}`, ...(body ? { 'content-type': 'application/json' } : {}) },
            ...(body ? { body: JSON.stringify(body) } : {}),
          });
          if (response.status >= 500 && attempt < 5) throw new Error(`HTTP ${response.status}`);
          return (await response.json()) as T;
        } catch (error) {
          // the request landed on a replica as it was killed: another one answers
          if (attempt >= 5) throw error;
          await new Promise((resolve) => setTimeout(resolve, 200));
        }
      }
    };

    // devices answer after a little "training"; a device picked to die in a round is cut before it answers
    const doomed = new Map<number, Set<number>>();
    const doomedIn = (round: number): Set<number> => {
      let set = doomed.get(round);
      if (!set) {
        const pick = random(opts.seed * 7919 + round + 1);
        const order = devices.map((d) => ({ index: d.index, key: pick() })).sort((a, b) => a.key - b.key);
        set = new Set(order.slice(0, Math.round(opts.killShare * opts.devices)).map((d) => d.index));
        doomed.set(round, set);
      }
      return set;
    };
    const connect = async (device: Device): Promise<void> => {
      const connection = await ServerConnection.open(url, device.credential, {
        profile: DEFAULT_PROFILE,
        plan: PLAN,
        maxReconnectDelayMs: 1000,
      });
      device.connection = connection;
      connection.on('round_start', (start: RoundStart) => {
        if (doomedIn(start.round).has(device.index) && !device.diedIn.has(start.round)) {
          device.diedIn.add(start.round);
          connection.close();
          device.connection = undefined;
          // it restarts a moment later, with the same credential (the server re-sends what it is owed)
          setTimeout(() => void connect(device).catch(() => undefined), 500 + 1500 * rng());
          return;
        }
        const adapter = sampleAdapter(start, undefined, { seed: 2, scale: 0.05, noise: 0.5 }, device.index);
        setTimeout(
          () => {
            if (device.connection !== connection) return;
            connection
              .sendUpdate({
                jobId: start.jobId,
                round: start.round,
                numSamples: SAMPLES,
                plan: { ...PLAN, rank: start.config.rank },
                adapter: toWireAdapter(adapter),
                metrics: { loss: 1 },
              })
              .then(
                (ack) => {
                  if (ack.type === 'update_ack' && ack.accepted) device.acked.add(ack.round);
                },
                () => undefined,
              );
          },
          200 + 800 * rng(),
        );
      });
    };
    for (let i = 0; i < opts.devices; i++) {
      const { clientId, credential } = await enroll(url, JOIN, DEFAULT_PROFILE);
      const device: Device = {
        index: i,
        clientId,
        credential,
        connection: undefined,
        acked: new Set(),
        diedIn: new Set(),
      };
      devices.push(device);
      await connect(device);
    }
    console.log(
      `chaos: ${opts.replicas} replicas, ${opts.devices} devices, ${opts.rounds} rounds; killing ${Math.round(
        100 * opts.killShare,
      )}% of devices each round and a replica every ${opts.replicaEvery} rounds (seed ${opts.seed})`,
    );

    const spec: JobSpec = {
      name: 'chaos',
      baseModel: {
        id: 'edge-small',
        sha256: '0'.repeat(64),
        architecture: architectureOf(MODEL_PRESETS['edge-small']),
      },
      targetModules: PLAN.targetModules,
      strategy: 'fedavg',
      clustering: false,
      rounds: opts.rounds,
      clientsPerRound: opts.devices,
      // the killed devices come back within the round, but a round must not fail for want of them
      quorum: Math.max(1, Math.floor(opts.devices * (1 - opts.killShare) * 0.5)),
      roundDeadlineSec: opts.deadlineSec,
      localSteps: 1,
      learningRate: 1e-3,
      batchSize: 1,
      maxRank: 4,
      alpha: 8,
    };
    const job = await admin<JobSummary>('POST', '/v1/jobs', spec);
    const lines: RoundLine[] = [];
    const takeovers: { round: number; killed: string; wasCoordinating: boolean; secondsToCoordinator: number }[] = [];
    const deadline = Date.now() + opts.timeoutSec * 1000;
    let seen = 0;
    let current = job;
    while (current.status === 'running') {
      if (Date.now() > deadline) throw new Error(`the job did not complete within ${opts.timeoutSec} s`);
      await new Promise((resolve) => setTimeout(resolve, 200));
      current = await admin<JobSummary>('GET', `/v1/jobs/${job.id}`);
      const open = current.rounds.find((r) => r.status === 'open');
      // a replica dies every few rounds, once its round is under way (some updates in)
      if (open && open.round > 0 && open.round % opts.replicaEvery === 0 && open.accepted > 0) {
        if (!takeovers.some((t) => t.round === open.round)) {
          const health = await Promise.all(
            replicas.map(
              async (r) =>
                ((await (await fetch(`${r.process.url}/healthz`)).json()) as { coordinating: boolean }).coordinating,
            ),
          );
          // the coordinator and another replica in turn
          const wantCoordinator = takeovers.length % 2 === 0;
          const victimIndex = Math.max(
            0,
            health.findIndex((c) => c === wantCoordinator),
          );
          const victim = replicas[victimIndex] as Replica;
          const killedAt = Date.now();
          victim.process.child.kill('SIGKILL');
          replicas.splice(victimIndex, 1);
          balancer.setBackends(backends());
          let secondsToCoordinator = 0;
          for (;;) {
            const coordinating = await Promise.all(
              replicas.map(
                async (r) =>
                  ((await (await fetch(`${r.process.url}/healthz`)).json()) as { coordinating: boolean }).coordinating,
              ),
            );
            if (coordinating.some(Boolean)) {
              secondsToCoordinator = (Date.now() - killedAt) / 1000;
              break;
            }
            if (Date.now() - killedAt > 60_000) throw new Error('no replica took over within 60 s');
            await new Promise((resolve) => setTimeout(resolve, 100));
          }
          takeovers.push({
            round: open.round,
            killed: victim.name,
            wasCoordinating: health[victimIndex] === true,
            secondsToCoordinator,
          });
          replicas.push(await spawnReplica(victim.name));
          balancer.setBackends(backends());
        }
      }
      for (const r of current.rounds.filter((r) => r.status !== 'open').slice(seen)) {
        const takeover = takeovers.find((t) => t.round === r.round);
        const killedThisRound = devices.filter((d) => d.diedIn.has(r.round)).length;
        const line: RoundLine = {
          round: r.round,
          status: r.status,
          accepted: r.accepted,
          sampled: r.sampled,
          devicesKilled: killedThisRound,
          seconds: (Date.parse(r.endedAt ?? r.startedAt) - Date.parse(r.startedAt)) / 1000,
          ...(takeover
            ? { replicaKilled: `${takeover.killed}${takeover.wasCoordinating ? ' (coordinator)' : ''}` }
            : {}),
        };
        lines.push(line);
        console.log(
          `round ${String(r.round + 1).padStart(2)}/${opts.rounds} ${r.status.padEnd(10)} ${r.accepted}/${r.sampled} updates, ` +
            `${line.seconds.toFixed(1)} s, ${killedThisRound} devices killed` +
            (line.replicaKilled ? `, ${line.replicaKilled} SIGKILLed` : ''),
        );
        seen++;
      }
    }

    // every acknowledged update: in the database, and counted into its round's aggregate
    const db = new pg.Client({ connectionString: database.url });
    await db.connect();
    const { rows } = await db.query<{ round: number; client_id: string }>(
      'SELECT round, client_id FROM updates WHERE job_id = $1',
      [job.id],
    );
    await db.end();
    const stored = new Set(rows.map((r) => `${r.round}:${r.client_id}`));
    let acknowledged = 0;
    let missingFromDatabase = 0;
    let missingFromAggregate = 0;
    for (const device of devices) {
      for (const round of device.acked) {
        acknowledged++;
        if (!stored.has(`${round}:${device.clientId}`)) missingFromDatabase++;
        const record = current.rounds.find((r) => r.round === round);
        if (record?.status !== 'aggregated') missingFromAggregate++;
      }
    }
    // the aggregate of each round counted exactly its stored updates (each weighs its SAMPLES samples)
    const miscounted = current.rounds.filter((r) => {
      const inDatabase = rows.filter((row) => row.round === r.round).length;
      return r.status === 'aggregated' && (r.accepted !== inDatabase || r.metrics['samples'] !== SAMPLES * inDatabase);
    });
    const report = {
      config: { ...opts, json: undefined },
      jobStatus: current.status,
      rounds: lines,
      roundsAggregated: current.rounds.filter((r) => r.status === 'aggregated').length,
      roundsFailed: current.rounds.filter((r) => r.status === 'failed').length,
      devicesKilled: devices.reduce((n, d) => n + d.diedIn.size, 0),
      replicasKilled: takeovers,
      acknowledgedUpdates: acknowledged,
      storedUpdates: rows.length,
      lostAcknowledgedUpdates: missingFromDatabase + missingFromAggregate,
      missingFromDatabase,
      missingFromAggregate,
      roundsWhoseAggregateMiscounted: miscounted.map((r) => r.round),
      wallSeconds: (performance.now() - started) / 1000,
      machine: machine(),
    };
    console.log(
      `\njob ${current.status}: ${report.roundsAggregated} rounds aggregated, ${report.roundsFailed} failed; ` +
        `${report.devicesKilled} device kills, ${takeovers.length} replica kills ` +
        `(${takeovers.filter((t) => t.wasCoordinating).length} of the coordinator; new coordinator after ` +
        `${takeovers.map((t) => t.secondsToCoordinator.toFixed(1)).join(', ')} s)\n` +
        `acknowledged updates ${acknowledged}, stored ${rows.length}, lost ${report.lostAcknowledgedUpdates} ` +
        `(missing from the database ${missingFromDatabase}, from their round's aggregate ${missingFromAggregate}); ` +
        `rounds whose aggregate miscounted: ${miscounted.length}; ${report.wallSeconds.toFixed(0)} s`,
    );
    if (opts.json) writeFileSync(opts.json, `${JSON.stringify(report, null, 2)}\n`);
    exitCode =
      current.status === 'completed' && report.lostAcknowledgedUpdates === 0 && miscounted.length === 0 ? 0 : 1;
    await balancer.close();
  } finally {
    for (const device of devices) device.connection?.close();
    for (const replica of replicas) replica.process.child.kill('SIGKILL');
    await database.drop().catch(() => undefined);
    await redis.stop();
    postgres.stop();
  }
  process.exit(exitCode);
}

await main();
