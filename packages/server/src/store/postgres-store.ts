/**
 * The shared engine: PostgreSQL through node-postgres (`pg`), for several server processes over one
 * database. Schema changes are numbered migrations applied under an advisory lock, so replicas that
 * start together apply each once. Every multi-row write is one transaction; with PostgreSQL's default
 * `synchronous_commit = on`, a promise settles only after its commit is durable.
 */
import pg from 'pg';
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
  adapterFromColumns,
  adapterValues,
  bytesOf,
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

/** Applied in order, each once, recorded in `schema_migrations`. Append; never edit an applied one. */
export const MIGRATIONS: readonly string[] = [
  `CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
   CREATE TABLE clients (id TEXT PRIMARY KEY, created_at TEXT NOT NULL, profile JSONB NOT NULL, revoked_at TEXT);
   CREATE TABLE jobs (
     id TEXT PRIMARY KEY, spec JSONB NOT NULL, status TEXT NOT NULL, current_round INTEGER NOT NULL,
     created_at TEXT NOT NULL, state JSONB NOT NULL);
   CREATE TABLE rounds (
     job_id TEXT NOT NULL REFERENCES jobs (id), round INTEGER NOT NULL, status TEXT NOT NULL,
     started_at TEXT NOT NULL, deadline BIGINT NOT NULL, ended_at TEXT, sampled JSONB NOT NULL,
     accepted INTEGER NOT NULL DEFAULT 0, rejected INTEGER NOT NULL DEFAULT 0, dropped INTEGER NOT NULL DEFAULT 0,
     clusters INTEGER NOT NULL DEFAULT 0, metrics JSONB NOT NULL DEFAULT '{}', PRIMARY KEY (job_id, round));
   CREATE INDEX rounds_open ON rounds (status) WHERE status = 'open';
   CREATE TABLE updates (
     job_id TEXT NOT NULL, round INTEGER NOT NULL, client_id TEXT NOT NULL, num_samples INTEGER NOT NULL,
     rank INTEGER NOT NULL, metrics JSONB NOT NULL, frame BYTEA NOT NULL, sha256 TEXT NOT NULL,
     received_at TEXT NOT NULL, PRIMARY KEY (job_id, round, client_id),
     FOREIGN KEY (job_id, round) REFERENCES rounds (job_id, round));
   CREATE TABLE enrollment_keys (
     key_hash TEXT PRIMARY KEY, created_at TEXT NOT NULL, expires_at BIGINT NOT NULL, used_by TEXT);
   CREATE TABLE adapters (
     job_id TEXT NOT NULL REFERENCES jobs (id), cluster_id INTEGER NOT NULL, round INTEGER NOT NULL,
     rank INTEGER NOT NULL, safetensors BYTEA NOT NULL, sha256 TEXT NOT NULL, PRIMARY KEY (job_id, cluster_id));`,
  `ALTER TABLE rounds ADD COLUMN closing BOOLEAN NOT NULL DEFAULT false;`,
];

/** Any constants: every Floe server over the database takes the first to migrate, the second to coordinate. */
const MIGRATION_LOCK = 0x466c6f65;
const COORDINATOR_LOCK = 0x466c6f66;

export interface PostgresOptions {
  maxConnections?: number;
  /** A query (or a wait for a connection) that takes longer fails instead of holding the server. */
  timeoutMs?: number;
  /** Errors of connections that no caller awaits (the database restarting, a dropped link). */
  onError?: (error: Error) => void;
  /** The coordinator's lease was lost and another server now holds it: this one must stop coordinating. */
  onLeaseLost?: () => void;
  /** How long `open` waits for the lease held by another server (10 s); not used by a replica. */
  leaseWaitMs?: number;
  /**
   * One of several replicas over the database: `open` does not wait for the lease but tries for it every
   * `leasePollMs` (1 s) and calls `onLeaseTaken` once it has it (this replica then coordinates).
   */
  replica?: boolean;
  leasePollMs?: number;
  onLeaseTaken?: () => void;
}

type Columns = Record<string, unknown>;

