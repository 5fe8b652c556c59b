/**
 * The server's state in one embedded SQLite file (better-sqlite3, WAL, synchronous=FULL): every write
 * is a committed transaction before the server acts on it, so a `kill -9` loses nothing it has
 * acknowledged. Blobs (accepted update frames, aggregated adapters as safetensors) carry a SHA-256
 * that is checked on every read.
 */
import { createHash } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import Database from 'better-sqlite3';
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

export function sha256Hex(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}

const SCHEMA = `
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS clients (id TEXT PRIMARY KEY, created_at TEXT NOT NULL, profile TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
  id TEXT PRIMARY KEY, spec TEXT NOT NULL, status TEXT NOT NULL, current_round INTEGER NOT NULL,
  created_at TEXT NOT NULL, state TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS rounds (
  job_id TEXT NOT NULL, round INTEGER NOT NULL, status TEXT NOT NULL, started_at TEXT NOT NULL,
  deadline INTEGER NOT NULL, ended_at TEXT, sampled TEXT NOT NULL, accepted INTEGER NOT NULL DEFAULT 0,
  rejected INTEGER NOT NULL DEFAULT 0, dropped INTEGER NOT NULL DEFAULT 0, clusters INTEGER NOT NULL DEFAULT 0,
  metrics TEXT NOT NULL DEFAULT '{}', PRIMARY KEY (job_id, round));
CREATE TABLE IF NOT EXISTS updates (
  job_id TEXT NOT NULL, round INTEGER NOT NULL, client_id TEXT NOT NULL, num_samples INTEGER NOT NULL,
  rank INTEGER NOT NULL, metrics TEXT NOT NULL, frame BLOB NOT NULL, sha256 TEXT NOT NULL, received_at TEXT NOT NULL,
  PRIMARY KEY (job_id, round, client_id));
CREATE TABLE IF NOT EXISTS enrollment_keys (
  key_hash TEXT PRIMARY KEY, created_at TEXT NOT NULL, expires_at INTEGER NOT NULL, used_by TEXT);
CREATE TABLE IF NOT EXISTS adapters (
  job_id TEXT NOT NULL, cluster_id INTEGER NOT NULL, round INTEGER NOT NULL, rank INTEGER NOT NULL,
  safetensors BLOB NOT NULL, sha256 TEXT NOT NULL, PRIMARY KEY (job_id, cluster_id));
`;

interface RawRound {
  job_id: string;
  round: number;
  status: RoundStatus;
  started_at: string;
  deadline: number;
  ended_at: string | null;
  sampled: string;
  accepted: number;
  rejected: number;
  dropped: number;
  clusters: number;
  metrics: string;
}

interface RawJob {
  id: string;
  spec: string;
  status: JobStatus;
  current_round: number;
  created_at: string;
  state: string;
}

interface RawUpdate {
  job_id: string;
  round: number;
  client_id: string;
  num_samples: number;
  rank: number;
  metrics: string;
  frame: Buffer;
  sha256: string;
  received_at: string;
}

interface RawAdapter {
  job_id: string;
  cluster_id: number;
  round: number;
  rank: number;
  safetensors: Buffer;
  sha256: string;
}

function roundOf(r: RawRound): RoundRow {
  return {
    jobId: r.job_id,
    round: r.round,
    status: r.status,
    startedAt: r.started_at,
    deadline: r.deadline,
    endedAt: r.ended_at,
    sampled: JSON.parse(r.sampled) as Assignment[],
    accepted: r.accepted,
    rejected: r.rejected,
    dropped: r.dropped,
    clusters: r.clusters,
    metrics: JSON.parse(r.metrics) as Metrics,
  };
}

function jobOf(r: RawJob): JobRow {
  return {
    id: r.id,
    spec: JSON.parse(r.spec) as JobSpec,
    status: r.status,
    currentRound: r.current_round,
    createdAt: r.created_at,
    state: JSON.parse(r.state) as JobState,
  };
}

function verified<T extends { sha256: string }>(what: string, bytes: Uint8Array, row: T): void {
  const actual = sha256Hex(bytes);
  if (actual !== row.sha256) {
    throw new StoreError('checksum_mismatch', `${what}: stored SHA-256 ${row.sha256}, content hashes to ${actual}`);
  }
}

