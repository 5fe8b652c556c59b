/**
 * Scale: 1,000 synthetic devices speaking the real protocol (enroll, websocket, hello, an update per
 * round) through a 3-round flexlora job against one server process, on each store engine: the
 * embedded SQLite file and PostgreSQL (a throwaway server from Debian's binaries, when installed);
 * then against two replicas over PostgreSQL and Redis behind a TCP balancer (with redis-server).
 * Figures: connect time, round times, updates and messages per second, the server's peak RSS and its
 * CPU time; then the peak RSS of aggregating 1,000 and 10,000 rank-8 updates folded one at a time (as
 * the server's workers do) against 1,000 and 4,000 held together. The devices run in this process, so both share the machine's cores with the server.
 * FLOE_BENCH_SCALE_CLIENTS changes the count (a quick look: 100).
 */
import { execFileSync } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import pidusage from 'pidusage';
import { LORA_MODULES, MODEL_PRESETS, architectureOf } from '@floe/model';
import { type ServerProcess, spawnServerProcess } from '@floe/server';
import type { JobSpec, JobSummary } from '@floe/shared';
import type { SyntheticDevice } from '@floe/simulator';
import type { BenchResult } from '../lib/bench-report.js';
import {
  type LocalPostgres,
  createScratchDatabase,
  findPostgresBin,
  startLocalPostgres,
} from '../lib/local-postgres.js';
import { hasRedisServer, startLocalRedis } from '../lib/local-redis.js';
import { peakRssMiB } from '../lib/process-memory.js';
import { connectFleet } from '../lib/synthetic-fleet.js';
import { startTcpBalancer } from '../lib/tcp-balancer.js';

const ARCH = architectureOf(MODEL_PRESETS['edge-small']);
const MODULES = [...LORA_MODULES];
const CLIENTS = Number(process.env['FLOE_BENCH_SCALE_CLIENTS'] ?? 1000);
const ROUNDS = 3;
const JOIN = 'bench-join-token';
const ADMIN = 'bench-admin-token';

interface EngineFigures {
  connectSeconds: number;
  roundSeconds: number[];
  aggregationSeconds: number[];
  updatesPerSecond: number;
  messagesPerSecond: number;
  /** The largest of the replicas' when there are several. */
  serverPeakRssMiB: number;
  /** Summed over the replicas. */
  serverCpuSeconds: number;
  serverCpuShare: number;
  replicas: number;
  replicaPeakRssMiB: number[];
  /** Devices connected to each replica once all were in. */
  replicaConnections: number[];
}

type Engine = 'sqlite' | 'postgres' | 'replicas';