/** A database URL as it may be shown (logs, errors): its password replaced. */
function withoutPassword(url: string): string {
  try {
    const parsed = new URL(url);
    if (parsed.password) parsed.password = '***';
    return parsed.toString();
  } catch {
    return '(an unparseable URL)';
  }
}
type Queryable = Pick<pg.PoolClient, 'query'>;

export class PostgresStore implements Store {
  readonly engine = 'postgres';
  readonly workerAccess: WorkerAccess;

  private lease: pg.Client | undefined;
  private leaseRetry: NodeJS.Timeout | undefined;
  private closed = false;

  private constructor(
    private readonly pool: pg.Pool,
    private readonly url: string,
    private readonly options: PostgresOptions,
  ) {
    this.workerAccess = { databaseUrl: url };
  }

  /**
   * Connects to `url` (postgres://user:password@host:port/database), brings its schema up to date and
   * takes the coordinator's lease; refused when another server holds it.
   */
  static async open(url: string, options: PostgresOptions = {}): Promise<PostgresStore> {
    const timeoutMs = options.timeoutMs ?? 30_000;
    const pool = new pg.Pool({
      connectionString: url,
      max: options.maxConnections ?? 10,
      connectionTimeoutMillis: timeoutMs,
      query_timeout: timeoutMs,
      keepAlive: true,
    });
    // an idle connection that the database drops must not take the process down; the next query reconnects
    pool.on('error', (error) => options.onError?.(error));
    const store = new PostgresStore(pool, url, options);
    try {
      await store.transaction(async (client) => {
        await client.query('SELECT pg_advisory_xact_lock($1)', [MIGRATION_LOCK]);
        await client.query(
          'CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)',
        );
        const { rows } = await client.query<{ version: number }>('SELECT version FROM schema_migrations');
        const applied = new Set(rows.map((r) => r.version));
        for (const [index, sql] of MIGRATIONS.entries()) {
          const version = index + 1;
          if (applied.has(version)) continue;
          await client.query(sql);
          await client.query('INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)', [
            version,
            new Date().toISOString(),
          ]);
        }
      });
      if (options.replica) {
        store.pollLease();
        return store;
      }
      // a server killed a moment ago may still hold it until the database notices its connection is gone
      const until = Date.now() + (options.leaseWaitMs ?? 10_000);
      let leased = await store.takeLease();
      while (!leased && Date.now() < until) {
        await new Promise((resolve) => setTimeout(resolve, 250));
        leased = await store.takeLease();
      }
      if (!leased) {
        throw new StoreError(
          'database_in_use',
          'another Floe server coordinates this database (one server per database until replicas exist)',
        );
      }
    } catch (error) {
      await store.close();
      if (error instanceof StoreError) throw error;
      const reason = error instanceof Error ? error.message : String(error);
      throw new StoreError(
        'database_unavailable',
        `cannot open the PostgreSQL database ${withoutPassword(url)}: ${reason}`,
      );
    }
    return store;
  }

  /** Whether this server holds the coordinator's lease. */
  get coordinating(): boolean {
    return this.lease !== undefined;
  }

  /** A replica's wait for the lease: tries now and every `leasePollMs` until it has it. */
  private pollLease(): void {
    const attempt = async () => {
      this.leaseRetry = undefined;
      if (this.closed || this.lease) return;
      if (await this.takeLease()) {
        if (!this.closed) this.options.onLeaseTaken?.();
        return;
      }
      if (!this.closed) this.leaseRetry = setTimeout(() => void attempt(), this.options.leasePollMs ?? 1000);
    };
    void attempt();
  }

