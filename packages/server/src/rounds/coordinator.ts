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
  initialAdapter,
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
import type { JobRow, RoundRow, Store } from '../store/store.js';
import type { AggregationInput, AggregationOutput, RoundAggregator } from '../aggregation/round-aggregation.js';

/** Delivers server messages to connected clients; false when the client is not connected. */
export interface RoundTransport {
  send(clientId: string, message: RoundStart | RoundEnd): boolean;
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
  /** The store's directory, where aggregation workers read a round's updates (':memory:': handed over). */
  dataDir: string;
}

interface Session {
  plan: RankPlan | undefined;
  /** The job whose open round this client is sampled in. */
  busyWith: string | undefined;
}

export class JobError extends FloeError {}

export class Coordinator {
  private readonly sessions = new Map<string, Session>();
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
  ) {}

  /** Picks up rounds left open by a previous process. */
  recover(): void {
    for (const round of this.store.openRounds()) {
      const deadline = Math.max(round.deadline, Date.now() + this.options.restartGraceMs);
      this.store.updateRound(round.jobId, round.round, { deadline });
      for (const a of round.sampled) this.sessionOf(a.clientId).busyWith = round.jobId;
      this.armDeadline(round.jobId, deadline);
      this.log.info(
        {
          jobId: round.jobId,
          round: round.round,
          accepted: round.accepted,
          deadline: new Date(deadline).toISOString(),
        },
        'resuming open round',
      );
    }
    this.metrics.activeJobs.set(this.store.jobs().filter((j) => j.status === 'running').length);
  }

  close(): void {
    this.closed = true;
    for (const timer of [...this.deadlineTimers.values(), ...this.gatherTimers.values()]) clearTimeout(timer);
    this.deadlineTimers.clear();
    this.gatherTimers.clear();
  }

  // ------------------------------------------------------------------------------------------ jobs

  createJob(id: string, spec: JobSpec): JobRow {
    if (spec.quorum > spec.clientsPerRound) {
      throw new JobError('invalid_job', `quorum ${spec.quorum} exceeds clientsPerRound ${spec.clientsPerRound}`);
    }
    const shapes = adapterModuleShapes(spec.baseModel.architecture, spec.targetModules); // throws on unknown modules
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
    this.store.addJob(job);
    this.metrics.activeJobs.inc();
    this.log.info({ jobId: id, strategy: spec.strategy, rounds: spec.rounds }, 'job created');
    this.schedule();
    return job;
  }

  stopJob(id: string): JobRow {
    const job = this.store.job(id);
    if (!job) throw new JobError('unknown_job', `no job ${id}`);
    if (job.status !== 'running') return job;
    const open = this.store.round(id, job.currentRound);
    this.store.transaction(() => {
      if (open?.status === 'open') {
        this.store.updateRound(id, open.round, { status: 'failed', endedAt: new Date().toISOString() });
      }
      this.store.updateJob(id, { status: 'stopped' });
    });
    const ended = open?.status === 'open' ? open : this.store.round(id, job.currentRound - 1);
    if (open?.status === 'open') this.release(open);
    // the round the stop ended failed; with none open, the last round's end is told again as it was
    if (ended) {
      const aggregated = open?.status !== 'open' && ended.status === 'aggregated';
      this.sendRoundEnd(
        job,
        ended,
        'stopped',
        aggregated ? 'aggregated' : 'failed',
        {},
        {},
        aggregated ? ended.accepted : 0,
      );
    }
    this.refused.delete(id);
    this.clearTimers(id);
    this.metrics.activeJobs.dec();
    this.log.info({ jobId: id }, 'job stopped');
    this.schedule();
    return this.store.job(id) as JobRow;
  }

  // --------------------------------------------------------------------------------------- clients

  /** A client said hello: it may be sampled; if it is owed a round_start (after a reconnect), it gets it. */
  clientReady(clientId: string, plan: RankPlan | undefined): void {
    const session = this.sessionOf(clientId);
    session.plan = plan;
    for (const job of this.store.jobs()) {
      if (job.status !== 'running') continue;
      const round = this.store.round(job.id, job.currentRound);
      const assignment = round?.status === 'open' ? round.sampled.find((a) => a.clientId === clientId) : undefined;
      if (round && assignment && !this.store.acceptedClients(job.id, round.round).has(clientId)) {
        session.busyWith = job.id;
        this.sendRoundStart(job, round, assignment, new Map());
      }
    }
    this.schedule();
  }

  clientGone(clientId: string): void {
    const session = this.sessions.get(clientId);
    // a sampled client keeps its place in the round until the deadline: it may reconnect and deliver
    if (session && !session.busyWith) this.sessions.delete(clientId);
    else if (session) session.plan = undefined;
  }

  connectedIdle(): string[] {
    return [...this.sessions].filter(([, s]) => s.plan !== undefined && !s.busyWith).map(([id]) => id);
  }

  // --------------------------------------------------------------------------------------- updates

  /**
   * Checks and, if sound, durably accepts an update. `frame` is the received bytes (stored as the
   * update's record); `update` was decoded from it without the finiteness check, done here so that a
   * NaN update gets an ack naming its round.
   */
  receiveUpdate(clientId: string, frame: Uint8Array, update: Update): UpdateAck {
    // A refused update is not the client's answer: it may send a corrected one until the deadline (the
    // round closes early only once every sampled client has an accepted update). `rejected` counts
    // refused attempts of sampled clients in the open round; a repeat of an accepted update is not one.
    const refuse = (code: string, message: string): UpdateAck => {
      this.metrics.updates.inc({ outcome: code });
      const round = this.store.round(update.jobId, update.round);
      if (
        code !== 'duplicate_update' &&
        round?.status === 'open' &&
        !this.closing.has(update.jobId) &&
        round.sampled.some((a) => a.clientId === clientId) &&
        !this.store.acceptedClients(update.jobId, update.round).has(clientId)
      ) {
        this.store.countRejected(update.jobId, update.round);
        let set = this.refused.get(update.jobId);
        if (!set) this.refused.set(update.jobId, (set = new Set()));
        set.add(clientId);
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

    const job = this.store.job(update.jobId);
    if (!job) return refuse('unknown_job', `no job ${update.jobId}`);
    if (job.status !== 'running') return refuse('job_not_running', `job ${job.id} is ${job.status}`);
    const round = this.store.round(job.id, job.currentRound);
    if (!round || round.status !== 'open' || round.round !== update.round || this.closing.has(job.id)) {
      return refuse('wrong_round', `job ${job.id} is not collecting round ${update.round}`);
    }
    const assignment = round.sampled.find((a) => a.clientId === clientId);
    if (!assignment) return refuse('not_sampled', `this client is not sampled in round ${round.round}`);
    if (this.store.acceptedClients(job.id, round.round).has(clientId)) {
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
    this.store.addUpdate({
      jobId: job.id,
      round: round.round,
      clientId,
      numSamples: update.numSamples,
      rank: assignment.rank,
      metrics: update.metrics,
      frame,
    });
    this.metrics.updates.inc({ outcome: 'accepted' });
    this.refused.get(job.id)?.delete(clientId);
    this.closeIfComplete(job.id);
    return { type: 'update_ack', jobId: job.id, round: round.round, accepted: true };
  }

  // ---------------------------------------------------------------------------------------- rounds

  /** Starts a round for every running job that can start one. */
  schedule(): void {
    if (this.closed) return;
    for (const job of this.store.jobs()) {
      if (job.status !== 'running') continue;
      const round = this.store.round(job.id, job.currentRound);
      if (round?.status === 'open') continue;
      this.tryStart(job);
    }
  }

  private tryStart(job: JobRow): void {
    const { spec } = job;
    const idle = this.connectedIdle();
    if (idle.length < spec.quorum) return;
    if (idle.length < spec.clientsPerRound && this.options.gatherMs > 0) {
      if (!this.gatherTimers.has(job.id)) {
        this.gatherTimers.set(
          job.id,
          setTimeout(() => {
            this.gatherTimers.delete(job.id);
            const current = this.store.job(job.id);
            if (current?.status === 'running' && this.store.round(job.id, current.currentRound)?.status !== 'open') {
              this.safely(job.id, () => this.startRound(current));
            }
          }, this.options.gatherMs),
        );
      }
      return;
    }
    this.startRound(job);
  }

  private startRound(job: JobRow): void {
    const { spec } = job;
    const idle = this.connectedIdle();
    if (idle.length < spec.quorum) return;
    const gather = this.gatherTimers.get(job.id);
    if (gather) clearTimeout(gather);
    this.gatherTimers.delete(job.id);

    const clusters = [...new Set(this.store.adapters(job.id).map((a) => a.clusterId))];
    const candidates = idle.map((clientId) => ({ clientId, plan: this.sessions.get(clientId)?.plan }));
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
      deadline: now + spec.roundDeadlineSec * 1000,
      endedAt: null,
      sampled,
      accepted: 0,
      rejected: 0,
      dropped: 0,
      clusters: 0,
      metrics: {},
    };
    this.store.addRound(round);
    this.refused.set(job.id, new Set());
    for (const a of sampled) this.sessionOf(a.clientId).busyWith = job.id;
    this.armDeadline(job.id, round.deadline);
    this.log.info({ jobId: job.id, round: round.round, sampled: sampled.length, idle: idle.length }, 'round started');
    const cache = new Map<string, RoundStart['adapter']>();
    for (const a of sampled) this.sendRoundStart(job, round, a, cache);
  }

  private sendRoundStart(job: JobRow, round: RoundRow, a: Assignment, cache: Map<string, RoundStart['adapter']>): void {
    const key = `${a.clusterId}:${a.rank}:${layersKey(a.layers)}`;
    let adapter = cache.get(key);
    if (adapter === undefined) {
      const start = startAdapter(job.spec, this.clusterAdapter(job, a.clusterId), a, this.initialAdapterOf(job));
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

  private clusterAdapter(job: JobRow, clusterId: number): LoraAdapter | undefined {
    const stored = this.store.adapter(job.id, clusterId);
    if (!stored) return undefined;
    return adapterFromTensors([...parseSafetensors(stored.safetensors).tensors.values()], job.spec.alpha);
  }

  private closeIfComplete(jobId: string): void {
    const job = this.store.job(jobId);
    const round = job && this.store.round(jobId, job.currentRound);
    if (!round || round.status !== 'open') return;
    const accepted = this.store.acceptedClients(jobId, round.round);
    if (round.sampled.every((a) => accepted.has(a.clientId))) {
      // after the ack that completed the round has been sent
      setImmediate(() => this.safely(jobId, () => this.closeRound(jobId, round.round)));
    }
  }

  /** Aggregates (or fails) the open round `round` of `jobId`; a no-op if it is already closed. */
  closeRound(jobId: string, roundIndex: number): void {
    if (this.closed || this.closing.has(jobId)) return;
    const job = this.store.job(jobId);
    const round = job && this.store.round(jobId, roundIndex);
    if (!job || !round || round.status !== 'open' || job.currentRound !== roundIndex) return;
    this.clearTimers(jobId);
    const started = performance.now();
    const acceptedIds = this.store.acceptedClients(jobId, roundIndex);
    const refused = this.refused.get(jobId) ?? new Set();
    const dropped = round.sampled.filter((a) => !acceptedIds.has(a.clientId) && !refused.has(a.clientId)).length;
    const { spec } = job;

    if (acceptedIds.size < spec.quorum) {
      this.log.warn(
        { jobId, round: roundIndex, accepted: acceptedIds.size, quorum: spec.quorum, dropped },
        'round failed',
      );
      this.failRound(job, round, { dropped });
      return;
    }

    const input: AggregationInput = {
      jobId,
      spec,
      state: job.state,
      round: roundIndex,
      maxFrameBytes: this.options.maxFrameBytes,
      clusters: this.store.adapters(jobId).flatMap((a) => {
        const stored = this.store.adapter(jobId, a.clusterId);
        return stored ? [{ clusterId: a.clusterId, safetensors: stored.safetensors }] : [];
      }),
      assignments: round.sampled,
      updates:
        this.options.dataDir === ':memory:'
          ? { frames: this.store.updates(jobId, roundIndex) }
          : { dataDir: this.options.dataDir },
    };
    // updates that arrive while the aggregate is computed are refused (the round is closing)
    this.closing.add(jobId);
    void this.aggregator
      .aggregate(input)
      .then(
        (result) => this.safely(jobId, () => this.commitRound(jobId, roundIndex, result, started, dropped)),
        (error: unknown) =>
          this.safely(jobId, () => {
            throw error;
          }),
      )
      .finally(() => this.closing.delete(jobId));
  }

  /** Stores a round's aggregate, if the round is still the job's open one, and moves the job on. */
  private commitRound(
    jobId: string,
    roundIndex: number,
    result: AggregationOutput,
    started: number,
    dropped: number,
  ): void {
    if (this.closed) return;
    const job = this.store.job(jobId);
    const round = job && this.store.round(jobId, roundIndex);
    if (!job || !round || job.status !== 'running' || round.status !== 'open' || job.currentRound !== roundIndex) {
      this.log.info({ jobId, round: roundIndex }, 'aggregate dropped: the round was closed meanwhile');
      return;
    }
    const { spec } = job;
    const nextRound = roundIndex + 1;
    const finished = nextRound >= spec.rounds;
    const { adapters } = result;
    const accepted = this.store.acceptedClients(jobId, roundIndex).size;
    const aggregationSeconds = (performance.now() - started) / 1000;
    const { clusterOf } = result.state;
    const metrics: Metrics = { ...result.metrics, aggregation_seconds: aggregationSeconds };
    this.store.transaction(() => {
      for (const a of adapters) {
        this.store.putAdapter({
          jobId,
          clusterId: a.clusterId,
          round: roundIndex,
          rank: spec.maxRank,
          safetensors: a.safetensors,
        });
      }
      this.store.updateRound(jobId, roundIndex, {
        status: 'aggregated',
        endedAt: new Date().toISOString(),
        dropped,
        clusters: adapters.length,
        metrics,
      });
      this.store.updateJob(jobId, {
        currentRound: nextRound,
        status: finished ? 'completed' : 'running',
        state: result.state,
      });
    });
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
    this.finishRound(job, round, finished, 'aggregated', clusterOf, metrics, accepted);
  }

  private finishRound(
    job: JobRow,
    round: RoundRow,
    finished: boolean,
    status: RoundEnd['status'],
    clusterOf: Record<string, number>,
    metrics: Metrics = {},
    accepted = 0,
  ): void {
    this.metrics.roundSeconds.observe((Date.now() - Date.parse(round.startedAt)) / 1000);
    if (finished) {
      this.metrics.activeJobs.dec();
      this.log.info({ jobId: job.id, rounds: job.spec.rounds }, 'job completed');
    }
    this.release(round);
    this.sendRoundEnd(job, round, finished ? 'completed' : 'running', status, clusterOf, metrics, accepted);
    this.refused.delete(job.id);
    this.schedule();
  }

  // -------------------------------------------------------------------------------------- helpers

  private sendRoundEnd(
    job: JobRow,
    round: RoundRow,
    jobStatus: RoundEnd['jobStatus'],
    status: RoundEnd['status'],
    clusterOf: Record<string, number>,
    metrics: Metrics,
    accepted: number,
  ): void {
    const state = this.store.job(job.id)?.state ?? job.state;
    for (const clientId of this.recipientsOfRoundEnd(job, round, jobStatus !== 'running')) {
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
  private recipientsOfRoundEnd(job: JobRow, round: RoundRow, jobOver: boolean): Set<string> {
    const recipients = new Set(round.sampled.map((a) => a.clientId));
    if (!jobOver) return recipients;
    for (const past of this.store.rounds(job.id)) for (const a of past.sampled) recipients.add(a.clientId);
    for (const [clientId, session] of this.sessions) if (session.plan !== undefined) recipients.add(clientId);
    return recipients;
  }

  private sessionOf(clientId: string): Session {
    let session = this.sessions.get(clientId);
    if (!session) this.sessions.set(clientId, (session = { plan: undefined, busyWith: undefined }));
    return session;
  }

  private release(round: RoundRow): void {
    for (const a of round.sampled) {
      const session = this.sessions.get(a.clientId);
      if (session?.busyWith === round.jobId) session.busyWith = undefined;
      if (session && session.plan === undefined) this.sessions.delete(a.clientId);
    }
  }

  private armDeadline(jobId: string, deadline: number): void {
    const existing = this.deadlineTimers.get(jobId);
    if (existing) clearTimeout(existing);
    const job = this.store.job(jobId);
    const roundIndex = job?.currentRound ?? 0;
    this.deadlineTimers.set(
      jobId,
      setTimeout(
        () => this.safely(jobId, () => this.closeRound(jobId, roundIndex)),
        Math.max(0, deadline - Date.now()),
      ),
    );
  }

  /** Closes `round` as failed (no aggregation) and moves its job to the next round. */
  private failRound(job: JobRow, round: RoundRow, fields: { dropped?: number }): void {
    const next = round.round + 1;
    const finished = next >= job.spec.rounds;
    this.store.transaction(() => {
      this.store.updateRound(job.id, round.round, { status: 'failed', endedAt: new Date().toISOString(), ...fields });
      this.store.updateJob(job.id, { currentRound: next, status: finished ? 'completed' : 'running' });
    });
    this.metrics.rounds.inc({ status: 'failed' });
    this.finishRound(job, round, finished, 'failed', {});
  }

  /**
   * Runs timer-driven work so that nothing escapes to the event loop: a round that cannot be closed
   * (say, a stored update fails its checksum) is marked failed and the job goes on.
   */
  private safely(jobId: string, work: () => void): void {
    try {
      work();
    } catch (error) {
      this.log.error({ jobId, err: error }, 'round work failed; failing the open round');
      try {
        const job = this.store.job(jobId);
        const round = job && this.store.round(jobId, job.currentRound);
        if (job && round?.status === 'open') this.failRound(job, round, {});
      } catch (inner) {
        this.log.error({ jobId, err: inner }, 'could not fail the round either');
      }
    }
  }

  private clearTimers(jobId: string): void {
    for (const timers of [this.deadlineTimers, this.gatherTimers]) {
      const timer = timers.get(jobId);
      if (timer) clearTimeout(timer);
      timers.delete(jobId);
    }
  }
}
