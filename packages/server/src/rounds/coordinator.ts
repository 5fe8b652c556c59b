/**
 * Jobs and their rounds. A running job without an open round samples idle clients, records the round
 * (sampled clients, their rank and cluster, the deadline) and sends each its `round_start`. Every
 * update is checked before it is accepted, and an accepted update is committed to the store before
 * its ack, so a restart never loses one. A round closes when every sampled client has answered or at
 * its deadline; with at least `quorum` accepted updates it is aggregated (per cluster when clustering
 * is on), otherwise it fails and the job moves on; stragglers only miss that round.
 */
import {
  type Assignment,
  checkAdapter,
  checkPlan,
  configureRound,
  foldBytes,
  foldable,
  initialAdapter,
  MAX_CLUSTERED_UPDATES,
  MAX_FOLD_BYTES,
  MAX_HELD_UPDATES,
  layersKey,
  roundStartMessage,
  startAdapter,
} from '@floe/federation';
import {
  CodecError,
  FloeError,
  type JobSpec,
  type LoraAdapter,
  type Metrics,
  type RankPlan,
  type RoundEnd,
  type RoundStart,
  type Update,
  type UpdateAck,
  adapterFromTensors,
  adapterModuleShapes,
  fromWireAdapter,
  ownWireTensor,
  parseSafetensors,
  toWireAdapter,
} from '@floe/shared';
import type { ServerMetrics } from '../metrics.js';
import { Mutex } from 'async-mutex';
import type { JobRow, RoundRow, Store } from '../store/store.js';
import type { AggregationInput, AggregationOutput, RoundAggregator } from '../aggregation/round-aggregation.js';

/** What replicas tell each other: events on a replica's connections for the coordinator, and round starts. */
export type ReplicaEvent =
  | { type: 'ready' }
  | { type: 'round_complete'; jobId: string; round: number }
  | { type: 'refused'; jobId: string; round: number; clientId: string }
  | { type: 'job_changed'; jobId: string }
  /** To every replica: send the round's start to the sampled devices connected here. */
  | { type: 'round_started'; jobId: string; round: number };

/** The device connections: on this server alone, or on every replica (through Redis). */
export interface RoundTransport {
  /** Sends to a client's connection on whichever replica holds it (dropped when it has none). */
  send(clientId: string, message: RoundStart | RoundEnd): void;
  /** Whether the client's connection is held by this process. */
  isLocal(clientId: string): boolean;
  /** Connected clients that said hello with a plan (they may be sampled), on every replica. */
  readyClients(): Promise<Map<string, RankPlan>>;
  /** Tells the other replicas (processes) about an event here; a no-op on a single server. */
  tellReplicas(event: ReplicaEvent): void;
}

export interface Logger {
  info(object: object, message: string): void;
  warn(object: object, message: string): void;
  error(object: object, message: string): void;
}

export interface CoordinatorOptions {
  /** How long a job waits for `clientsPerRound` idle clients before starting with a quorum. */
  gatherMs: number;
  /** After a restart, an open round's deadline is moved to at least now + this, so clients can reconnect. */
  restartGraceMs: number;
  maxFrameBytes: number;
  /**
   * One of several replicas: it coordinates only once it holds the lease (`takeOver`); until then it
   * stores the updates of its own connections and tells the coordinator, which starts and closes rounds.
   */
  replicated?: boolean;
}

export class JobError extends FloeError {}

/** How long to wait before trying again to close a round whose closing failed in the store. */
const RETRY_MS = 5000;
/** How often a coordinating replica looks for jobs that could start a round (events may be lost). */
const RECONCILE_MS = 5000;

/**
 * Every entry point (a client's message, an admin call, a timer) runs under one lock: the store answers
 * asynchronously, and a round's checks and writes (is it open, is this update a duplicate, which idle
 * clients to sample) must not interleave with another event's.
 */
export class Coordinator {
  private readonly lock = new Mutex();
  /** Whether this server starts and closes rounds (always, unless it is a replica without the lease). */
  private coordinating: boolean;
  private scheduleTimer: NodeJS.Timeout | undefined;
  private reconcileTimer: NodeJS.Timeout | undefined;
  private readonly deadlineTimers = new Map<string, NodeJS.Timeout>();
  private readonly gatherTimers = new Map<string, NodeJS.Timeout>();
  /** Clients refused in the current round of a job (they may still retry until it closes). */
  private readonly refused = new Map<string, Set<string>>();
  private closed = false;
  /** Jobs whose open round is being aggregated. */
  private readonly closing = new Set<string>();

