/**
 * `pnpm simulate`: a whole hybrid federation on this machine. The cloud stand-in and the coordination
 * server run as their own processes on loopback; every client is a worker thread running the real edge
 * client (or, for local-only training, its trainer). Each federated method is one job on the server,
 * joined by a fresh device per client; the methods that need no training (the base checkpoint, the cloud
 * alone, fused inference) are scored once per client. Everything is scored on the clients' own held-out
 * splits by one evaluation (held-out.ts), and every frame a device sends goes through the frame
 * inspector.
 */
import { randomBytes } from 'node:crypto';
import os from 'node:os';
import path from 'node:path';
import { type CloudProcess, spawnCloudProcess } from '@floe/cloud-llm';
import { calibrate, deviceProfile, planRound } from '@floe/edge-client';
import { adjustedRandIndex } from '@floe/federation';
import { architectureOf, checkpointSha256, loadCheckpoint } from '@floe/model';
import { type ServerProcess, spawnServerProcess } from '@floe/server';
import {
  type Interval,
  type ItemScores,
  type JobSpec,
  type JobSummary,
  Random,
  type StrategyName,
  hashString,
  pairedBootstrap,
  parse,
} from '@floe/shared';
import { type ClientData, taskManifest, writeDataDir } from '@floe/tasks';
import type { TopLevelSpec } from 'vega-lite';
import pMap from 'p-map';
import { cachedCalibration, readCalibrationFile, sameWorkload } from './calibration.js';
import { type HeldOutCheck, simulationClients } from './clients.js';
import { FrameInspector } from './frame-inspector.js';
import {
  type ClientBytes,
  type ClientPoint,
  type ClusterCell,
  type RoundPoint,
  type RoundTime,
  bytesPerClient,
  clusterAssignment,
  differences,
  metricPerRound,
  perClient,
  roundTimes,
} from './report/charts.js';
import {
  COMPARED,
  type Claim,
  METHODS,
  type Method,
  SimulationReport,
  checkClaims,
  thisMachine,
} from './report/schema.js';
import { type Scenario, checkScenario } from './scenario.js';
import type { ClientSpec, WorkerEvent, WorkerTask } from './worker/protocol.js';
import { type WorkerResult, WorkerPool } from './worker/pool.js';

/** What a person watching a simulation sees. */
export interface SimulationObserver {
  /** A phase begins; `steps` local training steps are expected in it (0: none). */
  phase(name: string, steps: number): void;
  /** One local training step was taken somewhere. */
  step(): void;
  /** A line worth printing (a round closed, a phase ended). */
  line(text: string): void;
}

/** What report.json holds beyond the schema's required keys. */
export interface SimulationDetails {
  /** What the frame inspector looked at (findings: at most 20 pieces of raw data, none expected). */
  inspection: { frames: number; bytes: number; findings: { client: string; event: string; piece: string }[] };
  /** Held-out items compared with every client's training data and the pretraining corpus, and leaks found. */
  heldOutCheck: { checked: number; leaks: number };
  clients: Record<
    string,
    {
      task: string;
      tier: string;
      straggler: boolean;
      diesInRound?: number;
      profile: Record<string, string | number>;
      plans: Record<string, { rank: number; layers: number[] | null; microBatch: number }>;
      personalization: string | null;
      fusedFallback: { fused: number | null; floe_fused: number | null };
    }
  >;
  jobs: Record<
    string,
    {
      round: number;
      status: string;
      sampled: number;
      accepted: number;
      clusters: number;
      metrics: Record<string, number>;
    }[]
  >;
  metricPerRound: RoundPoint[];
  phaseSeconds: Record<string, number>;
  seconds: number;
}

export interface SimulationResult {
  report: SimulationReport & SimulationDetails;
  claims: Claim[];
  /** Vega-Lite specifications by file stem. */
  charts: Record<string, TopLevelSpec>;
}

