/**
 * What the server keeps, behind one interface with two engines: SQLite in one embedded file (the
 * default: nothing to install) and PostgreSQL (several server processes over one database). Both keep
 * the same promises: every write is committed before the server acts on it (an update before its
 * ack), so a killed process loses nothing it has acknowledged, and blobs (accepted update frames,
 * aggregated adapters as safetensors) carry a SHA-256 that is checked on every read.
 */
import { createHash } from 'node:crypto';
import {
  FloeError,
  type DeviceProfile,
  type JobSpec,
  type JobStatus,
  type Metrics,
  type RoundStatus,
} from '@floe/shared';
import type { Assignment, FederationState } from '@floe/federation';

export class StoreError extends FloeError {}

export type { Assignment };
/** A job's federation state (cluster centroids and memberships), kept with the job. */
export type JobState = FederationState;

export interface JobRow {
  id: string;
  spec: JobSpec;
  status: JobStatus;
  currentRound: number;
  createdAt: string;
  state: JobState;
}

export interface RoundRow {
  jobId: string;
  round: number;
  status: RoundStatus;
  startedAt: string;
  /** Epoch milliseconds. */
  deadline: number;
  endedAt: string | null;
  sampled: Assignment[];
  accepted: number;
  rejected: number;
  dropped: number;
  clusters: number;
  metrics: Metrics;
  /**
   * Set (in the database, so on every replica at once) when the coordinator starts aggregating an open
   * round: from then on no update is accepted into it, so the aggregate holds every acknowledged one.
   */
  closing: boolean;
}

export interface ClientRow {
  id: string;
  createdAt: string;
  revokedAt: string | null;
  profile: DeviceProfile;
}

export interface StoredUpdate {
  jobId: string;
  round: number;
  clientId: string;
  numSamples: number;
  rank: number;
  metrics: Metrics;
  /** The accepted `update` frame as received. */
  frame: Uint8Array;
  sha256: string;
  receivedAt: string;
}

export interface StoredAdapter {
  jobId: string;
  clusterId: number;
  round: number;
  rank: number;
  /** PEFT adapter_model.safetensors bytes. */
  safetensors: Uint8Array;
  sha256: string;
}

export type JobFields = Partial<Pick<JobRow, 'status' | 'currentRound' | 'state'>>;
export type RoundFields = Partial<
  Pick<RoundRow, 'status' | 'deadline' | 'endedAt' | 'dropped' | 'clusters' | 'metrics'>
>;

/** Everything that ends a round (or stops a job), written in one transaction. */
export interface RoundEnding {
  jobId: string;
  job: JobFields;
  /** The round whose row changes, if any (a job stopped between rounds has none). */
  round?: { index: number; fields: RoundFields };
  /** Cluster adapters that replace the job's stored ones. */
  adapters?: Omit<StoredAdapter, 'sha256'>[];
  /**
   * Write only if the job is running with `expect.round` as its current round, and that round is open
   * (`open: true`) or not (`open: false`: none was started, or it ended): the check and the writes are
   * one transaction, so of two servers ending the same round (a stop on one replica, an aggregate on
   * another) exactly one does, and a stop cannot slip in between a round's start and its row.
   */
  expect?: { round: number; open: boolean };
}

/** How another thread opens the store to read a round's updates. */
export type WorkerAccess = { dataDir: string } | { databaseUrl: string };

export interface Store {
  readonly engine: 'sqlite' | 'postgres';
  /**
   * Where an aggregation worker reads a round's updates by itself, one at a time, so that the frames
   * never cross the event loop nor sit in memory together; undefined (an in-memory store): handed over.
   */
  readonly workerAccess: WorkerAccess | undefined;
  close(): Promise<void>;

  meta(key: string): Promise<string | undefined>;
  /** Sets `key` unless it is set already; gives the value that holds (several servers may race here). */
  initMeta(key: string, value: string): Promise<string>;
  setMeta(key: string, value: string): Promise<void>;