  /** The coordinator's lease: a session-level advisory lock, held by one dedicated connection. */
  private async takeLease(): Promise<boolean> {
    const client = new pg.Client({
      connectionString: this.url,
      keepAlive: true,
      keepAliveInitialDelayMillis: 5000,
      query_timeout: 3000,
    });
    client.on('error', (error) => {
      this.options.onError?.(error);
      this.leaseBroken(client);
    });
    client.on('end', () => this.leaseBroken(client));
    try {
      await client.connect();
      // the database frees the lock when this session ends; over TCP, keepalives bound how long a holder
      // whose machine vanished (no FIN) keeps it: about idle + interval x count = 11 s
      await client.query('SET tcp_keepalives_idle = 5; SET tcp_keepalives_interval = 2; SET tcp_keepalives_count = 3');
      const { rows } = await client.query<{ taken: boolean }>('SELECT pg_try_advisory_lock($1) AS taken', [
        COORDINATOR_LOCK,
      ]);
      if (rows[0]?.taken) {
        this.lease = client;
        // A link cut without a FIN (a partition) would leave this server believing it coordinates while
        // the database, past its keepalives, frees the lock for another: ask the session every 2 s.
        const check = setInterval(() => {
          if (this.lease !== client) return clearInterval(check);
          client.query('SELECT 1').catch(() => {
            clearInterval(check);
            void client.end().catch(() => undefined);
            this.leaseBroken(client);
          });
        }, 2000);
        check.unref();
        return true;
      }
    } catch (error) {
      this.options.onError?.(error as Error);
    }
    await client.end().catch(() => undefined);
    return false;
  }

