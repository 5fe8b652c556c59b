/**
 * The embedded engine: one SQLite file (better-sqlite3, WAL, synchronous=FULL). Calls run synchronously
 * under the promises of the Store interface, so a write is committed when its promise settles.
 */
/* eslint-disable @typescript-eslint/require-await -- a synchronous engine behind the asynchronous Store interface */
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import Database from 'better-sqlite3';
import type { DeviceProfile } from '@floe/shared';
import {
  type ClientRow,
  type JobFields,
  type JobRow,
  type RoundEnding,
  type RoundFields,
  type RoundRow,
  type Store,
  type StoredAdapter,
  type StoredUpdate,
  type WorkerAccess,
  StoreError,
  bytesOf,
  adapterFromColumns,
  adapterValues,
  clientFromColumns,
  jobFromColumns,
  jobValues,
  roundFromColumns,
  roundValues,
  sha256Hex,
  updateFromColumns,
  updateValues,
  verified,
} from './store.js';

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

type Columns = Record<string, unknown>;

export class SqliteStore implements Store {
  readonly engine = 'sqlite';
  readonly workerAccess: WorkerAccess | undefined;
  private readonly db: Database.Database;

  /** Opens (creating if needed) `dataDir/floe.db`; `:memory:` for a throwaway store. */
  constructor(dataDir: string) {
    if (dataDir === ':memory:') {
      this.db = new Database(':memory:');
      this.workerAccess = undefined;
    } else {
      mkdirSync(dataDir, { recursive: true });
      this.db = new Database(path.join(dataDir, 'floe.db'));
      this.workerAccess = { dataDir };
    }
    this.db.pragma('journal_mode = WAL');
    this.db.pragma('synchronous = FULL');
    this.db.pragma('foreign_keys = ON');
    this.db.exec(SCHEMA);
    // stores made before revocation existed
    const columns = this.db.prepare('PRAGMA table_info(clients)').all() as { name: string }[];
    if (!columns.some((c) => c.name === 'revoked_at')) this.db.exec('ALTER TABLE clients ADD COLUMN revoked_at TEXT');
    const roundColumns = this.db.prepare('PRAGMA table_info(rounds)').all() as { name: string }[];
    if (!roundColumns.some((c) => c.name === 'closing')) {
      this.db.exec('ALTER TABLE rounds ADD COLUMN closing INTEGER NOT NULL DEFAULT 0');
    }
  }

  async close(): Promise<void> {
    this.db.close();
  }

  private one(sql: string, ...params: unknown[]): Columns | undefined {
    return this.db.prepare(sql).get(...params) as Columns | undefined;
  }

  private all(sql: string, ...params: unknown[]): Columns[] {
    return this.db.prepare(sql).all(...params) as Columns[];
  }

  private run(sql: string, ...params: unknown[]): number {
    return this.db.prepare(sql).run(...params).changes;
  }

  // ---------------------------------------------------------------------------------------- meta

  async meta(key: string): Promise<string | undefined> {
    return this.one('SELECT value FROM meta WHERE key = ?', key)?.value as string | undefined;
  }

  async initMeta(key: string, value: string): Promise<string> {
    this.run('INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO NOTHING', key, value);
    return (await this.meta(key)) as string;
  }

  async setMeta(key: string, value: string): Promise<void> {
    this.run(
      'INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value',
      key,
      value,
    );
  }

  // ------------------------------------------------------------------------------------- clients

  async addClient(id: string, profile: DeviceProfile): Promise<void> {
    this.insertClient(id, profile);
  }

  private insertClient(id: string, profile: DeviceProfile): void {
    this.run(
      'INSERT INTO clients (id, created_at, profile) VALUES (?, ?, ?)',
      id,
      new Date().toISOString(),
      JSON.stringify(profile),
    );
  }

  async clientStatus(id: string): Promise<'active' | 'revoked' | undefined> {
    const row = this.one('SELECT revoked_at FROM clients WHERE id = ?', id);
    if (!row) return undefined;
    return row.revoked_at === null ? 'active' : 'revoked';
  }

  async revokeClient(id: string): Promise<string | undefined> {
    this.run('UPDATE clients SET revoked_at = COALESCE(revoked_at, ?) WHERE id = ?', new Date().toISOString(), id);
    return (this.one('SELECT revoked_at FROM clients WHERE id = ?', id)?.revoked_at as string | null) ?? undefined;
  }

  async clients(): Promise<ClientRow[]> {
    return this.all('SELECT id, created_at, revoked_at, profile FROM clients ORDER BY created_at, id').map(
      clientFromColumns,
    );
  }