  addClient(id: string, profile: DeviceProfile): Promise<void>;
  clientStatus(id: string): Promise<'active' | 'revoked' | undefined>;
  /** Marks a client revoked (its credential is refused from then on); gives when, undefined when unknown. */
  revokeClient(id: string): Promise<string | undefined>;
  clients(): Promise<ClientRow[]>;

  /** Stores one-time enrollment keys by their hashes (a key itself is only shown to the admin once). */
  addEnrollmentKeys(keyHashes: string[], expiresAt: number): Promise<void>;
  /** Spends a one-time key and enrolls `clientId` with it, atomically: true only the first time, before it expires. */
  enrollWithKey(keyHash: string, clientId: string, profile: DeviceProfile): Promise<boolean>;

  addJob(job: JobRow): Promise<void>;
  job(id: string): Promise<JobRow | undefined>;
  jobs(): Promise<JobRow[]>;

  /** Records a round if its job is running at that round and it has no row yet; false otherwise. */
  addRound(round: RoundRow): Promise<boolean>;
  round(jobId: string, round: number): Promise<RoundRow | undefined>;
  rounds(jobId: string): Promise<RoundRow[]>;
  /** Rounds still open (the server stopped before closing them), closing ones included. */
  openRounds(): Promise<RoundRow[]>;
  updateRound(jobId: string, round: number, fields: RoundFields): Promise<void>;
  countRejected(jobId: string, round: number): Promise<void>;
  /**
   * Marks an open round closing (no update is accepted into it from then on); false when it is not
   * open. Waits for updates being stored into it at that moment, which are then in.
   */
  beginClosing(jobId: string, round: number): Promise<boolean>;
  /** Writes a round's end in one transaction; false when `expect` did not hold. */
  endRound(ending: RoundEnding): Promise<boolean>;

  /**
   * Stores an accepted update and counts it, in one transaction, if its round is open and not closing;
   * gives it with the round's new count of accepted updates, or undefined when the round was not open.
   * Refuses (throws on) a second update of a client.
   */
  addUpdate(
    update: Omit<StoredUpdate, 'sha256' | 'receivedAt'>,
  ): Promise<(StoredUpdate & { roundAccepted: number }) | undefined>;
  /** Whether the client has an accepted update in the round. */
  hasUpdate(jobId: string, round: number, clientId: string): Promise<boolean>;
  /** The accepted updates of a round, checksums verified. */
  updates(jobId: string, round: number): Promise<StoredUpdate[]>;
  /** Client ids with an accepted update in the round (no blobs read). */
  acceptedClients(jobId: string, round: number): Promise<Set<string>>;
  /** Whether `clientId` took part in `jobId`: sampled in one of its rounds (it was sent the job's adapter). */
  tookPart(jobId: string, clientId: string): Promise<boolean>;

  adapter(jobId: string, clusterId: number): Promise<StoredAdapter | undefined>;
  adapters(jobId: string): Promise<Omit<StoredAdapter, 'safetensors'>[]>;
}

export function sha256Hex(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}

export function verified(what: string, bytes: Uint8Array, row: { sha256: string }): void {
  const actual = sha256Hex(bytes);
  if (actual !== row.sha256) {
    throw new StoreError('checksum_mismatch', `${what}: stored SHA-256 ${row.sha256}, content hashes to ${actual}`);
  }
}

/** A stored JSON column: text in SQLite, already parsed from jsonb by PostgreSQL's driver. */
export function fromJson<T>(value: unknown): T {
  return (typeof value === 'string' ? JSON.parse(value) : value) as T;
}