const FEDERATED = { fedavg: 'fedavg', hetlora: 'hetlora', floe: 'flexlora' } as const satisfies Partial<
  Record<Method, StrategyName>
>;
type FederatedMethod = keyof typeof FEDERATED;

const METRIC_LABEL: Record<string, string> = {
  'bits-per-byte': 'bits per byte',
  'label-accuracy': 'accuracy',
  'exact-match': 'exact match',
};

interface SimClient {
  data: ClientData;
  tier: string;
  straggler: boolean;
  /** Dies in this round (federated methods) and restarts. */
  dieInRound: number | undefined;
  dataDir: string;
}

/** Per method and client: what the worker reported. */
interface ClientRun {
  deviceId?: string | undefined;
  plan?: { rank: number; layers: number[] | null; microBatch: number };
  heldOut: Map<number, number>;
  rounds: Extract<WorkerEvent, { type: 'round' }>[];
  bytesSent: number;
  result?: WorkerResult;
}

const noObserver: SimulationObserver = { phase: () => undefined, step: () => undefined, line: () => undefined };
const mean = (xs: readonly number[]) => xs.reduce((a, b) => a + b, 0) / Math.max(1, xs.length);

export async function runSimulation(
  scenario: Scenario,
  options: {
    workDir: string;
    observer?: SimulationObserver;
    /** Keeps this host's training cost between runs, as a device keeps it in its store (default: none kept). */
    cacheDir?: string | undefined;
  },
): Promise<SimulationResult> {
  checkScenario(scenario);
  const observer = options.observer ?? noObserver;
  const started = performance.now();
  const phaseSeconds: Record<string, number> = {};
  // a child process that exits while the run needs it ends the run with its reason, not at a round deadline
  let childExited: Promise<never> = new Promise<never>(() => undefined);
  let stopping = false;
  const timed = async <T>(name: string, steps: number, work: () => Promise<T>): Promise<T> => {
    observer.phase(name, steps);
    const t0 = performance.now();
    const out = await Promise.race([work(), childExited]);
    phaseSeconds[name] = (performance.now() - t0) / 1000;
    observer.line(`${name}: done in ${phaseSeconds[name].toFixed(0)} s`);
    return out;
  };

  const checkpoint = await loadCheckpoint(scenario.edgeModel);
  const sha256 = await checkpointSha256(scenario.edgeModel);
  const architecture = architectureOf(checkpoint.config);
  const seqLen = Math.min(scenario.seqLen, checkpoint.config.max_position_embeddings);
  const { clients: partitioned, heldOut } = simulationClients({
    tasks: scenario.tasks,
    clientsPerTask: scenario.clientsPerTask,
    seed: scenario.seed,
    pretrainSeed: Number(checkpoint.metadata?.['seed'] ?? 0),
    mix: scenario.mix,
    heldOutBytes: scenario.heldOutBytes,
    heldOutExamples: scenario.heldOutExamples,
  });

  // who is slow and who dies is drawn once, from the seed, and is the same in every method
  const random = new Random(scenario.seed + 11);
  const ids = partitioned.map((c) => c.id);
  const stragglers = new Set(random.shuffled(ids).slice(0, Math.round(scenario.stragglers * ids.length)));
  const dropouts = new Set(random.shuffled(ids).slice(0, Math.round(scenario.dropouts * ids.length)));
  const inspector = new FrameInspector();
  const clients: SimClient[] = partitioned.map((data) => {
    const index = partitioned.filter((c) => c.task === data.task).indexOf(data);
    const dataDir = path.join(options.workDir, 'clients', data.id, 'data');
    writeDataDir(dataDir, data);
    inspector.addClient(data.id, [...data.train.documents, ...data.test.documents]);
    return {
      data,
      tier: scenario.tiers[index % scenario.tiers.length] as string,
      straggler: stragglers.has(data.id),
      // a dropout dies in one of the rounds before the last (it comes back for the next)
      dieInRound: dropouts.has(data.id) ? Math.floor(random.next() * (scenario.rounds - 1)) : undefined,
      dataDir,
    };
  });
  const spec = (c: SimClient): ClientSpec => ({
    id: c.data.id,
    task: c.data.task,
    dataDir: c.dataDir,
    model: path.resolve(scenario.edgeModel),
    tier: c.tier,
    seqLen,
    threads: 1,
  });
  const runs = new Map<Method, Map<string, ClientRun>>();
  const runOf = (method: Method, client: string) => {
    const byClient = runs.get(method) ?? new Map<string, ClientRun>();
    runs.set(method, byClient);
    const run: ClientRun = byClient.get(client) ?? { heldOut: new Map(), rounds: [], bytesSent: 0 };
    byClient.set(client, run);
    return run;
  };
  let workers: WorkerPool | undefined;
  const worker = (method: Method, client: SimClient, task: WorkerTask) => {
    if (!workers) throw new Error('the workers have not started');
    return workers
      .run(task, (event) => {
        const run = runOf(method, client.data.id);
        if (event.type === 'step') observer.step();
        else if (event.type === 'plan') {
          run.deviceId = event.deviceId;
          run.plan = { rank: event.rank, layers: event.layers, microBatch: event.microBatch };
        } else if (event.type === 'heldOut') run.heldOut.set(event.round, event.value);
        else if (event.type === 'round') run.rounds.push(event);
        else if (event.type === 'frame') {
          run.bytesSent += event.bytes.byteLength;
          if (inspector.inspect(event.event, event.bytes) > 0) {
            observer.line(`${client.data.id} (${method}) sent raw data in a ${event.event} frame`);
          }
        }
      })
      .then((result) => {
        runOf(method, client.data.id).result = result;
        return result;
      });
  };

  let cloud: CloudProcess | undefined;
  let server: ServerProcess | undefined;
  let serverStart: Promise<ServerProcess> | undefined;
  const jobs = new Map<FederatedMethod, JobSummary>();
  const clusters = new Map<string, number>();
  try {
    // plans come from a calibration file the scenario names, or from this host measured alone (cached)
    const measuredFor = { sha256, seqLen, threads: 1, targetModules: scenario.targetModules };
    const stored = scenario.calibration ? await readCalibrationFile(scenario.calibration) : undefined;
    const usable = stored && sameWorkload(stored.workload, measuredFor) ? stored : undefined;
    if (stored && !usable) {
      observer.line(`calibration ${scenario.calibration} is for another model or shape; measuring this host`);
    }
    const { cost } =
      usable ??
      (await timed('calibration', 0, () =>
        cachedCalibration(options.cacheDir, measuredFor, () =>
          calibrate({
            model: scenario.edgeModel,
            config: checkpoint.config,
            seqLen,
            targetModules: scenario.targetModules,
            threads: 1,
            passes: 1,
            steps: 8,
          }),
        ),
      ));
    observer.line('starting the cloud stand-in and the coordination server on loopback');
    const tokens = { join: randomBytes(16).toString('hex'), admin: randomBytes(16).toString('hex') };
    workers = new WorkerPool(Math.min(clients.length, 2 * os.cpus().length));
    // the reference phase needs only the cloud: the server finishes starting beside it
    const cloudStart = spawnCloudProcess(['--model', scenario.cloudModel, '--host', '127.0.0.1', '--port', '0']);
    serverStart = spawnServerProcess({
      FLOE_HOST: '127.0.0.1',
      FLOE_PORT: '0',
      FLOE_DATA_DIR: path.join(options.workDir, 'server'),
      FLOE_JOIN_TOKEN: tokens.join,
      FLOE_ADMIN_TOKEN: tokens.admin,
      FLOE_CREDENTIAL_SECRET: randomBytes(32).toString('hex'),
      // round 0 waits for every client the run starts (which ones take part must not depend on how fast
      // they load); the quorum rules only if some have not said hello after 5 minutes
      FLOE_GATHER_MS: '300000',
      FLOE_LOG_LEVEL: 'info', // the child is ready when it logs that it listens (at info)
      FLOE_RATE_LIMIT_MESSAGES: '1000',
      FLOE_HTTP_RATE_LIMIT_PER_MINUTE: '100000',
    });
    serverStart.catch(() => undefined); // awaited after the reference phase, or in `finally`
    cloud = await cloudStart;
    const cores = os.cpus().length;
    const cloudUrl = cloud.url;

    await timed('base, cloud and fused', 0, () =>
      pMap(clients, (c) => worker('base', c, { kind: 'reference', client: spec(c), cloudUrl }), { concurrency: cores }),
    );
    server = await serverStart;
    const children = [
      ['cloud stand-in', cloud.child],
      ['coordination server', server.child],
    ] as const;
    for (const [name, child] of children) {
      if (child.exitCode !== null || child.signalCode !== null) throw new Error(`the ${name} exited before the jobs`);
    }
    childExited = new Promise<never>((_, reject) => {
      for (const [name, child] of children) {
        child.once('exit', (code, signal) => {
          if (!stopping) reject(new Error(`the ${name} exited (${signal ?? `code ${String(code)}`}) during the run`));
        });
      }
    });
    childExited.catch(() => undefined); // raced in every phase; unhandled only between phases
    const serverUrl = server.url;
    const admin = async <T>(method: 'GET' | 'POST', route: string, body?: unknown): Promise<T> => {
      const response = await fetch(`${serverUrl}${route}`, {
        method,
        headers: {
          authorization: `Bearer ${tokens.admin}`,
          ...(body === undefined ? {} : { 'content-type': 'application/json' }),
        },
        ...(body === undefined ? {} : { body: JSON.stringify(body) }),
      });
      if (!response.ok) throw new Error(`${method} ${route}: ${response.status} ${await response.text()}`);
      return (await response.json()) as T;
    };
    const jobSpec = (method: FederatedMethod): JobSpec => ({
      name: `simulate-${method}`,
      baseModel: { id: path.basename(scenario.edgeModel), sha256, architecture },
      targetModules: scenario.targetModules,
      strategy: FEDERATED[method],
      clustering: method === 'floe',
      rounds: scenario.rounds,
      clientsPerRound: Math.max(1, Math.round(scenario.participation * clients.length)),
      quorum: Math.max(1, Math.ceil(0.5 * scenario.participation * clients.length)),
      roundDeadlineSec: scenario.roundDeadlineSec,
      localSteps: scenario.localSteps,
      learningRate: scenario.learningRate,
      batchSize: scenario.batchSize,
      maxRank: scenario.maxRank,
      alpha: scenario.alpha,
      // every method's job starts from the same adapter and samples alike: a run is a function of its seed
      seed: `simulate-${scenario.seed}`,
    });
    const workload = jobSpec('floe');

    // local-only: the plan each device would make, the compute a Floe device spends (rounds, then personalization)
    await timed('local', clients.length * scenario.localSteps * (scenario.rounds + 1), () =>
      pMap(
        clients,
        (c) => {
          const plan = planRound(deviceProfile(cost.hostGflops, c.tier), architecture, workload, cost);
          return worker('local', c, {
            kind: 'local',
            client: spec(c),
            plan: { rank: plan.plan.rank, layers: plan.plan.layers, microBatch: plan.microBatch },
            alpha: scenario.alpha,
            targetModules: scenario.targetModules,
            localSteps: scenario.localSteps,
            rounds: scenario.rounds,
            extraSteps: scenario.localSteps,
            batchSize: scenario.batchSize,
            learningRate: scenario.learningRate,
            seed: scenario.seed + 1,
          });
        },
        { concurrency: cores },
      ),
    );

    for (const method of Object.keys(FEDERATED) as FederatedMethod[]) {
      const personalize = method === 'floe';
      const steps = clients.length * scenario.localSteps * (scenario.rounds + (personalize ? 1 : 0));
      await timed(method, steps, async () => {
        const job = await admin<JobSummary>('POST', '/v1/jobs', jobSpec(method));
        const seen = new Set<number>();
        const poll = setInterval(() => {
          void admin<JobSummary>('GET', `/v1/jobs/${job.id}`).then(
            (summary) => {
              for (const r of summary.rounds) {
                if (r.status === 'open' || seen.has(r.round)) continue;
                seen.add(r.round);
                const seconds = r.endedAt ? (Date.parse(r.endedAt) - Date.parse(r.startedAt)) / 1000 : NaN;
                observer.line(
                  `${method} round ${r.round + 1}/${scenario.rounds}: ${r.status}, ${r.accepted}/${r.sampled} updates, ` +
                    `${r.clusters} cluster(s), ${seconds.toFixed(1)} s`,
                );
              }
            },
            () => undefined,
          );
        }, 1000);
        try {
          await Promise.all(
            clients.map((c) =>
              worker(method, c, {
                kind: 'federate',
                client: spec(c),
                serverUrl,
                joinToken: tokens.join,
                jobId: job.id,
                home: path.join(options.workDir, 'devices', method, c.data.id),
                calibration: cost,
                personalize,
                throttle: c.straggler ? scenario.stragglerSlowdown : 1,
                // the same draws for a client in every method (and in every run of this seed)
                trainingSeed: hashString(`${scenario.seed}:${c.data.id}`),
                ...(c.dieInRound !== undefined
                  ? { dieAt: { round: c.dieInRound, step: Math.floor(scenario.localSteps / 2) } }
                  : {}),
                ...(method === 'floe' ? { cloudUrl } : {}),
              }),
            ),
          );
        } finally {
          clearInterval(poll);
        }
        jobs.set(method, await admin<JobSummary>('GET', `/v1/jobs/${job.id}`));
        if (method === 'floe') {
          const found = await admin<{ clusterId: number; clients: string[] }[]>('GET', `/v1/jobs/${job.id}/clusters`);
          for (const cluster of found) for (const id of cluster.clients) clusters.set(id, cluster.clusterId);
        }
      });
    }
  } finally {
    stopping = true;
    server ??= await serverStart?.catch(() => undefined); // a server still starting is stopped too
    await Promise.all([cloud?.stop(), stopServer(server), workers?.close()]);
  }

  return assemble({
    scenario,
    clients,
    runs,
    jobs,
    clusters,
    inspector,
    heldOut,
    phaseSeconds,
    seconds: (performance.now() - started) / 1000,
  });
}

