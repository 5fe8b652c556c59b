/**
 * A whole device, as `floe-edge join` runs it: loads its checkpoint and local data, enrolls (once),
 * finds the job to join, measures what training costs it (cached), plans its rank, layers and
 * micro-batch for its profile, federates round after round, and when the job ends keeps a personalized
 * adapter (PEFT layout, in its store) with its held-out figure beside the base model's.
 */
import { type Checkpoint, architectureOf, checkpointSha256, loadCheckpoint } from '@floe/model';
import { type LoraAdapter, type OpenJob, type RoundEnd, type RoundStart, fromWireAdapter } from '@floe/shared';
import { type LocalData, type Score, readDataDir } from '@floe/tasks';
import { calibrate } from './calibration.js';
import { request } from './connection.js';
import { DeviceStore } from './device-store.js';
import { FederationError } from './errors.js';
import { FederationClient, type RoundSent, ensureIdentity } from './federation-client.js';
import { LocalTrainer } from './local-trainer.js';
import { LoraParticipant } from './participant.js';
import { type Personalization, downloadClusterAdapter, personalize } from './personalize.js';
import { type Plan, type TrainingCost, planRound } from './planner.js';
import { type ProfileOverrides, TIERS, deviceProfile } from './profile.js';

export interface DeviceOptions {
  serverUrl: string;
  joinToken?: string | undefined;
  /** The device's own directory (identity, state, adapters). */
  home: string;
  /** Checkpoint directory of the base model (must be the job's: checked by SHA-256). */
  model: string;
  /** The local data directory (see @floe/tasks data-dir.ts), or data already read. */
  data: string | LocalData;
  /** A simulated class of device; its compute and link are emulated on this host. */
  tier?: string | undefined;
  /**
   * Runs this many times slower than its plan assumes (>= 1; a simulated busy or throttled device, a
   * straggler): the plan does not know, the round's deadline does.
   */
  throttle?: number;
  profile?: ProfileOverrides;
  /** Join this job (default: the first running job over this device's base model). */
  job?: string | undefined;
  seqLen?: number;
  threads?: number;
  /** The training cost of this host, if already measured (simulations share one). */
  calibration?: TrainingCost;
  /** Score the held-out split with the adapter each round starts from (default true). */
  evaluateRounds?: boolean;
  /** Score the held-out split with the base model and the adapter kept, once the job ends (default true). */
  evaluateAtEnd?: boolean;
  /**
   * Seeds local training the same way in every job (batch order per round), so that a simulation replays
   * from its seed; default: each job draws its own.
   */
  trainingSeed?: number;
  /** Lines worth showing a person (one per round, and what the device decided). */
  log?: (line: string) => void;
  /** How long to wait for a job to join, ms (default: as long as it takes). */
  waitForJobMs?: number;
  /** Sees every frame the device sends, as it leaves. */
  onFrameSent?: (event: string, frame: Uint8Array) => void;
  /** Sees every local training step of every round. */
  onStep?: (round: number, step: number, loss: number) => void;
  /**
   * Fine-tune the cluster's final adapter on local data when that validates better (default true);
   * false keeps the federation's adapter as it is.
   */
  personalize?: boolean;
}

export interface RoundReport extends RoundSent {
  /** Held-out figure of the adapter the round started from. */
  heldOut?: Score | undefined;
}

export interface DeviceOutcome {
  jobId: string;
  status: RoundEnd['jobStatus'];
  rounds: RoundReport[];
  base?: Score | undefined;
  personalized?: Score | undefined;
  personalization?: Personalization | undefined;
  adapterDir?: string | undefined;
}