export class Store {
  private readonly db: Database.Database;

  /** Opens (creating if needed) `dataDir/floe.db`; `:memory:` for a throwaway store. */
  constructor(dataDir: string) {
    if (dataDir === ':memory:') {
      this.db = new Database(':memory:');
    } else {
      mkdirSync(dataDir, { recursive: true });
      this.db = new Database(path.join(dataDir, 'floe.db'));
    }
    this.db.pragma('journal_mode = WAL');
    this.db.pragma('synchronous = FULL');
    this.db.pragma('foreign_keys = ON');
    this.db.exec(SCHEMA);
    // stores made before revocation existed
    const columns = this.db.prepare('PRAGMA table_info(clients)').all() as { name: string }[];
    if (!columns.some((c) => c.name === 'revoked_at')) this.db.exec('ALTER TABLE clients ADD COLUMN revoked_at TEXT');
  }

  close(): void {
    this.db.close();
  }

  transaction<T>(work: () => T): T {
    return this.db.transaction(work)();
  }

  // ---------------------------------------------------------------------------------------- meta

  meta(key: string): string | undefined {
    const row = this.db.prepare('SELECT value FROM meta WHERE key = ?').get(key) as { value: string } | undefined;
    return row?.value;
  }

  setMeta(key: string, value: string): void {
    this.db
      .prepare('INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value')
      .run(key, value);
  }

  // ------------------------------------------------------------------------------------- clients

  addClient(id: string, profile: DeviceProfile): void {
    this.db
      .prepare('INSERT INTO clients (id, created_at, profile) VALUES (?, ?, ?)')
      .run(id, new Date().toISOString(), JSON.stringify(profile));
  }

  /** Whether `id` is enrolled and not revoked. */
  hasClient(id: string): boolean {
    return this.clientStatus(id) === 'active';
  }

  clientStatus(id: string): 'active' | 'revoked' | undefined {
    const row = this.db.prepare('SELECT revoked_at FROM clients WHERE id = ?').get(id) as
      { revoked_at: string | null } | undefined;
    if (!row) return undefined;
    return row.revoked_at === null ? 'active' : 'revoked';
  }

  /** Marks a client revoked; its credential is refused from then on. False when unknown. */
  revokeClient(id: string): string | undefined {
    const at = new Date().toISOString();
    this.db.prepare('UPDATE clients SET revoked_at = COALESCE(revoked_at, ?) WHERE id = ?').run(at, id);
    const row = this.db.prepare('SELECT revoked_at FROM clients WHERE id = ?').get(id) as
      { revoked_at: string | null } | undefined;
    return row?.revoked_at ?? undefined;
  }

  clients(): { id: string; createdAt: string; revokedAt: string | null; profile: DeviceProfile }[] {
    const rows = this.db
      .prepare('SELECT id, created_at, revoked_at, profile FROM clients ORDER BY created_at, id')
      .all() as {
      id: string;
      created_at: string;
      revoked_at: string | null;
      profile: string;
    }[];
    return rows.map((r) => ({
      id: r.id,
      createdAt: r.created_at,
      revokedAt: r.revoked_at,
      profile: JSON.parse(r.profile) as DeviceProfile,
    }));
  }

  // ----------------------------------------------------------------------------- enrollment keys

  /** Stores a one-time enrollment key by its hash (the key itself is only shown to the admin once). */
  addEnrollmentKey(keyHash: string, expiresAt: number): void {
    this.db
      .prepare('INSERT INTO enrollment_keys (key_hash, created_at, expires_at) VALUES (?, ?, ?)')
      .run(keyHash, new Date().toISOString(), expiresAt);
  }

  /** Spends a one-time key for `clientId`: true only the first time, before it expires. */
  useEnrollmentKey(keyHash: string, clientId: string): boolean {
    const result = this.db
      .prepare('UPDATE enrollment_keys SET used_by = ? WHERE key_hash = ? AND used_by IS NULL AND expires_at > ?')
      .run(clientId, keyHash, Date.now());
    return result.changes === 1;
  }

  // ---------------------------------------------------------------------------------------- jobs