  constructor(
    private readonly store: Store,
    private readonly metrics: ServerMetrics,
    private readonly transport: RoundTransport,
    private readonly log: Logger,
    private readonly options: CoordinatorOptions,
    private readonly aggregator: RoundAggregator,
  ) {
    this.coordinating = !options.replicated;
    if (options.replicated) {
      // Events between replicas are hints and can be lost (a replica dying as it sends one): the
      // coordinator looks again every few seconds for jobs that could start a round.
      this.reconcileTimer = setInterval(() => {
        if (!this.coordinating || this.closed || this.lock.isLocked()) return;
        void this.lock
          .runExclusive(() => this.schedule())
          .catch((error: unknown) => this.log.error({ err: error }, 'could not schedule'));
      }, RECONCILE_MS).unref();
    }
  }

  get isCoordinating(): boolean {
    return this.coordinating;
  }

  /**
   * Starts coordinating: picks up rounds left open by a previous process (or by the coordinating replica
   * that died) and starts the rounds that can start.
   */
  takeOver(): Promise<void> {
    return this.lock.runExclusive(async () => {
      if (this.closed) return;
      const wasCoordinating = this.coordinating;
      this.coordinating = true;
      await this.recoverOpenRounds(wasCoordinating ? 'restart' : 'takeover');
      await this.schedule();
    });
  }

  /** Picks up rounds left open by a previous process (a single server at start-up). */
  recover(): Promise<void> {
    return this.lock.runExclusive(() => this.recoverOpenRounds('restart'));
  }

  private async recoverOpenRounds(why: 'restart' | 'takeover'): Promise<void> {
    for (const round of await this.store.openRounds()) {
      const job = await this.store.job(round.jobId);
      if (job?.status !== 'running' || job.currentRound !== round.round) continue;
      // A round that was being aggregated, or has every update, closes now. Otherwise a restarted server
      // gives devices time to reconnect; a replica taking over keeps the deadline (the devices are
      // connected to the other replicas, and those of the dead one reconnect to them meanwhile).
      const complete = round.closing || round.accepted >= round.sampled.length;
      const deadline = complete
        ? Date.now()
        : Math.ceil(
            Math.max(round.deadline, this.options.replicated ? Date.now() : Date.now() + this.options.restartGraceMs),
          );
      if (deadline !== round.deadline && !complete)
        await this.store.updateRound(round.jobId, round.round, { deadline });
      this.armDeadline(round.jobId, round.round, deadline);
      this.log.info(
        {
          jobId: round.jobId,
          round: round.round,
          accepted: round.accepted,
          closing: round.closing,
          deadline: new Date(deadline).toISOString(),
          why,
        },
        'resuming open round',
      );
    }
    this.metrics.activeJobs.set((await this.store.jobs()).filter((j) => j.status === 'running').length);
  }

  /** An event another replica told about (all but `round_started` only matter to the coordinator). */
  onReplicaEvent(event: ReplicaEvent): void {
    if (this.closed) return;
    if (event.type === 'round_started') {
      void this.sendRoundStartsHere(event.jobId, event.round).catch((error: unknown) =>
        this.log.error({ jobId: event.jobId, err: error }, 'could not send round starts'),
      );
      return;
    }
    if (!this.coordinating) return;
    switch (event.type) {
      case 'ready':
        void this.scheduleSoon(); // replicas only: it sets a timer
        break;
      case 'round_complete':
        this.safely(event.jobId, async () => {
          const round = await this.store.round(event.jobId, event.round);
          if (round && round.accepted >= round.sampled.length) await this.closeRound(event.jobId, event.round);
        });
        break;
      case 'refused':
        // under the lock, and only for the round it was refused in (the set is that round's)
        void this.lock
          .runExclusive(async () => {
            const job = await this.store.job(event.jobId);
            if (job?.currentRound === event.round) this.refusedIn(event.jobId).add(event.clientId);
          })
          .catch((error: unknown) => this.log.warn({ err: error }, 'could not record a refusal'));
        break;
      case 'job_changed':
        this.safely(event.jobId, async () => {
          const job = await this.store.job(event.jobId);
          if (job && job.status !== 'running') this.forgetJob(job.id);
          await this.schedule();
        });
        break;
    }
  }