/** Stops the server child: SIGTERM, then SIGKILL if it has not exited within 10 s. */
async function stopServer(server: ServerProcess | undefined): Promise<void> {
  const child = server?.child;
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  await new Promise<void>((resolve) => {
    const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
    child.once('exit', () => {
      clearTimeout(timer);
      resolve();
    });
    child.kill('SIGTERM');
  });
}

interface Collected {
  scenario: Scenario;
  clients: SimClient[];
  runs: Map<Method, Map<string, ClientRun>>;
  jobs: Map<FederatedMethod, JobSummary>;
  clusters: Map<string, number>;
  inspector: FrameInspector;
  heldOut: HeldOutCheck;
  phaseSeconds: Record<string, number>;
  seconds: number;
}

/**
 * Where a method's figure comes from: the run that scored it and which of its scores. The base
 * reference run scores the base model, the cloud and their fusion; Floe's run also scores its adapter fused.
 */
function scoredBy(method: Method): { run: Method; score: 'edge' | 'cloud' | 'fused' } {
  switch (method) {
    case 'cloud':
      return { run: 'base', score: 'cloud' };
    case 'fused':
      return { run: 'base', score: 'fused' };
    case 'floe_fused':
      return { run: 'floe', score: 'fused' };
    default:
      return { run: method, score: 'edge' };
  }
}