async function runOn(engine: Engine, postgres: LocalPostgres | undefined): Promise<EngineFigures> {
  const dataDir = await mkdtemp(path.join(os.tmpdir(), 'floe-scale-'));
  const database = postgres ? await createScratchDatabase(postgres.adminUrl) : undefined;
  const redis = engine === 'replicas' ? await startLocalRedis() : undefined;
  const servers: ServerProcess[] = [];
  let balancer: Awaited<ReturnType<typeof startTcpBalancer>> | undefined;
  let devices: SyntheticDevice[] = [];
  try {
    for (let i = 0; i < (engine === 'replicas' ? 2 : 1); i++) {
      servers.push(
        await spawnServerProcess({
          FLOE_HOST: '127.0.0.1',
          FLOE_PORT: '0',
          FLOE_DATA_DIR: dataDir,
          FLOE_DATABASE_URL: database?.url ?? '',
          FLOE_REDIS_URL: redis?.url ?? '',
          FLOE_JOIN_TOKEN: JOIN,
          FLOE_ADMIN_TOKEN: ADMIN,
          FLOE_HTTP_RATE_LIMIT_PER_MINUTE: '1000000',
          FLOE_GATHER_MS: '600000',
          FLOE_LOG_LEVEL: 'info', // spawnServerProcess waits for the line saying it listens
          FLOE_MAX_CONNECTIONS_PER_IP: '100000',
          FLOE_RATE_LIMIT_MESSAGES: '1000',
        }),
      );
    }
    if (servers.length > 1) balancer = await startTcpBalancer(servers.map((s) => new URL(s.url).host));
    const url = balancer?.url ?? (servers[0] as ServerProcess).url;
    const pids = servers.map((s) => s.child.pid as number);
    const cpu = async () =>
      (await Promise.all(pids.map(async (pid) => (await pidusage(pid)).ctime))).reduce((a, b) => a + b, 0);
    const started = performance.now();
    devices = await connectFleet(url, JOIN, CLIENTS, MODULES);
    const connectSeconds = (performance.now() - started) / 1000;
    console.log(`${engine}: ${CLIENTS} clients connected in ${connectSeconds.toFixed(1)} s`);

    const spec: JobSpec = {
      name: `scale-${engine}`,
      baseModel: { id: 'edge-small', sha256: '0'.repeat(64), architecture: ARCH },
      targetModules: MODULES,
      strategy: 'flexlora',
      clustering: false,
      rounds: ROUNDS,
      clientsPerRound: CLIENTS,
      quorum: CLIENTS,
      roundDeadlineSec: 600,
      localSteps: 1,
      learningRate: 1e-3,
      batchSize: 1,
      maxRank: 8,
      alpha: 16,
    };
    const headers = { authorization: `Bearer ${ADMIN}`, 'content-type': 'application/json' };
    const replicaConnections = await Promise.all(
      servers.map(
        async (s) =>
          ((await (await fetch(`${s.url}/healthz`)).json()) as { connectedClients: number }).connectedClients,
      ),
    );
    const cpuBefore = await cpu();
    const jobStarted = performance.now();
    const created = (await (
      await fetch(`${url}/v1/jobs`, { method: 'POST', headers, body: JSON.stringify(spec) })
    ).json()) as JobSummary;
    let job = created;
    let shown = -1;
    while (job.status === 'running') {
      await new Promise((resolve) => setTimeout(resolve, 250));
      job = (await (await fetch(`${url}/v1/jobs/${created.id}`, { headers })).json()) as JobSummary;
      const done = job.rounds.filter((r) => r.status !== 'open');
      for (const r of done.slice(shown + 1)) {
        console.log(
          `${engine}: round ${r.round + 1}/${ROUNDS} ${r.status}, ${r.accepted} updates, ` +
            `${((Date.parse(r.endedAt ?? r.startedAt) - Date.parse(r.startedAt)) / 1000).toFixed(1)} s`,
        );
        shown = r.round;
      }
    }
    const jobSeconds = (performance.now() - jobStarted) / 1000;
    const serverCpuSeconds = ((await cpu()) - cpuBefore) / 1000;
    if (job.status !== 'completed' || job.rounds.some((r) => r.accepted !== CLIENTS)) {
      throw new Error(`${engine}: the job did not complete cleanly: ${JSON.stringify(job.rounds)}`);
    }
    const roundSeconds = job.rounds.map((r) => (Date.parse(r.endedAt ?? r.startedAt) - Date.parse(r.startedAt)) / 1000);
    const updates = CLIENTS * ROUNDS;
    return {
      connectSeconds,
      roundSeconds,
      aggregationSeconds: job.rounds.map((r) => Number(r.metrics['aggregation_seconds'])),
      updatesPerSecond: updates / roundSeconds.reduce((a, b) => a + b, 0),
      // per device and round: round_start and update_ack and round_end out, the update in
      messagesPerSecond: (4 * updates) / jobSeconds,
      serverPeakRssMiB: Math.max(...(await Promise.all(pids.map((pid) => peakRssMiB(pid))))),
      serverCpuSeconds,
      serverCpuShare: serverCpuSeconds / jobSeconds,
      replicas: servers.length,
      replicaPeakRssMiB: await Promise.all(pids.map((pid) => peakRssMiB(pid))),
      replicaConnections,
    };
  } finally {
    devices.forEach((d) => d.stop());
    await balancer?.close();
    for (const server of servers) {
      server.child.kill('SIGTERM');
      await new Promise((resolve) => server.child.once('exit', resolve));
    }
    await redis?.stop();
    await database?.drop();
    await rm(dataDir, { recursive: true, force: true });
  }
}