  /** The lease's connection ended: take the lease again as soon as the database answers. */
  private leaseBroken(client: pg.Client): void {
    if (this.closed || this.lease !== client) return;
    this.lease = undefined;
    const retry = async () => {
      this.leaseRetry = undefined;
      if (this.closed) return;
      if (await this.takeLease()) return;
      // the lock is free only when no session holds it: false with the database up means another server
      const up = await this.pool.query('SELECT 1').then(
        () => true,
        () => false,
      );
      if (up && !this.closed) this.options.onLeaseLost?.();
      else if (!this.closed) this.leaseRetry = setTimeout(() => void retry(), 1000);
    };
    this.leaseRetry = setTimeout(() => void retry(), 100);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.leaseRetry);
    await this.lease?.end().catch(() => undefined);
    await this.pool.end();
  }

  private async transaction<T>(work: (client: pg.PoolClient) => Promise<T>): Promise<T> {
    const client = await this.pool.connect();
    // a checked-out connection that breaks emits 'error' on the client, which the pool no longer hears
    const onError = (error: Error) => this.options.onError?.(error);
    client.on('error', onError);
    let broken: Error | undefined;
    try {
      await client.query('BEGIN');
      const result = await work(client);
      await client.query('COMMIT');
      return result;
    } catch (error) {
      await client.query('ROLLBACK').catch((rollback: unknown) => {
        broken = rollback instanceof Error ? rollback : new Error(String(rollback));
      });
      throw error;
    } finally {
      client.off('error', onError);
      // a connection that could not roll back is destroyed, not handed to the next caller
      client.release(broken);
    }
  }

  private async all(sql: string, params: unknown[] = [], via: Queryable = this.pool): Promise<Columns[]> {
    return (await via.query<Columns>(sql, params)).rows;
  }

  private async one(sql: string, params: unknown[] = [], via: Queryable = this.pool): Promise<Columns | undefined> {
    return (await this.all(sql, params, via))[0];
  }

  private async run(sql: string, params: unknown[] = [], via: Queryable = this.pool): Promise<number> {
    return (await via.query(sql, params)).rowCount ?? 0;
  }

  // ---------------------------------------------------------------------------------------- meta

  async meta(key: string): Promise<string | undefined> {
    return (await this.one('SELECT value FROM meta WHERE key = $1', [key]))?.value as string | undefined;
  }

  async initMeta(key: string, value: string): Promise<string> {
    await this.run('INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING', [key, value]);
    return (await this.meta(key)) as string;
  }

  async setMeta(key: string, value: string): Promise<void> {
    await this.run(
      'INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value',
      [key, value],
    );
  }

  // ------------------------------------------------------------------------------------- clients

  async addClient(id: string, profile: DeviceProfile, via: Queryable = this.pool): Promise<void> {
    await this.run(
      'INSERT INTO clients (id, created_at, profile) VALUES ($1, $2, $3)',
      [id, new Date().toISOString(), JSON.stringify(profile)],
      via,
    );
  }

  async clientStatus(id: string): Promise<'active' | 'revoked' | undefined> {
    const row = await this.one('SELECT revoked_at FROM clients WHERE id = $1', [id]);
    if (!row) return undefined;
    return row.revoked_at === null ? 'active' : 'revoked';
  }

  async revokeClient(id: string): Promise<string | undefined> {
    const row = await this.one(
      'UPDATE clients SET revoked_at = COALESCE(revoked_at, $1) WHERE id = $2 RETURNING revoked_at',
      [new Date().toISOString(), id],
    );
    return (row?.revoked_at as string | undefined) ?? undefined;
  }

  async clients(): Promise<ClientRow[]> {
    return (await this.all('SELECT id, created_at, revoked_at, profile FROM clients ORDER BY created_at, id')).map(
      clientFromColumns,
    );
  }

  // ----------------------------------------------------------------------------- enrollment keys

  async addEnrollmentKeys(keyHashes: string[], expiresAt: number): Promise<void> {
    await this.run('INSERT INTO enrollment_keys (key_hash, created_at, expires_at) SELECT unnest($1::text[]), $2, $3', [
      keyHashes,
      new Date().toISOString(),
      expiresAt,
    ]);
  }

  async enrollWithKey(keyHash: string, clientId: string, profile: DeviceProfile): Promise<boolean> {
    return this.transaction(async (client) => {
      const spent = await this.run(
        'UPDATE enrollment_keys SET used_by = $1 WHERE key_hash = $2 AND used_by IS NULL AND expires_at > $3',
        [clientId, keyHash, Date.now()],
        client,
      );
      if (spent !== 1) return false;
      await this.addClient(clientId, profile, client);
      return true;
    });
  }

  // ---------------------------------------------------------------------------------------- jobs

  async addJob(job: JobRow): Promise<void> {
    await this.run(
      'INSERT INTO jobs (id, spec, status, current_round, created_at, state) VALUES ($1, $2, $3, $4, $5, $6)',
      jobValues(job),
    );
  }

  async job(id: string): Promise<JobRow | undefined> {
    const row = await this.one('SELECT * FROM jobs WHERE id = $1', [id]);
    return row && jobFromColumns(row);
  }

  async jobs(): Promise<JobRow[]> {
    return (await this.all('SELECT * FROM jobs ORDER BY created_at, id')).map(jobFromColumns);
  }

  private async updateJobRow(id: string, fields: JobFields, via: Queryable): Promise<void> {
    const changed = await this.run(
      `UPDATE jobs SET status = COALESCE($2, status), current_round = COALESCE($3, current_round),
       state = COALESCE($4::jsonb, state) WHERE id = $1`,
      [id, fields.status ?? null, fields.currentRound ?? null, fields.state ? JSON.stringify(fields.state) : null],
      via,
    );
    if (changed !== 1) throw new StoreError('unknown_job', `no job ${id}`);
  }

  // -------------------------------------------------------------------------------------- rounds

  async addRound(round: RoundRow): Promise<boolean> {
    return this.transaction(async (client) => {
      // shares the job row's lock with other starts, so a stop (which takes it for update) waits or wins
      const job = await this.one(
        'SELECT status, current_round FROM jobs WHERE id = $1 FOR SHARE',
        [round.jobId],
        client,
      );
      if (job?.status !== 'running' || Number(job.current_round) !== round.round) return false;
      const inserted = await this.run(
        `INSERT INTO rounds (job_id, round, status, started_at, deadline, ended_at, sampled, accepted, rejected,
         dropped, clusters, metrics) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
         ON CONFLICT (job_id, round) DO NOTHING`,
        roundValues(round),
        client,
      );
      return inserted === 1;
    });
  }

  async round(jobId: string, round: number): Promise<RoundRow | undefined> {
    const row = await this.one('SELECT * FROM rounds WHERE job_id = $1 AND round = $2', [jobId, round]);
    return row && roundFromColumns(row);
  }

  async rounds(jobId: string): Promise<RoundRow[]> {
    return (await this.all('SELECT * FROM rounds WHERE job_id = $1 ORDER BY round', [jobId])).map(roundFromColumns);
  }

  async openRounds(): Promise<RoundRow[]> {
    return (await this.all("SELECT * FROM rounds WHERE status = 'open'")).map(roundFromColumns);
  }

  async updateRound(jobId: string, round: number, fields: RoundFields): Promise<void> {
    await this.updateRoundRow(jobId, round, fields, this.pool);
  }

  private async updateRoundRow(jobId: string, round: number, fields: RoundFields, via: Queryable): Promise<void> {
    // ended_at is the one field that may be set back to null; a missing key leaves it as it is
    const changed = await this.run(
      `UPDATE rounds SET status = COALESCE($3, status), deadline = COALESCE($4, deadline),
       ended_at = CASE WHEN $5::boolean THEN $6::text ELSE ended_at END, dropped = COALESCE($7, dropped),
       clusters = COALESCE($8, clusters), metrics = COALESCE($9::jsonb, metrics) WHERE job_id = $1 AND round = $2`,
      [
        jobId,
        round,
        fields.status ?? null,
        fields.deadline ?? null,
        'endedAt' in fields,
        fields.endedAt ?? null,
        fields.dropped ?? null,
        fields.clusters ?? null,
        fields.metrics ? JSON.stringify(fields.metrics) : null,
      ],
      via,
    );
    if (changed !== 1) throw new StoreError('unknown_round', `no round ${round} of job ${jobId}`);
  }

  async countRejected(jobId: string, round: number): Promise<void> {
    await this.run('UPDATE rounds SET rejected = rejected + 1 WHERE job_id = $1 AND round = $2', [jobId, round]);
  }

  async beginClosing(jobId: string, round: number): Promise<boolean> {
    // takes the round's row lock, so it waits for an addUpdate into the round that holds it
    const changed = await this.run(
      "UPDATE rounds SET closing = true WHERE job_id = $1 AND round = $2 AND status = 'open'",
      [jobId, round],
    );
    return changed === 1;
  }

  async endRound(ending: RoundEnding): Promise<boolean> {
    return this.transaction(async (client) => {
      if (ending.expect) {
        // job row, then round row: the one order every transaction here locks them in
        const { round: index, open } = ending.expect;
        const job = await this.one(
          'SELECT status, current_round FROM jobs WHERE id = $1 FOR UPDATE',
          [ending.jobId],
          client,
        );
        const round = await this.one(
          'SELECT status FROM rounds WHERE job_id = $1 AND round = $2 FOR UPDATE',
          [ending.jobId, index],
          client,
        );
        if (job?.status !== 'running' || Number(job.current_round) !== index || (round?.status === 'open') !== open) {
          return false;
        }
      }
      for (const adapter of ending.adapters ?? []) await this.putAdapter(adapter, client);
      if (ending.round) await this.updateRoundRow(ending.jobId, ending.round.index, ending.round.fields, client);
      await this.updateJobRow(ending.jobId, ending.job, client);
      return true;
    });
  }

  // ------------------------------------------------------------------------------------- updates

  async addUpdate(
    update: Omit<StoredUpdate, 'sha256' | 'receivedAt'>,
  ): Promise<(StoredUpdate & { roundAccepted: number }) | undefined> {
    const stored: StoredUpdate = { ...update, sha256: sha256Hex(update.frame), receivedAt: new Date().toISOString() };
    // One statement, so one round trip and one implicit transaction: the count first, which locks the
    // round's row (so a beginClosing waits for it, or it sees the round closing), then the row itself.
    const row = await this.one(
      `WITH counted AS (
         UPDATE rounds SET accepted = accepted + 1
         WHERE job_id = $1 AND round = $2 AND status = 'open' AND NOT closing RETURNING accepted),
       inserted AS (
         INSERT INTO updates (job_id, round, client_id, num_samples, rank, metrics, frame, sha256, received_at)
         SELECT $1::text, $2::integer, $3::text, $4::integer, $5::integer, $6::jsonb, $7::bytea, $8::text, $9::text
         FROM counted RETURNING 1)
       SELECT accepted FROM counted, inserted`,
      updateValues(stored),
    );
    return row ? { ...stored, roundAccepted: Number(row.accepted) } : undefined;
  }

  async hasUpdate(jobId: string, round: number, clientId: string): Promise<boolean> {
    const row = await this.one('SELECT 1 FROM updates WHERE job_id = $1 AND round = $2 AND client_id = $3', [
      jobId,
      round,
      clientId,
    ]);
    return row !== undefined;
  }

  async updates(jobId: string, round: number): Promise<StoredUpdate[]> {
    const rows = await this.all('SELECT * FROM updates WHERE job_id = $1 AND round = $2 ORDER BY client_id', [
      jobId,
      round,
    ]);
    return rows.map(updateFromColumns);
  }

  /**
   * A round's accepted updates one at a time (ordered by client, checksums verified), read by another
   * process or thread over its own connection, a page of rows at a time.
   */
  static async *streamUpdates(url: string, jobId: string, round: number, pageRows = 16): AsyncGenerator<StoredUpdate> {
    const client = new pg.Client({
      connectionString: url,
      keepAlive: true,
      connectionTimeoutMillis: 30_000,
      query_timeout: 60_000,
    });
    client.on('error', () => undefined); // a query in flight fails with it
    try {
      await client.connect();
      let after = '';
      for (;;) {
        const { rows } = await client.query<Columns>(
          'SELECT * FROM updates WHERE job_id = $1 AND round = $2 AND client_id > $3 ORDER BY client_id LIMIT $4',
          [jobId, round, after, pageRows],
        );
        for (const r of rows) yield updateFromColumns(r);
        if (rows.length < pageRows) return;
        after = rows[rows.length - 1]?.client_id as string;
      }
    } finally {
      await client.end().catch(() => undefined);
    }
  }

  async acceptedClients(jobId: string, round: number): Promise<Set<string>> {
    const rows = await this.all('SELECT client_id FROM updates WHERE job_id = $1 AND round = $2', [jobId, round]);
    return new Set(rows.map((r) => r.client_id as string));
  }

  async tookPart(jobId: string, clientId: string): Promise<boolean> {
    const row = await this.one(
      `SELECT 1 FROM rounds WHERE job_id = $1 AND sampled @> jsonb_build_array(jsonb_build_object('clientId', $2::text))
       LIMIT 1`,
      [jobId, clientId],
    );
    return row !== undefined;
  }

  // ------------------------------------------------------------------------------------ adapters

  private async putAdapter(adapter: Omit<StoredAdapter, 'sha256'>, via: Queryable): Promise<void> {
    await this.run(
      `INSERT INTO adapters (job_id, cluster_id, round, rank, safetensors, sha256) VALUES ($1, $2, $3, $4, $5, $6)
       ON CONFLICT (job_id, cluster_id) DO UPDATE SET round = excluded.round, rank = excluded.rank,
       safetensors = excluded.safetensors, sha256 = excluded.sha256`,
      adapterValues(adapter),
      via,
    );
  }

  async adapter(jobId: string, clusterId: number): Promise<StoredAdapter | undefined> {
    const row = await this.one('SELECT * FROM adapters WHERE job_id = $1 AND cluster_id = $2', [jobId, clusterId]);
    if (!row) return undefined;
    const bytes = bytesOf(row.safetensors as Buffer);
    verified(`adapter of cluster ${clusterId} in job ${jobId}`, bytes, row as { sha256: string });
    return { ...adapterFromColumns(row), safetensors: bytes };
  }

  async adapters(jobId: string): Promise<Omit<StoredAdapter, 'safetensors'>[]> {
    const rows = await this.all(
      'SELECT job_id, cluster_id, round, rank, sha256 FROM adapters WHERE job_id = $1 ORDER BY cluster_id',
      [jobId],
    );
    return rows.map(adapterFromColumns);
  }
}