/** The figure each method gives a client, from the workers' results. */
function figureOf(runs: Collected['runs'], method: Method, client: string): number | undefined {
  const { run, score } = scoredBy(method);
  return runs.get(run)?.get(client)?.result?.scores[score];
}

/** What each held-out item of `client` contributed to `method`'s figure. */
function itemsOf(runs: Collected['runs'], method: Method, client: string): ItemScores | undefined {
  const { run, score } = scoredBy(method);
  return runs.get(run)?.get(client)?.result?.scores.items[score];
}

/** The compared pairs' differences on one task's clients, each with its paired bootstrap interval. */
function differencesOf(runs: Collected['runs'], clients: readonly string[], seed: number): Record<string, Interval> {
  const methods = [...new Set(COMPARED.flat())];
  const strata = Object.fromEntries(
    methods.map((method) => [
      method,
      clients.map((id) => {
        const items = itemsOf(runs, method, id);
        if (!items) throw new Error(`no ${method} items for ${id}`);
        return items;
      }),
    ]),
  );
  return pairedBootstrap(strata, COMPARED, { seed }).difference;
}

function assemble(collected: Collected): SimulationResult {
  const { scenario, clients, runs, jobs, clusters, inspector } = collected;
  const tasks: SimulationReport['tasks'] = {};
  const metrics: Record<string, string> = {};
  const clientPoints: ClientPoint[] = [];
  for (const task of scenario.tasks) {
    const manifest = taskManifest(task);
    metrics[task] = METRIC_LABEL[manifest.metric] ?? manifest.metric;
    const ofTask = clients.filter((c) => c.data.task === task).map((c) => c.data.id);
    const methods = Object.fromEntries(
      METHODS.map((method) => {
        const perClientFigures: Record<string, number> = {};
        for (const id of ofTask) {
          const value = figureOf(runs, method, id);
          if (value === undefined) throw new Error(`no ${method} figure for ${id}`);
          perClientFigures[id] = value;
          clientPoints.push({ task, client: id, method, value });
        }
        return [method, { mean: mean(Object.values(perClientFigures)), perClient: perClientFigures }];
      }),
    ) as SimulationReport['tasks'][string]['methods'];
    tasks[task] = {
      metric: metrics[task],
      higherIsBetter: manifest.metric !== 'bits-per-byte',
      differences: differencesOf(runs, ofTask, scenario.seed),
      methods,
    };
  }

  // metric per round: the mean over a task's clients of the adapter each round started from, the final one last
  const roundPoints: RoundPoint[] = [];
  for (const method of ['local', 'fedavg', 'hetlora', 'floe'] as const) {
    for (const task of scenario.tasks) {
      const ofTask = clients.filter((c) => c.data.task === task).map((c) => runs.get(method)?.get(c.data.id));
      for (let round = 0; round < scenario.rounds; round++) {
        const values = ofTask.flatMap((r) => (r?.heldOut.has(round) ? [r.heldOut.get(round) as number] : []));
        if (values.length > 0) roundPoints.push({ task, method, round, value: mean(values) });
      }
      const finals = ofTask.flatMap((r) => (r?.result ? [r.result.scores.edge] : []));
      roundPoints.push({ task, method, round: scenario.rounds, value: mean(finals) });
    }
  }

  const floeRuns = runs.get('floe') ?? new Map<string, ClientRun>();
  const bytes: SimulationReport['bytesPerClient'] = {};
  const byteRows: ClientBytes[] = [];
  const cells: ClusterCell[] = [];
  for (const c of clients) {
    const run = floeRuns.get(c.data.id);
    const sent = run?.bytesSent ?? 0;
    const received = (run?.rounds ?? []).reduce((n, r) => n + r.bytesDown, 0);
    bytes[c.data.id] = { sent, received };
    byteRows.push(
      { client: c.data.id, direction: 'sent', bytes: sent },
      { client: c.data.id, direction: 'received', bytes: received },
    );
    for (const r of run?.rounds ?? []) {
      cells.push({ client: c.data.id, task: c.data.task, round: r.round, cluster: `cluster ${r.clusterId}` });
    }
    const final = run?.deviceId === undefined ? undefined : clusters.get(run.deviceId);
    if (final !== undefined) {
      cells.push({ client: c.data.id, task: c.data.task, round: scenario.rounds, cluster: `cluster ${final}` });
    }
  }
  const found = clients.map((c) => {
    const deviceId = floeRuns.get(c.data.id)?.deviceId;
    return deviceId === undefined ? `none:${c.data.id}` : (clusters.get(deviceId) ?? `none:${c.data.id}`);
  });
  const clusteringAri = adjustedRandIndex(
    found,
    clients.map((c) => c.data.task),
  );

  const roundSeconds: Record<string, number[]> = {};
  const timeRows: RoundTime[] = [];
  for (const [method, job] of jobs) {
    roundSeconds[method] = job.rounds.map((r) =>
      r.endedAt ? Math.max(0, (Date.parse(r.endedAt) - Date.parse(r.startedAt)) / 1000) : 0,
    );
    roundSeconds[method].forEach((seconds, round) => timeRows.push({ method, round, seconds }));
  }

  const report: SimulationReport & SimulationDetails = {
    config: { ...scenario },
    machine: thisMachine(),
    tasks,
    clusteringAri,
    rawBytesAtServer: inspector.inspection.rawBytes,
    bytesPerClient: bytes,
    roundSeconds,
    inspection: {
      frames: inspector.inspection.frames,
      bytes: inspector.inspection.bytes,
      findings: inspector.inspection.findings,
    },
    heldOutCheck: { checked: collected.heldOut.checked, leaks: collected.heldOut.leaks.length },
    clients: Object.fromEntries(
      clients.map((c) => [
        c.data.id,
        {
          task: c.data.task,
          tier: c.tier,
          straggler: c.straggler,
          ...(c.dieInRound !== undefined ? { diesInRound: c.dieInRound } : {}),
          profile: c.data.profile,
          plans: Object.fromEntries(
            [...runs].flatMap(([method, byClient]) => {
              const plan = byClient.get(c.data.id)?.plan;
              return plan && method !== 'base' ? [[method, plan]] : [];
            }),
          ),
          personalization: floeRuns.get(c.data.id)?.result?.rule ?? null,
          fusedFallback: {
            fused: runs.get('base')?.get(c.data.id)?.result?.scores.fusedFallback ?? null,
            floe_fused: floeRuns.get(c.data.id)?.result?.scores.fusedFallback ?? null,
          },
        },
      ]),
    ),
    jobs: Object.fromEntries(
      [...jobs].map(([method, job]) => [
        method,
        job.rounds.map((r) => ({
          round: r.round,
          status: r.status,
          sampled: r.sampled,
          accepted: r.accepted,
          clusters: r.clusters,
          // the server's own figures of the round (the clients' claims, client.*, left out)
          metrics: Object.fromEntries(Object.entries(r.metrics).filter(([name]) => !name.startsWith('client.'))),
        })),
      ]),
    ),
    metricPerRound: roundPoints,
    phaseSeconds: collected.phaseSeconds,
    seconds: collected.seconds,
  };
  parse(SimulationReport, report, 'simulation report');
  const charts: Record<string, TopLevelSpec> = {
    'metric-per-round': metricPerRound(roundPoints, metrics),
    'per-client': perClient(clientPoints, metrics),
    'bytes-per-client': bytesPerClient(byteRows),
    'round-times': roundTimes(timeRows),
    'cluster-assignment': clusterAssignment(cells),
    differences: differences(
      Object.entries(tasks).flatMap(([task, result]) =>
        Object.entries(result.differences ?? {}).map(([pair, d]) => ({ task, pair: pair.replace('-', ' - '), ...d })),
      ),
      metrics,
    ),
  };
  return { report, claims: checkClaims(report), charts };
}
