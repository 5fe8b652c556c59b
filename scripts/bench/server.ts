/**
 * Coordination server: aggregation time for 100 and 1,000 updates of an edge-small rank-8 adapter
 * (all seven projections of every layer) under hetlora and flexlora (flexlora with the server's ORT
 * matrix kernel, as its aggregation workers run it), the per-update cost of decoding and validating a
 * frame, and rounds of 1,000 socket.io clients on loopback (the server in its own process, as deployed;
 * the clients in this one) with /healthz timed throughout, aggregation included.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { LORA_MODULES, MODEL_PRESETS, architectureOf } from '@floe/model';
import { type ClientUpdate, STRATEGIES, updateProblems } from '@floe/federation';
import { ortKernels, spawnServerProcess } from '@floe/server';
import {
  type JobSpec,
  type JobSummary,
  type RoundStart,
  adapterModuleShapes,
  decodeMessageOf,
  encodeMessage,
  fromWireAdapter,
  toWireAdapter,
} from '@floe/shared';
import { type SyntheticDevice, sampleAdapter } from '@floe/simulator';
import type { BenchResult } from '../lib/bench-report.js';
import { watchHealth } from '../lib/health-watch.js';
import { connectFleet } from '../lib/synthetic-fleet.js';

const ARCH = architectureOf(MODEL_PRESETS['edge-small']);
const MODULES = [...LORA_MODULES];
const RANK = 8;
const ALPHA = 16;
const JOIN = 'bench-join-token';
const ADMIN = 'bench-admin-token';

function roundStart(rank: number, round = 0): RoundStart {
  return {
    type: 'round_start',
    jobId: 'bench',
    round,
    clusterId: 0,
    deadline: 0,
    config: {
      baseModel: { id: 'edge-small', sha256: '0'.repeat(64), architecture: ARCH },
      targetModules: MODULES,
      rank,
      alpha: ALPHA,
      localSteps: 1,
      learningRate: 1e-3,
      batchSize: 1,
    },
    adapter: null,
  };
}

function seconds(start: number): number {
  return (performance.now() - start) / 1000;
}

async function aggregation(rows: BenchResult['rows'], data: Record<string, unknown>): Promise<void> {
  const start = roundStart(RANK);
  const pool: ClientUpdate[] = Array.from({ length: 1000 }, (_, i) => ({
    clientId: `c${i}`,
    numSamples: 50 + (i % 7) * 10,
    adapter: sampleAdapter(start, undefined, { seed: i % 2, scale: 0.02, noise: 0.5 }, i),
  }));
  const floats = [...(pool[0]?.adapter.modules.values() ?? [])].reduce((n, f) => n + f.A.length + f.B.length, 0);
  console.log(`update: ${MODULES.length} modules x ${ARCH.numHiddenLayers} layers at rank ${RANK}, ${floats} floats`);

  // what the server does per received update before it may aggregate it
  const frames = pool.slice(0, 100).map((u) =>
    encodeMessage({
      type: 'update',
      jobId: 'bench',
      round: 0,
      numSamples: u.numSamples,
      plan: { rank: RANK, targetModules: MODULES },
      adapter: toWireAdapter(u.adapter),
      metrics: {},
    }),
  );
  const shapes = adapterModuleShapes(ARCH, MODULES);
  let t = performance.now();
  for (const frame of frames) {
    const adapter = fromWireAdapter(decodeMessageOf(frame, 'update').adapter);
    if (updateProblems(adapter, { modules: shapes, rank: RANK, alpha: ALPHA, maxNorm: 1e4 }).length > 0) {
      throw new Error('bench update refused');
    }
  }
  const perUpdateMs = (seconds(t) / frames.length) * 1000;
  rows.push({
    workload: 'decode + validate one update',
    seconds: perUpdateMs / 1000,
    detail: `${(frames[0]?.byteLength ?? 0) / 1024} KiB frame`,
  });
  data.decodeValidateMsPerUpdate = perUpdateMs;

  const results: Record<string, number> = {};
  const kernels = await ortKernels(1);
  for (const strategy of ['hetlora', 'flexlora'] as const) {
    for (const count of [100, 1000]) {
      t = performance.now();
      (await STRATEGIES[strategy].aggregate(pool.slice(0, count), ALPHA, { maxRank: RANK, kernels })).forRank(RANK);
      const s = seconds(t);
      results[`${strategy}_${count}`] = s;
      rows.push({
        workload: `${strategy} aggregate ${count} updates`,
        seconds: s,
        detail: `${((s / count) * 1000).toFixed(2)} ms/update`,
      });
      console.log(`${strategy} x ${count}: ${s.toFixed(2)} s`);
    }
  }
  data.aggregationSeconds = results;
}

const spawnServer = (dataDir: string) =>
  spawnServerProcess({
    FLOE_HOST: '127.0.0.1',
    FLOE_PORT: '0',
    FLOE_DATA_DIR: dataDir,
    FLOE_JOIN_TOKEN: JOIN,
    FLOE_ADMIN_TOKEN: ADMIN,
    FLOE_HTTP_RATE_LIMIT_PER_MINUTE: '100000',
    FLOE_GATHER_MS: '600000',
    FLOE_LOG_LEVEL: 'info',
    FLOE_MAX_CONNECTIONS_PER_IP: '100000',
    FLOE_RATE_LIMIT_MESSAGES: '1000',
  });

async function rounds(rows: BenchResult['rows'], data: Record<string, unknown>): Promise<void> {
  const clients = 1000;
  const dataDir = await mkdtemp(path.join(os.tmpdir(), 'floe-bench-'));
  // quieter logs: the server prints a line per connection at info level
  const server = await spawnServer(dataDir);
  let devices: SyntheticDevice[] = [];
  try {
    let t = performance.now();
    devices = await connectFleet(server.url, JOIN, clients, MODULES);
    const connectSeconds = seconds(t);
    rows.push({ workload: `enroll + connect ${clients} clients`, seconds: connectSeconds, detail: 'batches of 20' });

    const results: Record<string, number[]> = {};
    const healthDuring: Record<string, number> = {};
    for (const strategy of ['hetlora', 'flexlora'] as const) {
      const spec: JobSpec = {
        name: `bench-${strategy}`,
        baseModel: { id: 'edge-small', sha256: '0'.repeat(64), architecture: ARCH },
        targetModules: MODULES,
        strategy,
        clustering: false,
        rounds: 2,
        clientsPerRound: clients,
        quorum: clients,
        roundDeadlineSec: 300,
        localSteps: 1,
        learningRate: 1e-3,
        batchSize: 1,
        maxRank: RANK,
        alpha: ALPHA,
      };
      const headers = { authorization: `Bearer ${ADMIN}`, 'content-type': 'application/json' };
      t = performance.now();
      const created = (await (
        await fetch(`${server.url}/v1/jobs`, { method: 'POST', headers, body: JSON.stringify(spec) })
      ).json()) as JobSummary;
      let job = created;
      const health = watchHealth(server.url);
      while (job.status === 'running') {
        await new Promise((resolve) => setTimeout(resolve, 200));
        job = (await (await fetch(`${server.url}/v1/jobs/${created.id}`, { headers })).json()) as JobSummary;
      }
      // the aggregation windows: the last aggregation_seconds of each round
      const windows = job.rounds.map((r) => {
        const end = Date.parse(r.endedAt ?? r.startedAt);
        return [end - Number(r.metrics['aggregation_seconds']) * 1000, end] as const;
      });
      const record = await health.stop();
      const whole = record.summary();
      const during = record.summary(windows);
      healthDuring[strategy] = during.p99Ms;
      console.log(
        `${strategy}: /healthz p99 ${whole.p99Ms.toFixed(1)} ms over the job (${whole.samples} requests, ` +
          `${whole.failures} failed; updates arriving), ${during.p99Ms.toFixed(1)} ms while aggregating ` +
          `(${during.samples} requests, max ${during.maxMs.toFixed(1)} ms)`,
      );
      if (job.status !== 'completed' || job.rounds.some((r) => r.accepted !== clients)) {
        throw new Error(`bench job did not complete cleanly: ${JSON.stringify(job.rounds)}`);
      }
      const durations = job.rounds.map((r) => (Date.parse(r.endedAt ?? r.startedAt) - Date.parse(r.startedAt)) / 1000);
      results[strategy] = durations;
      for (const r of job.rounds) {
        rows.push({
          workload: `${strategy} round ${r.round}, ${clients} clients`,
          seconds: (Date.parse(r.endedAt ?? r.startedAt) - Date.parse(r.startedAt)) / 1000,
          detail: `aggregation ${Number(r.metrics['aggregation_seconds']).toFixed(2)} s`,
        });
      }
      console.log(
        `${strategy}: rounds ${durations.map((d) => d.toFixed(2)).join(', ')} s (${seconds(t).toFixed(1)} s job)`,
      );
    }
    data.roundSeconds1000Clients = results;
    data.connectSeconds1000Clients = connectSeconds;
    data.healthzP99MsDuringRounds = healthDuring;
    // the figure: /healthz while the server aggregates 1,000 flexlora updates
    data.healthzP99MsDuringAggregation = healthDuring['flexlora'];
  } finally {
    devices.forEach((d) => d.stop());
    server.child.kill('SIGTERM');
    await new Promise((resolve) => server.child.once('exit', resolve));
    await rm(dataDir, { recursive: true, force: true });
  }
}

export async function run(): Promise<BenchResult> {
  const rows: BenchResult['rows'] = [];
  const data: Record<string, unknown> = { rank: RANK, modules: MODULES, architecture: ARCH };
  if (!process.env['FLOE_BENCH_SKIP_AGGREGATION']) await aggregation(rows, data);
  await rounds(rows, data);
  return { rows, data };
}