export function roundFromColumns(r: Record<string, unknown>): RoundRow {
  return {
    jobId: r.job_id as string,
    round: Number(r.round),
    status: r.status as RoundStatus,
    startedAt: r.started_at as string,
    deadline: Number(r.deadline),
    endedAt: r.ended_at as string | null,
    sampled: fromJson<Assignment[]>(r.sampled),
    accepted: Number(r.accepted),
    rejected: Number(r.rejected),
    dropped: Number(r.dropped),
    clusters: Number(r.clusters),
    metrics: fromJson<Metrics>(r.metrics),
    closing: Boolean(r.closing),
  };
}

export function jobFromColumns(r: Record<string, unknown>): JobRow {
  return {
    id: r.id as string,
    spec: fromJson<JobSpec>(r.spec),
    status: r.status as JobStatus,
    currentRound: Number(r.current_round),
    createdAt: r.created_at as string,
    state: fromJson<JobState>(r.state),
  };
}

export function clientFromColumns(r: Record<string, unknown>): ClientRow {
  return {
    id: r.id as string,
    createdAt: r.created_at as string,
    revokedAt: (r.revoked_at as string | null) ?? null,
    profile: fromJson<DeviceProfile>(r.profile),
  };
}

/** A stored update's row, its frame checked against its SHA-256. */
export function updateFromColumns(r: Record<string, unknown>): StoredUpdate {
  const frame = bytesOf(r.frame as Buffer);
  verified(
    `update of ${r.client_id as string} in ${r.job_id as string}/${Number(r.round)}`,
    frame,
    r as { sha256: string },
  );
  return {
    jobId: r.job_id as string,
    round: Number(r.round),
    clientId: r.client_id as string,
    numSamples: Number(r.num_samples),
    rank: Number(r.rank),
    metrics: fromJson<Metrics>(r.metrics),
    frame,
    sha256: r.sha256 as string,
    receivedAt: r.received_at as string,
  };
}

/** A Buffer's bytes as a plain view (no copy). */
export function bytesOf(buffer: Buffer): Uint8Array {
  return new Uint8Array(buffer.buffer, buffer.byteOffset, buffer.byteLength);
}

export function adapterFromColumns(r: Record<string, unknown>): Omit<StoredAdapter, 'safetensors'> {
  return {
    jobId: r.job_id as string,
    clusterId: Number(r.cluster_id),
    round: Number(r.round),
    rank: Number(r.rank),
    sha256: r.sha256 as string,
  };
}

// Rows as the engines insert them: values in the order of their INSERT column lists.

/** jobs (id, spec, status, current_round, created_at, state) */
export function jobValues(job: JobRow): unknown[] {
  return [job.id, JSON.stringify(job.spec), job.status, job.currentRound, job.createdAt, JSON.stringify(job.state)];
}

/** rounds (job_id, round, status, started_at, deadline, ended_at, sampled, accepted, rejected, dropped, clusters, metrics) */
export function roundValues(r: RoundRow): unknown[] {
  return [
    r.jobId,
    r.round,
    r.status,
    r.startedAt,
    r.deadline,
    r.endedAt,
    JSON.stringify(r.sampled),
    r.accepted,
    r.rejected,
    r.dropped,
    r.clusters,
    JSON.stringify(r.metrics),
  ];
}

/** updates (job_id, round, client_id, num_samples, rank, metrics, frame, sha256, received_at) */
export function updateValues(u: StoredUpdate): unknown[] {
  const frame = Buffer.from(u.frame.buffer, u.frame.byteOffset, u.frame.byteLength);
  return [u.jobId, u.round, u.clientId, u.numSamples, u.rank, JSON.stringify(u.metrics), frame, u.sha256, u.receivedAt];
}

/** adapters (job_id, cluster_id, round, rank, safetensors, sha256) */
export function adapterValues(a: Omit<StoredAdapter, 'sha256'>): unknown[] {
  const bytes = Buffer.from(a.safetensors.buffer, a.safetensors.byteOffset, a.safetensors.byteLength);
  return [a.jobId, a.clusterId, a.round, a.rank, bytes, sha256Hex(a.safetensors)];
}