  addJob(job: JobRow): void {
    this.db
      .prepare('INSERT INTO jobs (id, spec, status, current_round, created_at, state) VALUES (?, ?, ?, ?, ?, ?)')
      .run(job.id, JSON.stringify(job.spec), job.status, job.currentRound, job.createdAt, JSON.stringify(job.state));
  }

  job(id: string): JobRow | undefined {
    const row = this.db.prepare('SELECT * FROM jobs WHERE id = ?').get(id) as RawJob | undefined;
    return row && jobOf(row);
  }

  jobs(): JobRow[] {
    return (this.db.prepare('SELECT * FROM jobs ORDER BY created_at, id').all() as RawJob[]).map(jobOf);
  }

  updateJob(id: string, fields: Partial<Pick<JobRow, 'status' | 'currentRound' | 'state'>>): void {
    const job = this.job(id);
    if (!job) throw new StoreError('unknown_job', `no job ${id}`);
    const next = { ...job, ...fields };
    this.db
      .prepare('UPDATE jobs SET status = ?, current_round = ?, state = ? WHERE id = ?')
      .run(next.status, next.currentRound, JSON.stringify(next.state), id);
  }

  // -------------------------------------------------------------------------------------- rounds

  addRound(round: RoundRow): void {
    this.db
      .prepare(
        `INSERT INTO rounds (job_id, round, status, started_at, deadline, ended_at, sampled, accepted, rejected,
         dropped, clusters, metrics) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
      )
      .run(
        round.jobId,
        round.round,
        round.status,
        round.startedAt,
        round.deadline,
        round.endedAt,
        JSON.stringify(round.sampled),
        round.accepted,
        round.rejected,
        round.dropped,
        round.clusters,
        JSON.stringify(round.metrics),
      );
  }

  round(jobId: string, round: number): RoundRow | undefined {
    const row = this.db.prepare('SELECT * FROM rounds WHERE job_id = ? AND round = ?').get(jobId, round) as
      RawRound | undefined;
    return row && roundOf(row);
  }

  rounds(jobId: string): RoundRow[] {
    return (this.db.prepare('SELECT * FROM rounds WHERE job_id = ? ORDER BY round').all(jobId) as RawRound[]).map(
      roundOf,
    );
  }

  /** Rounds still open (the server stopped before closing them). */
  openRounds(): RoundRow[] {
    return (this.db.prepare("SELECT * FROM rounds WHERE status = 'open'").all() as RawRound[]).map(roundOf);
  }

  updateRound(
    jobId: string,
    round: number,
    fields: Partial<Pick<RoundRow, 'status' | 'deadline' | 'endedAt' | 'dropped' | 'clusters' | 'metrics'>>,
  ): void {
    const row = this.round(jobId, round);
    if (!row) throw new StoreError('unknown_round', `no round ${round} of job ${jobId}`);
    const next = { ...row, ...fields };
    this.db
      .prepare(
        'UPDATE rounds SET status = ?, deadline = ?, ended_at = ?, dropped = ?, clusters = ?, metrics = ? WHERE job_id = ? AND round = ?',
      )
      .run(
        next.status,
        next.deadline,
        next.endedAt,
        next.dropped,
        next.clusters,
        JSON.stringify(next.metrics),
        jobId,
        round,
      );
  }

  countRejected(jobId: string, round: number): void {
    this.db.prepare('UPDATE rounds SET rejected = rejected + 1 WHERE job_id = ? AND round = ?').run(jobId, round);
  }

  // ------------------------------------------------------------------------------------- updates

  /** Stores an accepted update and counts it, in one transaction. Refuses a second update of a client. */
  addUpdate(update: Omit<StoredUpdate, 'sha256' | 'receivedAt'>): StoredUpdate {
    const stored: StoredUpdate = { ...update, sha256: sha256Hex(update.frame), receivedAt: new Date().toISOString() };
    this.transaction(() => {
      this.db
        .prepare(
          `INSERT INTO updates (job_id, round, client_id, num_samples, rank, metrics, frame, sha256, received_at)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`,
        )
        .run(
          stored.jobId,
          stored.round,
          stored.clientId,
          stored.numSamples,
          stored.rank,
          JSON.stringify(stored.metrics),
          Buffer.from(stored.frame.buffer, stored.frame.byteOffset, stored.frame.byteLength),
          stored.sha256,
          stored.receivedAt,
        );
      this.db
        .prepare('UPDATE rounds SET accepted = accepted + 1 WHERE job_id = ? AND round = ?')
        .run(stored.jobId, stored.round);
    });
    return stored;
  }

  /** The accepted updates of a round, checksums verified. */
  updates(jobId: string, round: number): StoredUpdate[] {
    const rows = this.db
      .prepare('SELECT * FROM updates WHERE job_id = ? AND round = ? ORDER BY client_id')
      .all(jobId, round) as RawUpdate[];
    return rows.map((r) => {
      const frame = new Uint8Array(r.frame.buffer, r.frame.byteOffset, r.frame.byteLength);
      verified(`update of ${r.client_id} in ${jobId}/${r.round}`, frame, r);
      return {
        jobId: r.job_id,
        round: r.round,
        clientId: r.client_id,
        numSamples: r.num_samples,
        rank: r.rank,
        metrics: JSON.parse(r.metrics) as Metrics,
        frame,
        sha256: r.sha256,
        receivedAt: r.received_at,
      };
    });
  }

  /** Client ids with an accepted update in the round (no blobs read). */
  acceptedClients(jobId: string, round: number): Set<string> {
    const rows = this.db.prepare('SELECT client_id FROM updates WHERE job_id = ? AND round = ?').all(jobId, round) as {
      client_id: string;
    }[];
    return new Set(rows.map((r) => r.client_id));
  }

  /** Whether `clientId` took part in `jobId`: sampled in one of its rounds (it was sent the job's adapter). */
  tookPart(jobId: string, clientId: string): boolean {
    const row = this.db
      .prepare(
        "SELECT 1 FROM rounds, json_each(rounds.sampled) WHERE rounds.job_id = ? AND json_extract(json_each.value, '$.clientId') = ? LIMIT 1",
      )
      .get(jobId, clientId);
    return row !== undefined;
  }

  // ------------------------------------------------------------------------------------ adapters

  putAdapter(adapter: Omit<StoredAdapter, 'sha256'>): StoredAdapter {
    const stored = { ...adapter, sha256: sha256Hex(adapter.safetensors) };
    this.db
      .prepare(
        `INSERT INTO adapters (job_id, cluster_id, round, rank, safetensors, sha256) VALUES (?, ?, ?, ?, ?, ?)
         ON CONFLICT(job_id, cluster_id) DO UPDATE SET round = excluded.round, rank = excluded.rank,
         safetensors = excluded.safetensors, sha256 = excluded.sha256`,
      )
      .run(
        stored.jobId,
        stored.clusterId,
        stored.round,
        stored.rank,
        Buffer.from(stored.safetensors.buffer, stored.safetensors.byteOffset, stored.safetensors.byteLength),
        stored.sha256,
      );
    return stored;
  }

  adapter(jobId: string, clusterId: number): StoredAdapter | undefined {
    const row = this.db.prepare('SELECT * FROM adapters WHERE job_id = ? AND cluster_id = ?').get(jobId, clusterId) as
      RawAdapter | undefined;
    if (!row) return undefined;
    const bytes = new Uint8Array(row.safetensors.buffer, row.safetensors.byteOffset, row.safetensors.byteLength);
    verified(`adapter of cluster ${clusterId} in job ${jobId}`, bytes, row);
    return {
      jobId: row.job_id,
      clusterId: row.cluster_id,
      round: row.round,
      rank: row.rank,
      safetensors: bytes,
      sha256: row.sha256,
    };
  }

  adapters(jobId: string): Omit<StoredAdapter, 'safetensors'>[] {
    const rows = this.db
      .prepare('SELECT job_id, cluster_id, round, rank, sha256 FROM adapters WHERE job_id = ? ORDER BY cluster_id')
      .all(jobId) as Omit<RawAdapter, 'safetensors'>[];
    return rows.map((r) => ({
      jobId: r.job_id,
      clusterId: r.cluster_id,
      round: r.round,
      rank: r.rank,
      sha256: r.sha256,
    }));
  }
}