interface FoldMemory {
  count: number;
  mode: 'fold' | 'batch';
  seconds: number;
  peakRssMiB: number;
  baselineRssMiB: number;
}

/** Peak RSS of aggregating `count` rank-8 edge-small flexlora updates, in a process of its own. */
function foldMemory(count: number, mode: 'fold' | 'batch'): FoldMemory {
  const script = fileURLToPath(new URL('./fold-memory.ts', import.meta.url));
  const out = execFileSync(
    process.execPath,
    ['--import', 'tsx', '--conditions=floe-source', script, String(count), mode],
    {
      encoding: 'utf8',
      maxBuffer: 1 << 20,
    },
  );
  const figures = JSON.parse(out.trim().split('\n').at(-1) ?? '{}') as FoldMemory;
  console.log(
    `aggregate ${count} updates (${mode}): ${figures.seconds.toFixed(1)} s, peak RSS ${figures.peakRssMiB.toFixed(0)} MiB`,
  );
  return figures;
}

export async function run(): Promise<BenchResult> {
  const rows: BenchResult['rows'] = [];
  const figuresOf: Record<string, EngineFigures> = {};
  const postgres = findPostgresBin() ? await startLocalPostgres() : undefined;
  if (!postgres) console.warn('PostgreSQL is not installed: SQLite only (apt-get install postgresql)');
  try {
    const engines: Engine[] = ['sqlite'];
    if (postgres) engines.push('postgres');
    if (postgres && hasRedisServer()) engines.push('replicas');
    else if (postgres) console.warn('redis-server is not installed: no run on replicas (apt-get install redis-server)');
    for (const engine of engines) {
      const figures = await runOn(engine, engine === 'sqlite' ? undefined : postgres);
      figuresOf[engine] = figures;
      rows.push(
        { workload: `${engine}: enroll + connect ${CLIENTS} clients`, seconds: figures.connectSeconds, detail: '' },
        ...figures.roundSeconds.map((s, i) => ({
          workload: `${engine}: round ${i + 1} of ${CLIENTS} updates`,
          seconds: s,
          detail: `aggregation ${figures.aggregationSeconds[i]?.toFixed(2)} s`,
        })),
        {
          workload: `${engine}: server over the job`,
          seconds: figures.serverCpuSeconds,
          detail:
            `CPU s (${(100 * figures.serverCpuShare).toFixed(0)}% of a core), peak RSS ` +
            `${figures.replicaPeakRssMiB.map((m) => m.toFixed(0)).join(' + ')} MiB` +
            (figures.replicas > 1 ? ` (devices ${figures.replicaConnections.join(' + ')})` : '') +
            `, ${figures.updatesPerSecond.toFixed(0)} updates/s, ` +
            `${figures.messagesPerSecond.toFixed(0)} messages/s`,
        },
      );
    }
  } finally {
    postgres?.stop();
  }
  // the server's workers fold a round's updates; median and trimmed-mean jobs hold them (capped at 2,000)
  const memory = [
    foldMemory(1000, 'fold'),
    foldMemory(10_000, 'fold'),
    foldMemory(1000, 'batch'),
    foldMemory(4000, 'batch'),
  ];
  for (const m of memory) {
    rows.push({
      workload: `aggregate ${m.count} rank-8 edge-small updates (${m.mode === 'fold' ? 'folded' : 'held'})`,
      seconds: m.seconds,
      detail: `peak RSS ${m.peakRssMiB.toFixed(0)} MiB (${m.baselineRssMiB.toFixed(0)} before)`,
    });
  }
  return {
    rows,
    data: {
      clients: CLIENTS,
      rounds: ROUNDS,
      strategy: 'flexlora',
      modules: MODULES,
      engines: figuresOf,
      aggregationMemory: memory,
    },
  };
}