  // ----------------------------------------------------------------------------- enrollment keys

  async addEnrollmentKeys(keyHashes: string[], expiresAt: number): Promise<void> {
    const createdAt = new Date().toISOString();
    this.db.transaction(() => {
      for (const keyHash of keyHashes) {
        this.run(
          'INSERT INTO enrollment_keys (key_hash, created_at, expires_at) VALUES (?, ?, ?)',
          keyHash,
          createdAt,
          expiresAt,
        );
      }
    })();
  }

  async enrollWithKey(keyHash: string, clientId: string, profile: DeviceProfile): Promise<boolean> {
    return this.db.transaction(() => {
      const spent = this.run(
        'UPDATE enrollment_keys SET used_by = ? WHERE key_hash = ? AND used_by IS NULL AND expires_at > ?',
        clientId,
        keyHash,
        Date.now(),
      );
      if (spent !== 1) return false;
      this.insertClient(clientId, profile);
      return true;
    })();
  }

  // ---------------------------------------------------------------------------------------- jobs

  async addJob(job: JobRow): Promise<void> {
    this.run(
      'INSERT INTO jobs (id, spec, status, current_round, created_at, state) VALUES (?, ?, ?, ?, ?, ?)',
      ...jobValues(job),
    );
  }

  async job(id: string): Promise<JobRow | undefined> {
    const row = this.one('SELECT * FROM jobs WHERE id = ?', id);
    return row && jobFromColumns(row);
  }

  async jobs(): Promise<JobRow[]> {
    return this.all('SELECT * FROM jobs ORDER BY created_at, id').map(jobFromColumns);
  }

  private updateJobRow(id: string, fields: JobFields): void {
    const row = this.one('SELECT * FROM jobs WHERE id = ?', id);
    if (!row) throw new StoreError('unknown_job', `no job ${id}`);
    const next = { ...jobFromColumns(row), ...fields };
    this.run(
      'UPDATE jobs SET status = ?, current_round = ?, state = ? WHERE id = ?',
      next.status,
      next.currentRound,
      JSON.stringify(next.state),
      id,
    );
  }

  // -------------------------------------------------------------------------------------- rounds

  async addRound(round: RoundRow): Promise<boolean> {
    return this.db.transaction(() => {
      const job = this.one('SELECT status, current_round FROM jobs WHERE id = ?', round.jobId);
      if (job?.status !== 'running' || Number(job.current_round) !== round.round) return false;
      return (
        this.run(
          `INSERT INTO rounds (job_id, round, status, started_at, deadline, ended_at, sampled, accepted, rejected,
           dropped, clusters, metrics) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
           ON CONFLICT (job_id, round) DO NOTHING`,
          ...roundValues(round),
        ) === 1
      );
    })();
  }

  async round(jobId: string, round: number): Promise<RoundRow | undefined> {
    const row = this.one('SELECT * FROM rounds WHERE job_id = ? AND round = ?', jobId, round);
    return row && roundFromColumns(row);
  }

  async rounds(jobId: string): Promise<RoundRow[]> {
    return this.all('SELECT * FROM rounds WHERE job_id = ? ORDER BY round', jobId).map(roundFromColumns);
  }

  async openRounds(): Promise<RoundRow[]> {
    return this.all("SELECT * FROM rounds WHERE status = 'open'").map(roundFromColumns);
  }

  async updateRound(jobId: string, round: number, fields: RoundFields): Promise<void> {
    this.updateRoundRow(jobId, round, fields);
  }