export interface Device {
  clientId: string;
  plan: Plan;
  job: OpenJob;
  client: FederationClient;
  trainer: LocalTrainer;
  /** Resolves when the job ends (completed or stopped) and the personalized adapter is saved. */
  finished: Promise<DeviceOutcome>;
  stop(): Promise<void>;
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
const kib = (bytes: number) => `${(bytes / 1024).toFixed(1)} KiB`;

/** GET /v1/jobs/open with the device's credential. */
export async function openJobs(serverUrl: string, credential: string): Promise<OpenJob[]> {
  const response = await request(serverUrl, '/v1/jobs/open', { headers: { authorization: `Bearer ${credential}` } });
  if (!response.ok) throw new FederationError('jobs_unavailable', `GET /v1/jobs/open: ${response.status}`);
  return (await response.json()) as OpenJob[];
}

/** What a calibration depends on: the checkpoint, the row length, the threads and the adapted modules. */
export function calibrationKey(workload: {
  sha256: string;
  seqLen: number;
  threads: number;
  targetModules: readonly string[];
}): string {
  const modules = [...workload.targetModules].sort().join(',');
  return `calibration:${workload.sha256}:${workload.seqLen}:${workload.threads}:${modules}`;
}

/** The cost of training the job's shapes on this host: measured once per workload and kept in `store`. */
export async function measuredTrainingCost(
  store: DeviceStore,
  checkpoint: Checkpoint,
  options: { model: string; sha256: string; seqLen: number; threads: number; targetModules: string[] },
  log: (line: string) => void,
): Promise<TrainingCost> {
  const key = calibrationKey(options);
  const cached = store.cached<TrainingCost>(key);
  if (cached) return cached;
  log('measuring training cost on this device (once; about a minute)');
  const cost = await calibrate({
    model: options.model,
    config: checkpoint.config,
    seqLen: options.seqLen,
    targetModules: options.targetModules,
    threads: options.threads,
  });
  store.cache(key, cost);
  return cost;
}

export async function startDevice(options: DeviceOptions): Promise<Device> {
  const log = options.log ?? (() => undefined);
  if (options.tier !== undefined && !TIERS[options.tier]) {
    throw new FederationError('unknown_tier', `unknown tier ${options.tier}; known: ${Object.keys(TIERS).join(', ')}`);
  }
  const checkpoint = await loadCheckpoint(options.model);
  const sha256 = await checkpointSha256(options.model);
  const data = typeof options.data === 'string' ? readDataDir(options.data) : options.data;
  const store = new DeviceStore(options.home);
  const seqLen = Math.min(options.seqLen ?? 128, checkpoint.config.max_position_embeddings);
  const threads = options.threads ?? 2;

  // enroll with what is declared; the hello carries the measured profile
  const declared = deviceProfile(0, options.tier, options.profile);
  const { credential, clientId } = await ensureIdentity(store, options.serverUrl, options.joinToken, declared);

  const until = Date.now() + (options.waitForJobMs ?? Infinity);
  let job: OpenJob | undefined;
  for (let announced = false; ; announced = true) {
    const jobs = await openJobs(options.serverUrl, credential);
    job = options.job ? jobs.find((j) => j.id === options.job) : jobs.find((j) => j.spec.baseModel.sha256 === sha256);
    if (job) break;
    if (Date.now() > until) throw new FederationError('no_job', 'no running job to join');
    if (!announced) log(options.job ? `waiting for job ${options.job}` : 'waiting for a job over this base model');
    await sleep(1000);
  }
  if (job.spec.baseModel.sha256 !== sha256) {
    throw new FederationError(
      'wrong_base_model',
      `job ${job.id} trains ${job.spec.baseModel.id} (${job.spec.baseModel.sha256.slice(0, 12)}...), this device holds ${sha256.slice(0, 12)}...`,
    );
  }
  const { spec } = job;
  const cost =
    options.calibration ??
    (await measuredTrainingCost(
      store,
      checkpoint,
      { model: options.model, sha256, seqLen, threads, targetModules: spec.targetModules },
      log,
    ));
  const profile = deviceProfile(cost.hostGflops, options.tier, options.profile);
  const plan = planRound(
    profile,
    architectureOf(checkpoint.config),
    {
      targetModules: spec.targetModules,
      maxRank: spec.maxRank,
      localSteps: spec.localSteps,
      batchSize: spec.batchSize,
      roundDeadlineSec: spec.roundDeadlineSec,
    },
    cost,
  );
  const emulate = options.tier !== undefined;
  log(
    `plan: rank ${plan.plan.rank}, ${plan.plan.layers ? `layers ${plan.plan.layers.join(',')}` : 'all layers'}, ` +
      `micro-batch ${plan.microBatch} (limited by ${plan.limitedBy}); estimated ${plan.estimates.roundSeconds.toFixed(1)} s ` +
      `and ${plan.estimates.peakMemoryMiB.toFixed(0)} MiB a round`,
  );

  const trainer = new LocalTrainer({
    checkpoint,
    data,
    seqLen,
    microBatch: plan.microBatch,
    threads,
    slowdown: (emulate ? plan.estimates.slowdown : 1) * Math.max(1, options.throttle ?? 1),
  });
  let lastLocal: RoundReport | undefined;
  const participant = new LoraParticipant({
    trainer,
    plan: plan.plan,
    seed: options.trainingSeed ?? 0,
    seedPerJob: options.trainingSeed === undefined,
    baseModelSha256: sha256,
    ...(emulate ? { emulateLink: { uplinkMbps: profile.uplinkMbps, downlinkMbps: profile.downlinkMbps } } : {}),
    ...(options.onStep
      ? { onStep: (start: RoundStart, step: number, loss: number) => options.onStep?.(start.round, step, loss) }
      : {}),
  });
  const client = new FederationClient({
    serverUrl: options.serverUrl,
    joinToken: options.joinToken,
    store,
    profile,
    plan: plan.plan,
    participant,
    ...(options.onFrameSent ? { onFrameSent: options.onFrameSent } : {}),
  });
  const rounds: RoundReport[] = [];
  const evaluateRounds = options.evaluateRounds ?? true;
  client.on('round_start', (start: RoundStart) => log(`round ${start.round}: training at rank ${start.config.rank}`));
  client.on('round_sent', (sent) => {
    const report: RoundReport = { ...sent };
    rounds.push(report);
    lastLocal = report;
    const m = sent.update.metrics;
    const accepted = sent.reply.type === 'update_ack' ? sent.reply.accepted : false;
    const refusal = sent.reply.type === 'update_ack' ? sent.reply.error?.code : sent.reply.code;
    const line = (heldOut?: Score) =>
      `round ${sent.start.round} | rank ${sent.start.config.rank} | ${m['steps'] ?? 0} steps | loss ${(m['loss'] ?? NaN).toFixed(3)} | ` +
      `up ${kib(sent.bytesUp)} down ${kib(sent.bytesDown)} | ${accepted ? 'accepted' : `refused (${refusal ?? '?'})`}` +
      (heldOut ? ` | held-out ${heldOut.metric} ${heldOut.value.toFixed(4)} (round start)` : '');
    if (!evaluateRounds || !sent.start.adapter) {
      log(line());
      return;
    }
    // the figure of what the federation handed this device this round, scored after sending
    void trainer.evaluate(fromWireAdapter(sent.start.adapter)).then(
      (heldOut) => {
        report.heldOut = heldOut;
        log(line(heldOut));
      },
      () => log(line()),
    );
  });
  client.on('round_failed', ({ start, error }) => log(`round ${start.round}: ${error.message}`));
  client.on('server_error', (error) => log(`server: ${error.code} ${error.message}`));
  client.on('disconnect', (reason) => {
    if (reason !== 'io client disconnect') log(`link down (${reason}); reconnecting`);
  });
  client.on('reconnect', () => log('link back'));

  const jobId = job.id;
  const finished = client.jobEnd(jobId).then(async (end): Promise<DeviceOutcome> => {
    const outcome: DeviceOutcome = { jobId, status: end.jobStatus, rounds };
    if (end.jobStatus !== 'completed') return outcome;
    log(lastLocal ? 'job completed: personalizing' : 'job completed without sampling this device: personalizing');
    // a device never sampled (participation below 1) takes its cluster's adapter at the rank it would have trained
    const rank =
      lastLocal?.start.config.rank ??
      (spec.strategy === 'fedavg' ? spec.maxRank : Math.min(plan.plan.rank, spec.maxRank));
    let cluster: LoraAdapter;
    try {
      cluster = await downloadClusterAdapter(options.serverUrl, credential, jobId, end.clusterId, {
        rank,
        ...(plan.plan.layers ? { layers: plan.plan.layers } : {}),
      });
    } catch (error) {
      // the job's adapters go to the devices that took part in it; one never sampled keeps the base model
      if (error instanceof FederationError && error.code === 'not_a_participant') {
        log('this device took no part in the job: no cluster adapter for it; the base model stays');
        return outcome;
      }
      throw error;
    }
    const personalization: Personalization =
      options.personalize === false
        ? { adapter: cluster, rule: 'cluster' }
        : await personalize(trainer, cluster, {
            steps: spec.localSteps,
            batchSize: spec.batchSize,
            learningRate: spec.learningRate,
            seed: 1,
          });
    const adapterDir = await store.savePersonalAdapter(jobId, personalization.adapter, spec.baseModel.id);
    const evaluate = options.evaluateAtEnd ?? true;
    const [base, personalized] = evaluate
      ? [await trainer.evaluate(), await trainer.evaluate(personalization.adapter)]
      : [undefined, undefined];
    store.updateJob(jobId, {
      status: 'completed',
      ...(base ? { base: base.value, metric: base.metric } : {}),
      ...(personalized ? { personalized: personalized.value } : {}),
    });
    if (base && personalized) {
      log(
        `personalized (${personalization.rule}): held-out ${base.metric} ${base.value.toFixed(4)} (base) -> ` +
          `${personalized.value.toFixed(4)}; adapter in ${adapterDir}`,
      );
    }
    return { ...outcome, base, personalized, personalization, adapterDir };
  });
  await client.start();
  return {
    clientId: client.clientId || clientId,
    plan,
    job,
    client,
    trainer,
    finished,
    async stop() {
      await client.stop();
      await trainer.dispose();
    },
  };
}