  /** Stops every timer and waits for the work already under way (the store may be closed after it). */
  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.scheduleTimer);
    clearInterval(this.reconcileTimer);
    for (const timer of [...this.deadlineTimers.values(), ...this.gatherTimers.values()]) clearTimeout(timer);
    this.deadlineTimers.clear();
    this.gatherTimers.clear();
    await this.lock.runExclusive(() => undefined);
  }

  // ------------------------------------------------------------------------------------------ jobs

  createJob(id: string, spec: JobSpec): Promise<JobRow> {
    return this.lock.runExclusive(() => this.addJob(id, spec));
  }

  private async addJob(id: string, spec: JobSpec): Promise<JobRow> {
    if (spec.quorum > spec.clientsPerRound) {
      throw new JobError('invalid_job', `quorum ${spec.quorum} exceeds clientsPerRound ${spec.clientsPerRound}`);
    }
    if (!foldable(spec) && spec.clientsPerRound > MAX_HELD_UPDATES) {
      throw new JobError(
        'invalid_job',
        `${spec.robustAggregation ?? 'mean'} aggregation holds a round's updates in memory at once: at most ` +
          `${MAX_HELD_UPDATES} clients per round (the weighted mean folds any number)`,
      );
    }
    if (spec.clustering && spec.clientsPerRound > MAX_CLUSTERED_UPDATES) {
      throw new JobError(
        'invalid_job',
        `clustering compares every pair of a round's updates: at most ${MAX_CLUSTERED_UPDATES} clients per round`,
      );
    }
    const shapes = adapterModuleShapes(spec.baseModel.architecture, spec.targetModules); // throws on unknown modules
    const clusters = spec.clustering ? Math.min(spec.maxClusters ?? 8, spec.clientsPerRound) : 1;
    const sums = clusters * foldBytes(spec.strategy, shapes.values(), spec.maxRank);
    if (sums > MAX_FOLD_BYTES) {
      throw new JobError(
        'invalid_job',
        `aggregating ${clusters} cluster(s) of these modules keeps ${(sums / 1024 ** 3).toFixed(1)} GiB of running ` +
          `sums, over the server's ${MAX_FOLD_BYTES / 1024 ** 3} GiB (fewer modules or clusters, or hetlora)`,
      );
    }
    // f32 factors at the job's largest rank, plus room for tensor names and the message around them
    let frameBytes = 64 * 1024;
    for (const [out, inner] of shapes.values()) frameBytes += 4 * spec.maxRank * (out + inner) + 256;
    if (frameBytes > this.options.maxFrameBytes) {
      throw new JobError(
        'invalid_job',
        `an adapter of rank ${spec.maxRank} over these modules needs frames of ~${frameBytes} bytes, over the ` +
          `server's frame limit of ${this.options.maxFrameBytes} (FLOE_MAX_FRAME_BYTES)`,
      );
    }
    const job: JobRow = {
      id,
      spec,
      status: 'running',
      currentRound: 0,
      createdAt: new Date().toISOString(),
      state: { centroids: [], clusterOf: {} },
    };
    await this.store.addJob(job);
    this.metrics.activeJobs.inc();
    this.log.info({ jobId: id, strategy: spec.strategy, rounds: spec.rounds }, 'job created');
    if (this.coordinating) await this.schedule();
    else this.transport.tellReplicas({ type: 'job_changed', jobId: id });
    return job;
  }

  stopJob(id: string): Promise<JobRow> {
    return this.lock.runExclusive(() => this.stop(id));
  }

  private async stop(id: string): Promise<JobRow> {
    const job = await this.store.job(id);
    if (!job) throw new JobError('unknown_job', `no job ${id}`);
    if (job.status !== 'running') return job;
    const open = await this.store.round(id, job.currentRound);
    const isOpen = open?.status === 'open';
    const stopped = await this.store.endRound({
      jobId: id,
      job: { status: 'stopped' },
      // the coordinating replica may be ending or starting that round right now: then stop after it
      expect: { round: job.currentRound, open: isOpen },
      ...(open && isOpen
        ? { round: { index: open.round, fields: { status: 'failed', endedAt: new Date().toISOString() } } }
        : {}),
    });
    if (!stopped) return this.stop(id);
    const ended = isOpen ? open : await this.store.round(id, job.currentRound - 1);
    // the round the stop ended failed; with none open, the last round's end is told again as it was
    if (ended) {
      const aggregated = !isOpen && ended.status === 'aggregated';
      await this.sendRoundEnd(
        job,
        ended,
        'stopped',
        aggregated ? 'aggregated' : 'failed',
        {},
        {},
        aggregated ? ended.accepted : 0,
      );
    }
    this.forgetJob(id);
    this.metrics.activeJobs.dec();
    this.log.info({ jobId: id }, 'job stopped');
    if (this.coordinating) await this.schedule();
    else this.transport.tellReplicas({ type: 'job_changed', jobId: id });
    return (await this.store.job(id)) as JobRow;
  }

  /** Drops what this server keeps about a job that is no longer running. */
  private forgetJob(id: string): void {
    this.refused.delete(id);
    this.clearTimers(id);
  }

  // --------------------------------------------------------------------------------------- clients

  /**
   * A client said hello (the transport now counts it ready, with its plan): it may be sampled; if it is
   * owed a round_start (after a reconnect, perhaps to another replica), it gets it.
   */
  clientReady(clientId: string): Promise<void> {
    return this.lock.runExclusive(async () => {
      if (this.closed) return;
      for (const job of await this.store.jobs()) {
        if (job.status !== 'running') continue;
        const round = await this.store.round(job.id, job.currentRound);
        const open = round?.status === 'open' && !round.closing;
        const assignment = open ? round.sampled.find((a) => a.clientId === clientId) : undefined;
        if (round && assignment && !(await this.store.hasUpdate(job.id, round.round, clientId))) {
          await this.sendRoundStart(job, round, assignment, new Map());
        }
      }
      if (this.coordinating) await this.scheduleSoon();
      else this.transport.tellReplicas({ type: 'ready' });
    });
  }

  /** Ready clients not in `busy` (sampled in an open round), with their plans. */
  private async connectedIdle(busy: ReadonlySet<string>): Promise<Map<string, RankPlan>> {
    const ready = await this.transport.readyClients();
    for (const clientId of busy) ready.delete(clientId);
    return ready;
  }

  /**
   * The running jobs without an open round, and the clients sampled in the open rounds of the others:
   * who is busy is what the store says (a round ended by another replica has released its clients).
   */
  private async runningJobs(): Promise<{ idleJobs: JobRow[]; busy: Set<string> }> {
    const idleJobs: JobRow[] = [];
    const busy = new Set<string>();
    for (const job of await this.store.jobs()) {
      if (job.status !== 'running') continue;
      const round = await this.store.round(job.id, job.currentRound);
      if (round?.status === 'open') for (const a of round.sampled) busy.add(a.clientId);
      else idleJobs.push(job);
    }
    return { idleJobs, busy };
  }

  /**
   * A schedule after a client became ready: at once on a single server (under the caller's lock); on
   * replicas, coalesced over 100 ms, since each asks every replica for its ready clients.
   */
  private async scheduleSoon(): Promise<void> {
    if (!this.options.replicated) return this.schedule();
    if (this.scheduleTimer) return;
    this.scheduleTimer = setTimeout(() => {
      this.scheduleTimer = undefined;
      void this.lock
        .runExclusive(() => this.schedule())
        .catch((error: unknown) => this.log.error({ err: error }, 'could not schedule'));
    }, 100);
  }

  // --------------------------------------------------------------------------------------- updates

  /**
   * Checks and, if sound, durably accepts an update. `frame` is the received bytes (stored as the
   * update's record); `update` was decoded from it without the finiteness check, done here so that a
   * NaN update gets an ack naming its round.
   */
  receiveUpdate(clientId: string, frame: Uint8Array, update: Update): Promise<UpdateAck> {
    return this.lock.runExclusive(() => {
      if (!this.closed) return this.accept(clientId, frame, update);
      const error = { code: 'internal_error', message: 'the server is shutting down: send the update again' };
      return { type: 'update_ack', jobId: update.jobId, round: update.round, accepted: false, error } as const;
    });
  }

  private async accept(clientId: string, frame: Uint8Array, update: Update): Promise<UpdateAck> {
    // A refused update is not the client's answer: it may send a corrected one until the deadline (the
    // round closes early only once every sampled client has an accepted update). `rejected` counts
    // refused attempts of sampled clients in the open round; a repeat of an accepted update is not one.
    const refuse = async (code: string, message: string): Promise<UpdateAck> => {
      this.metrics.updates.inc({ outcome: code });
      const round = await this.store.round(update.jobId, update.round);
      if (
        code !== 'duplicate_update' &&
        round?.status === 'open' &&
        !round.closing &&
        !this.closing.has(update.jobId) &&
        round.sampled.some((a) => a.clientId === clientId) &&
        !(await this.store.hasUpdate(update.jobId, update.round, clientId))
      ) {
        await this.store.countRejected(update.jobId, update.round);
        if (this.coordinating) this.refusedIn(update.jobId).add(clientId);
        else this.transport.tellReplicas({ type: 'refused', jobId: update.jobId, round: update.round, clientId });
      }
      this.log.warn({ clientId, jobId: update.jobId, round: update.round, code }, `update refused: ${message}`);
      return {
        type: 'update_ack',
        jobId: update.jobId,
        round: update.round,
        accepted: false,
        error: { code, message },
      };
    };

    // a revocation ends the connection on whichever replica holds it, through Redis; should that message
    // be lost, the device's updates are still refused
    if (this.options.replicated && (await this.store.clientStatus(clientId)) !== 'active') {
      return refuse('revoked', `client ${clientId} was revoked`);
    }
    const job = await this.store.job(update.jobId);
    if (!job) return refuse('unknown_job', `no job ${update.jobId}`);
    if (job.status !== 'running') return refuse('job_not_running', `job ${job.id} is ${job.status}`);
    const round = await this.store.round(job.id, job.currentRound);
    if (
      !round ||
      round.status !== 'open' ||
      round.closing ||
      round.round !== update.round ||
      this.closing.has(job.id)
    ) {
      return refuse('wrong_round', `job ${job.id} is not collecting round ${update.round}`);
    }
    const assignment = round.sampled.find((a) => a.clientId === clientId);
    if (!assignment) return refuse('not_sampled', `this client is not sampled in round ${round.round}`);
    if (await this.store.hasUpdate(job.id, round.round, clientId)) {
      return refuse('duplicate_update', `an update of this client is already accepted in round ${round.round}`);
    }
    try {
      for (const tensor of update.adapter.tensors) ownWireTensor(tensor, true);
    } catch (error) {
      if (error instanceof CodecError) return refuse(error.code, error.message);
      throw error;
    }
    const { spec } = job;
    const wrongPlan = checkPlan(spec, assignment, update.plan);
    if (wrongPlan) return refuse(wrongPlan.code, wrongPlan.message);
    let adapter: LoraAdapter;
    try {
      adapter = fromWireAdapter(update.adapter);
    } catch (error) {
      if (error instanceof FloeError) return refuse('bad_adapter', error.message);
      throw error;
    }
    let wrongAdapter;
    try {
      wrongAdapter = checkAdapter(spec, assignment, adapter);
    } catch (error) {
      // layers the plan named that the base model does not have
      if (error instanceof RangeError) return refuse('wrong_layers', error.message);
      throw error;
    }
    if (wrongAdapter) return refuse(wrongAdapter.code, wrongAdapter.message);
    const stored = await this.store.addUpdate({
      jobId: job.id,
      round: round.round,
      clientId,
      numSamples: update.numSamples,
      rank: assignment.rank,
      metrics: update.metrics,
      frame,
    });
    // the coordinating replica began closing the round since it was read
    if (!stored) return refuse('wrong_round', `job ${job.id} is not collecting round ${update.round}`);
    this.metrics.updates.inc({ outcome: 'accepted' });
    this.refused.get(job.id)?.delete(clientId);
    // every sampled client has an accepted update (only sampled clients get one, once each)
    if (stored.roundAccepted >= round.sampled.length) {
      if (!this.coordinating)
        this.transport.tellReplicas({ type: 'round_complete', jobId: job.id, round: round.round });
      // after the ack that completed the round has been sent
      else setImmediate(() => this.safely(job.id, () => this.closeRound(job.id, round.round)));
    }
    return { type: 'update_ack', jobId: job.id, round: round.round, accepted: true };
  }

  // ---------------------------------------------------------------------------------------- rounds

  /** Starts a round for every running job that can start one. */
  private async schedule(): Promise<void> {
    if (this.closed || !this.coordinating) return;
    let running;
    try {
      running = await this.runningJobs();
    } catch (error) {
      this.log.error({ err: error }, 'could not read the jobs to schedule');
      return;
    }
    for (const job of running.idleJobs) {
      // one job that cannot start (its store writes fail) does not keep the others from starting
      try {
        await this.tryStart(job, running.busy);
      } catch (error) {
        this.log.error({ jobId: job.id, err: error }, 'could not start a round');
      }
    }
  }

  /** `busy`: the clients of open rounds; a round started here adds its own. */
  private async tryStart(job: JobRow, busy: Set<string>): Promise<void> {
    const { spec } = job;
    const idle = await this.connectedIdle(busy);
    if (idle.size < spec.quorum) return;
    if (idle.size < spec.clientsPerRound && this.options.gatherMs > 0) {
      if (!this.gatherTimers.has(job.id)) {
        this.gatherTimers.set(
          job.id,
          setTimeout(() => {
            this.gatherTimers.delete(job.id);
            this.safely(job.id, async () => {
              const current = await this.store.job(job.id);
              if (current?.status !== 'running') return;
              if ((await this.store.round(job.id, current.currentRound))?.status !== 'open') {
                const { busy: now } = await this.runningJobs();
                await this.startRound(current, await this.connectedIdle(now), now);
              }
            });
          }, this.options.gatherMs),
        );
      }
      return;
    }
    await this.startRound(job, idle, busy);
  }

  private async startRound(job: JobRow, idle: Map<string, RankPlan>, busy: Set<string>): Promise<void> {
    const { spec } = job;
    if (idle.size < spec.quorum) return;
    const gather = this.gatherTimers.get(job.id);
    if (gather) clearTimeout(gather);
    this.gatherTimers.delete(job.id);

    const clusters = [...new Set((await this.store.adapters(job.id)).map((a) => a.clusterId))];
    const candidates = [...idle].map(([clientId, plan]) => ({ clientId, plan }));
    const sampled = configureRound(
      spec,
      job.state,
      clusters,
      candidates,
      `${job.spec.seed ?? job.id}:${job.currentRound}`,
    );
    const now = Date.now();
    const round: RoundRow = {
      jobId: job.id,
      round: job.currentRound,
      status: 'open',
      startedAt: new Date(now).toISOString(),
      deadline: Math.ceil(now + spec.roundDeadlineSec * 1000),
      endedAt: null,
      sampled,
      accepted: 0,
      rejected: 0,
      dropped: 0,
      clusters: 0,
      metrics: {},
      closing: false,
    };
    // false: the job was stopped (through another replica) since it was read
    if (!(await this.store.addRound(round))) return;
    this.refused.set(job.id, new Set());
    for (const a of sampled) busy.add(a.clientId);
    this.armDeadline(job.id, round.round, round.deadline);
    this.log.info({ jobId: job.id, round: round.round, sampled: sampled.length, idle: idle.size }, 'round started');
    // Each replica sends the starts of its own devices (read from the database), so that the adapters
    // do not cross Redis once per device: one small event does (a round of 1,000 devices would push
    // hundreds of MiB through pub/sub, past Redis's output buffer limit for subscribers).
    this.transport.tellReplicas({ type: 'round_started', jobId: job.id, round: round.round });
    const cache = new Map<string, RoundStart['adapter']>();
    for (const a of sampled) if (this.transport.isLocal(a.clientId)) await this.sendRoundStart(job, round, a, cache);
  }

  /** The start of an open round, to the devices it sampled that are connected to this process. */
  private async sendRoundStartsHere(jobId: string, roundIndex: number): Promise<void> {
    const job = await this.store.job(jobId);
    const round = await this.store.round(jobId, roundIndex);
    if (job?.status !== 'running' || round?.status !== 'open' || round.closing) return;
    const cache = new Map<string, RoundStart['adapter']>();
    for (const a of round.sampled)
      if (this.transport.isLocal(a.clientId)) await this.sendRoundStart(job, round, a, cache);
  }

  private async sendRoundStart(
    job: JobRow,
    round: RoundRow,
    a: Assignment,
    cache: Map<string, RoundStart['adapter']>,
  ): Promise<void> {
    const key = `${a.clusterId}:${a.rank}:${layersKey(a.layers)}`;
    let adapter = cache.get(key);
    if (adapter === undefined) {
      const cluster = await this.clusterAdapter(job, a.clusterId);
      const start = startAdapter(job.spec, cluster, a, this.initialAdapterOf(job));
      adapter = start ? toWireAdapter(start) : null;
      cache.set(key, adapter);
    }
    this.transport.send(
      a.clientId,
      roundStartMessage(job.spec, { jobId: job.id, round: round.round, deadline: round.deadline }, a, adapter),
    );
  }

  private readonly initialAdapters = new Map<string, LoraAdapter>();

  /** Round 0's shared start of `job` (a function of its seed or id, so a restarted server hands out the same). */
  private initialAdapterOf(job: JobRow): LoraAdapter {
    let adapter = this.initialAdapters.get(job.id);
    if (!adapter) this.initialAdapters.set(job.id, (adapter = initialAdapter(job.spec, job.spec.seed ?? job.id)));
    return adapter;
  }

  private async clusterAdapter(job: JobRow, clusterId: number): Promise<LoraAdapter | undefined> {
    const stored = await this.store.adapter(job.id, clusterId);
    if (!stored) return undefined;
    return adapterFromTensors([...parseSafetensors(stored.safetensors).tensors.values()], job.spec.alpha);
  }

  /** Aggregates (or fails) the open round `round` of `jobId`; a no-op if it is already closed. */
  private async closeRound(jobId: string, roundIndex: number): Promise<void> {
    if (this.closed || this.closing.has(jobId)) return;
    const job = await this.store.job(jobId);
    const round = job && (await this.store.round(jobId, roundIndex));
    if (!job || !round || job.status !== 'running' || round.status !== 'open' || job.currentRound !== roundIndex) {
      return;
    }
    this.clearTimers(jobId);
    const started = performance.now();
    // from here on no replica accepts an update into the round: the ones read below are all there are
    if (!(await this.store.beginClosing(jobId, roundIndex))) return;
    const acceptedIds = await this.store.acceptedClients(jobId, roundIndex);
    const refused = this.refused.get(jobId) ?? new Set();
    const dropped = round.sampled.filter((a) => !acceptedIds.has(a.clientId) && !refused.has(a.clientId)).length;
    const { spec } = job;

    if (acceptedIds.size < spec.quorum) {
      this.log.warn(
        { jobId, round: roundIndex, accepted: acceptedIds.size, quorum: spec.quorum, dropped },
        'round failed',
      );
      await this.failRound(job, round, { dropped });
      return;
    }

    const clusters = [];
    for (const a of await this.store.adapters(jobId)) {
      const stored = await this.store.adapter(jobId, a.clusterId);
      if (stored) clusters.push({ clusterId: a.clusterId, safetensors: stored.safetensors });
    }
    const access = this.store.workerAccess;
    const input: AggregationInput = {
      jobId,
      spec,
      state: job.state,
      round: roundIndex,
      maxFrameBytes: this.options.maxFrameBytes,
      clusters,
      assignments: round.sampled,
      updates: access ?? { frames: await this.store.updates(jobId, roundIndex) },
    };
    // updates that arrive while the aggregate is computed are refused (the round is closing), until the
    // aggregate is committed under the lock
    this.closing.add(jobId);
    void this.aggregator.aggregate(input).then(
      (result) =>
        this.safely(jobId, async () => {
          this.closing.delete(jobId);
          await this.commitRound(jobId, roundIndex, result, started, dropped);
        }),
      (error: unknown) =>
        this.safely(jobId, () => {
          this.closing.delete(jobId);
          throw error;
        }),
    );
  }

  /** Stores a round's aggregate, if the round is still the job's open one, and moves the job on. */
  private async commitRound(
    jobId: string,
    roundIndex: number,
    result: AggregationOutput,
    started: number,
    dropped: number,
  ): Promise<void> {
    if (this.closed) return;
    const job = await this.store.job(jobId);
    const round = job && (await this.store.round(jobId, roundIndex));
    if (!job || !round || job.status !== 'running' || round.status !== 'open' || job.currentRound !== roundIndex) {
      this.log.info({ jobId, round: roundIndex }, 'aggregate dropped: the round was closed meanwhile');
      return;
    }
    const { spec } = job;
    const nextRound = roundIndex + 1;
    const finished = nextRound >= spec.rounds;
    const { adapters } = result;
    const accepted = (await this.store.acceptedClients(jobId, roundIndex)).size;
    const aggregationSeconds = (performance.now() - started) / 1000;
    const { clusterOf } = result.state;
    const metrics: Metrics = { ...result.metrics, aggregation_seconds: aggregationSeconds };
    const committed = await this.store.endRound({
      expect: { round: roundIndex, open: true },
      jobId,
      adapters: adapters.map((a) => ({
        jobId,
        clusterId: a.clusterId,
        round: roundIndex,
        rank: spec.maxRank,
        safetensors: a.safetensors,
      })),
      round: {
        index: roundIndex,
        fields: {
          status: 'aggregated',
          endedAt: new Date().toISOString(),
          dropped,
          clusters: adapters.length,
          metrics,
        },
      },
      job: { currentRound: nextRound, status: finished ? 'completed' : 'running', state: result.state },
    });
    if (!committed) {
      this.log.info({ jobId, round: roundIndex }, 'aggregate dropped: the round was ended meanwhile');
      await this.schedule();
      return;
    }
    this.metrics.rounds.inc({ status: 'aggregated' });
    this.metrics.aggregationSeconds.observe(aggregationSeconds);
    this.log.info(
      {
        jobId,
        round: roundIndex,
        accepted,
        clusters: adapters.length,
        dropped,
        aggregationSeconds,
      },
      'round aggregated',
    );
    await this.finishRound(job, round, finished, 'aggregated', clusterOf, metrics, accepted);
  }

  private async finishRound(
    job: JobRow,
    round: RoundRow,
    finished: boolean,
    status: RoundEnd['status'],
    clusterOf: Record<string, number>,
    metrics: Metrics = {},
    accepted = 0,
  ): Promise<void> {
    this.metrics.roundSeconds.observe((Date.now() - Date.parse(round.startedAt)) / 1000);
    if (finished) {
      this.metrics.activeJobs.dec();
      this.log.info({ jobId: job.id, rounds: job.spec.rounds }, 'job completed');
    }
    await this.sendRoundEnd(job, round, finished ? 'completed' : 'running', status, clusterOf, metrics, accepted);
    this.refused.delete(job.id);
    await this.schedule();
  }

  // -------------------------------------------------------------------------------------- helpers

  private async sendRoundEnd(
    job: JobRow,
    round: RoundRow,
    jobStatus: RoundEnd['jobStatus'],
    status: RoundEnd['status'],
    clusterOf: Record<string, number>,
    metrics: Metrics,
    accepted: number,
  ): Promise<void> {
    const state = (await this.store.job(job.id))?.state ?? job.state;
    for (const clientId of await this.recipientsOfRoundEnd(job, round, jobStatus !== 'running')) {
      this.transport.send(clientId, {
        type: 'round_end',
        jobId: job.id,
        round: round.round,
        status,
        clusterId:
          clusterOf[clientId] ??
          state.clusterOf[clientId] ??
          round.sampled.find((a) => a.clientId === clientId)?.clusterId ??
          0,
        accepted,
        metrics,
        jobStatus,
      });
    }
  }

  /**
   * A round's end goes to the devices it sampled; the end of a job also goes to every device that took
   * part in an earlier round and every connected device ready for work, so that one left out of the last
   * round (participation below 1) learns that the job is over instead of waiting for a round that never comes.
   */
  private async recipientsOfRoundEnd(job: JobRow, round: RoundRow, jobOver: boolean): Promise<Set<string>> {
    const recipients = new Set(round.sampled.map((a) => a.clientId));
    if (!jobOver) return recipients;
    for (const past of await this.store.rounds(job.id)) for (const a of past.sampled) recipients.add(a.clientId);
    for (const clientId of (await this.transport.readyClients()).keys()) recipients.add(clientId);
    return recipients;
  }

  private refusedIn(jobId: string): Set<string> {
    let set = this.refused.get(jobId);
    if (!set) this.refused.set(jobId, (set = new Set()));
    return set;
  }

  private armDeadline(jobId: string, roundIndex: number, deadline: number): void {
    const existing = this.deadlineTimers.get(jobId);
    if (existing) clearTimeout(existing);
    this.deadlineTimers.set(
      jobId,
      setTimeout(
        () => this.safely(jobId, () => this.closeRound(jobId, roundIndex)),
        Math.max(0, deadline - Date.now()),
      ),
    );
  }

  /** Closes `round` as failed (no aggregation) and moves its job to the next round. */
  private async failRound(job: JobRow, round: RoundRow, fields: { dropped?: number }): Promise<void> {
    const next = round.round + 1;
    const finished = next >= job.spec.rounds;
    const ended = await this.store.endRound({
      expect: { round: round.round, open: true },
      jobId: job.id,
      round: { index: round.round, fields: { status: 'failed', endedAt: new Date().toISOString(), ...fields } },
      job: { currentRound: next, status: finished ? 'completed' : 'running' },
    });
    if (!ended) return;
    this.metrics.rounds.inc({ status: 'failed' });
    await this.finishRound(job, round, finished, 'failed', {});
  }

  /**
   * Runs timer-driven work under the lock so that nothing escapes to the event loop: a round that cannot
   * be closed (say, a stored update fails its checksum) is marked failed and the job goes on.
   */
  private safely(jobId: string, work: () => void | Promise<void>): void {
    void this.lock.runExclusive(async () => {
      if (this.closed) return;
      try {
        await work();
      } catch (error) {
        this.log.error({ jobId, err: error }, 'round work failed; failing the open round');
        try {
          const job = await this.store.job(jobId);
          const round = job && (await this.store.round(jobId, job.currentRound));
          if (job && round?.status === 'open') await this.failRound(job, round, {});
        } catch (inner) {
          // the store is unreachable: try again later, or the round would stay open with no timer
          this.log.error({ jobId, err: inner }, `could not fail the round either; retrying in ${RETRY_MS} ms`);
          this.retryOpenRound(jobId);
        }
      }
    });
  }

  /** Closes the job's open round a little later (after a store failure), unless it is being closed. */
  private retryOpenRound(jobId: string): void {
    if (this.closed) return;
    const existing = this.deadlineTimers.get(jobId);
    if (existing) clearTimeout(existing);
    const timer = setTimeout(
      () =>
        this.safely(jobId, async () => {
          const job = await this.store.job(jobId);
          const round = job && (await this.store.round(jobId, job.currentRound));
          if (round?.status === 'open') await this.closeRound(jobId, round.round);
        }),
      RETRY_MS,
    );
    this.deadlineTimers.set(jobId, timer);
  }

  private clearTimers(jobId: string): void {
    for (const timers of [this.deadlineTimers, this.gatherTimers]) {
      const timer = timers.get(jobId);
      if (timer) clearTimeout(timer);
      timers.delete(jobId);
    }
  }
}