  private updateRoundRow(jobId: string, round: number, fields: RoundFields): void {
    const row = this.one('SELECT * FROM rounds WHERE job_id = ? AND round = ?', jobId, round);
    if (!row) throw new StoreError('unknown_round', `no round ${round} of job ${jobId}`);
    const next = { ...roundFromColumns(row), ...fields };
    this.run(
      'UPDATE rounds SET status = ?, deadline = ?, ended_at = ?, dropped = ?, clusters = ?, metrics = ? WHERE job_id = ? AND round = ?',
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

  async countRejected(jobId: string, round: number): Promise<void> {
    this.run('UPDATE rounds SET rejected = rejected + 1 WHERE job_id = ? AND round = ?', jobId, round);
  }

  async beginClosing(jobId: string, round: number): Promise<boolean> {
    return (
      this.run("UPDATE rounds SET closing = 1 WHERE job_id = ? AND round = ? AND status = 'open'", jobId, round) === 1
    );
  }

  async endRound(ending: RoundEnding): Promise<boolean> {
    return this.db.transaction(() => {
      if (ending.expect) {
        const { round: index, open } = ending.expect;
        const job = this.one('SELECT status, current_round FROM jobs WHERE id = ?', ending.jobId);
        const round = this.one('SELECT status FROM rounds WHERE job_id = ? AND round = ?', ending.jobId, index);
        if (job?.status !== 'running' || Number(job.current_round) !== index || (round?.status === 'open') !== open) {
          return false;
        }
      }
      for (const adapter of ending.adapters ?? []) this.putAdapter(adapter);
      if (ending.round) this.updateRoundRow(ending.jobId, ending.round.index, ending.round.fields);
      this.updateJobRow(ending.jobId, ending.job);
      return true;
    })();
  }

  // ------------------------------------------------------------------------------------- updates

  async addUpdate(
    update: Omit<StoredUpdate, 'sha256' | 'receivedAt'>,
  ): Promise<(StoredUpdate & { roundAccepted: number }) | undefined> {
    const stored: StoredUpdate = { ...update, sha256: sha256Hex(update.frame), receivedAt: new Date().toISOString() };
    const roundAccepted = this.db.transaction(() => {
      const counted = this.one(
        `UPDATE rounds SET accepted = accepted + 1
         WHERE job_id = ? AND round = ? AND status = 'open' AND closing = 0 RETURNING accepted`,
        stored.jobId,
        stored.round,
      );
      if (!counted) return undefined;
      this.run(
        `INSERT INTO updates (job_id, round, client_id, num_samples, rank, metrics, frame, sha256, received_at)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`,
        ...updateValues(stored),
      );
      return Number(counted.accepted);
    })();
    return roundAccepted === undefined ? undefined : { ...stored, roundAccepted };
  }

  async hasUpdate(jobId: string, round: number, clientId: string): Promise<boolean> {
    return (
      this.one('SELECT 1 FROM updates WHERE job_id = ? AND round = ? AND client_id = ?', jobId, round, clientId) !==
      undefined
    );
  }

  async updates(jobId: string, round: number): Promise<StoredUpdate[]> {
    return this.all('SELECT * FROM updates WHERE job_id = ? AND round = ? ORDER BY client_id', jobId, round).map(
      updateFromColumns,
    );
  }

  /** A round's accepted updates one at a time (ordered by client, checksums verified). */
  async *streamUpdates(jobId: string, round: number): AsyncGenerator<StoredUpdate> {
    const rows = this.db
      .prepare('SELECT * FROM updates WHERE job_id = ? AND round = ? ORDER BY client_id')
      .iterate(jobId, round) as IterableIterator<Columns>;
    for (const r of rows) yield updateFromColumns(r);
  }

  async acceptedClients(jobId: string, round: number): Promise<Set<string>> {
    return new Set(
      this.all('SELECT client_id FROM updates WHERE job_id = ? AND round = ?', jobId, round).map(
        (r) => r.client_id as string,
      ),
    );
  }

  async tookPart(jobId: string, clientId: string): Promise<boolean> {
    const row = this.one(
      "SELECT 1 FROM rounds, json_each(rounds.sampled) WHERE rounds.job_id = ? AND json_extract(json_each.value, '$.clientId') = ? LIMIT 1",
      jobId,
      clientId,
    );
    return row !== undefined;
  }

  // ------------------------------------------------------------------------------------ adapters

  private putAdapter(adapter: Omit<StoredAdapter, 'sha256'>): void {
    this.run(
      `INSERT INTO adapters (job_id, cluster_id, round, rank, safetensors, sha256) VALUES (?, ?, ?, ?, ?, ?)
       ON CONFLICT(job_id, cluster_id) DO UPDATE SET round = excluded.round, rank = excluded.rank,
       safetensors = excluded.safetensors, sha256 = excluded.sha256`,
      ...adapterValues(adapter),
    );
  }

  async adapter(jobId: string, clusterId: number): Promise<StoredAdapter | undefined> {
    const row = this.one('SELECT * FROM adapters WHERE job_id = ? AND cluster_id = ?', jobId, clusterId);
    if (!row) return undefined;
    const bytes = bytesOf(row.safetensors as Buffer);
    verified(`adapter of cluster ${clusterId} in job ${jobId}`, bytes, row as { sha256: string });
    return { ...adapterFromColumns(row), safetensors: bytes };
  }

  async adapters(jobId: string): Promise<Omit<StoredAdapter, 'safetensors'>[]> {
    return this.all(
      'SELECT job_id, cluster_id, round, rank, sha256 FROM adapters WHERE job_id = ? ORDER BY cluster_id',
      jobId,
    ).map(adapterFromColumns);
  }
}
