/**
 * The REST API: enrollment (join token -> credential), jobs (admin), round history, clients, and the
 * current adapter of each cluster in PEFT layout. Bodies are validated against the TypeBox schemas of
 * @floe/shared, which also document the routes at /docs.
 */
import { createHash, randomBytes } from 'node:crypto';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import Type from 'typebox';
import {
  EnrollRequest,
  EnrollResponse,
  ErrorBody,
  FloeError,
  Id,
  JobSpec,
  JobSummary,
  OpenJob,
  PROTOCOL_VERSION,
  type RoundRecord,
  RoundRecord as RoundRecordSchema,
  MAX_LORA_RANK,
  adapterFromTensors,
  adapterToTensors,
  parseSafetensors,
  peftAdapterConfig,
  serializeSafetensors,
} from '@floe/shared';
import { startAdapter } from '@floe/federation';
import { type Credentials, bearer, newClientId, safeEqual } from '../auth.js';
import type { ServerConfig } from '../config.js';
import type { ServerMetrics } from '../metrics.js';
import type { Coordinator } from '../rounds/coordinator.js';
import { type JobRow, type RoundRow, type Store, sha256Hex } from '../store/store.js';
import type { Gateway } from '../transport/gateway.js';

export class HttpError extends FloeError {
  constructor(
    readonly status: number,
    code: string,
    message: string,
  ) {
    super(code, message);
  }
}

export interface ApiDeps {
  config: ServerConfig;
  store: Store;
  credentials: Credentials;
  coordinator: Coordinator;
  gateway: Gateway;
  metrics: ServerMetrics;
}

export function roundRecord(r: RoundRow): RoundRecord {
  return {
    round: r.round,
    status: r.status,
    startedAt: r.startedAt,
    endedAt: r.endedAt,
    sampled: r.sampled.length,
    accepted: r.accepted,
    rejected: r.rejected,
    dropped: r.dropped,
    clusters: r.clusters,
    metrics: r.metrics,
  };
}

export async function jobSummary(store: Store, job: JobRow): Promise<JobSummary> {
  return {
    id: job.id,
    spec: job.spec,
    status: job.status,
    currentRound: job.currentRound,
    createdAt: job.createdAt,
    rounds: (await store.rounds(job.id)).map(roundRecord),
  };
}

const JobParams = Type.Object({ id: Id }, { additionalProperties: false });
const ClusterParams = Type.Object(
  { id: Id, cluster: Type.Integer({ minimum: 0, maximum: 1_000_000 }) },
  { additionalProperties: false },
);
/** A cluster adapter as a client of this rank (and these layers) receives it in a round. */
const AdapterQuery = Type.Object(
  {
    rank: Type.Optional(Type.Integer({ minimum: 1, maximum: MAX_LORA_RANK })),
    layers: Type.Optional(Type.String({ pattern: '^[0-9]{1,4}(,[0-9]{1,4}){0,255}$' })),
  },
  { additionalProperties: false },
);
const RoundParams = Type.Object(
  { id: Id, round: Type.Integer({ minimum: 0, maximum: 1_000_000 }) },
  { additionalProperties: false },
);
const UpdateInfo = Type.Object({
  clientId: Id,
  numSamples: Type.Integer(),
  rank: Type.Integer(),
  sha256: Type.String(),
  receivedAt: Type.String(),
  metrics: Type.Record(Type.String(), Type.Number()),
});
const ClientInfo = Type.Object({
  id: Id,
  createdAt: Type.String(),
  revokedAt: Type.Union([Type.String(), Type.Null()]),
  connected: Type.Boolean(),
  profile: Type.Unknown(),
});
const ClusterInfo = Type.Object({
  clusterId: Type.Integer(),
  round: Type.Integer(),
  rank: Type.Integer(),
  sha256: Type.String(),
  clients: Type.Array(Id),
});
const errors = { 400: ErrorBody, 401: ErrorBody, 403: ErrorBody, 404: ErrorBody, 429: ErrorBody };
const admin = [{ adminToken: [] }];

/**
 * The ETag of a download: the stored adapter's SHA-256 as it is; for a resized one, the SHA-256 of
 * that hash and the resize (the resize is deterministic, so equal tags mean equal bytes).
 */
function adapterEtag(sha256: string, rank: number | undefined, layers: string | undefined): string {
  if (rank === undefined && layers === undefined) return `"${sha256}"`;
  return `"${createHash('sha256')
    .update(`${sha256}:${rank ?? ''}:${layers ?? ''}`)
    .digest('hex')}"`;
}

/** Whether an If-None-Match header names `etag` (a list, weak forms, or `*`). */
function matchesEtag(header: string | undefined, etag: string): boolean {
  if (!header) return false;
  return header.split(',').some((tag) => {
    const t = tag.trim();
    return t === '*' || t === etag || t === `W/${etag}`;
  });
}

export function registerApi(app: FastifyInstance, deps: ApiDeps): void {
  const { config, store, credentials, coordinator, gateway, metrics } = deps;

  // both are onRequest hooks: they run before the body is read, so an unauthenticated caller gets 401
  // without the server parsing or validating anything it sent
  const requireAdmin = (request: FastifyRequest, _reply: FastifyReply, done: (error?: Error) => void): void => {
    const token = bearer(request.headers.authorization);
    if (!token || !config.adminToken || !safeEqual(token, config.adminToken)) {
      done(new HttpError(401, 'unauthorized', 'admin token required: Authorization: Bearer <admin token>'));
      return;
    }
    done();
  };
  /** Admins, and enrolled clients with their credential. */
  const requireAdminOrClient = async (request: FastifyRequest): Promise<void> => {
    const token = bearer(request.headers.authorization);
    if (token && config.adminToken && safeEqual(token, config.adminToken)) return;
    const clientId = await credentials.verify(token).catch(() => undefined);
    if (!clientId || (await store.clientStatus(clientId)) !== 'active') {
      throw new HttpError(401, 'unauthorized', 'an admin token or a client credential is required');
    }
  };
  /** The enrolled, unrevoked client a request's credential names, or 401 saying why not. */
  const activeClient = async (request: FastifyRequest): Promise<{ clientId: string }> => {
    let clientId: string;
    try {
      clientId = await credentials.verify(bearer(request.headers.authorization));
    } catch (error) {
      throw new HttpError(401, 'bad_credential', error instanceof Error ? error.message : 'credential refused');
    }
    const status = await store.clientStatus(clientId);
    if (status === 'revoked') throw new HttpError(401, 'revoked', `client ${clientId} was revoked`);
    if (!status) throw new HttpError(401, 'unknown_client', `client ${clientId} is not enrolled`);
    return { clientId };
  };
  /**
   * Admins, and the clients that took part in the job of the request's `:id` (sampled in one of its
   * rounds): a cluster adapter carries information about its clients' data.
   */
  const requireJobParticipant = async (request: FastifyRequest): Promise<void> => {
    const token = bearer(request.headers.authorization);
    if (token && config.adminToken && safeEqual(token, config.adminToken)) return;
    const { clientId } = await activeClient(request);
    const jobId = (request.params as { id: string }).id;
    if (!(await store.tookPart(jobId, clientId))) {
      throw new HttpError(403, 'not_a_participant', `client ${clientId} took no part in job ${jobId}`);
    }
  };
  const jobOr404 = async (id: string): Promise<JobRow> => {
    const job = await store.job(id);
    if (!job) throw new HttpError(404, 'unknown_job', `no job ${id}`);
    return job;
  };

  app.get(
    '/healthz',
    { schema: { tags: ['ops'], summary: 'Liveness and readiness', response: { 200: Type.Unknown() } } },
    async () => ({
      status: 'ok',
      protocolVersion: PROTOCOL_VERSION,
      uptimeSec: Math.round(process.uptime()),
      connectedClients: gateway.connectedCount(),
      // with replicas, whether this one starts and closes rounds (one does at a time)
      coordinating: coordinator.isCoordinating,
      runningJobs: (await store.jobs()).filter((j) => j.status === 'running').length,
    }),
  );

  app.get('/metrics', { schema: { tags: ['ops'], summary: 'Prometheus metrics' } }, async (_request, reply) => {
    void reply.header('content-type', metrics.registry.contentType);
    return metrics.registry.metrics();
  });

  app.post(
    '/v1/enroll',
    {
      schema: {
        tags: ['clients'],
        summary: 'Trade the join token for a client credential',
        body: EnrollRequest,
        response: { 200: EnrollResponse, ...errors },
      },
      config: { rateLimit: { max: Math.max(1, Math.ceil(config.httpRateLimitPerMinute / 4)), timeWindow: 60_000 } },
      bodyLimit: 16 * 1024,
    },
    async (request) => {
      const body = request.body as EnrollRequest;
      if (body.protocolVersion !== PROTOCOL_VERSION) {
        throw new HttpError(
          400,
          'version_mismatch',
          `client speaks protocol ${body.protocolVersion}, this server speaks ${PROTOCOL_VERSION}`,
        );
      }
      const clientId = newClientId();
      const joinToken = (await store.meta('join_token')) ?? config.joinToken;
      let enrolled = false;
      if (joinToken !== '' && safeEqual(body.joinToken, joinToken)) {
        await store.addClient(clientId, body.profile);
        enrolled = true;
      } else if (body.joinToken.startsWith('ek-')) {
        enrolled = await store.enrollWithKey(sha256Hex(Buffer.from(body.joinToken)), clientId, body.profile);
      }
      if (!enrolled) {
        throw new HttpError(403, 'bad_join_token', 'the join token (or one-time enrollment key) is not valid here');
      }
      metrics.enrolled.inc();
      request.log.info({ clientId, tier: body.profile.tier }, 'client enrolled');
      const response: EnrollResponse = {
        clientId,
        credential: await credentials.issue(clientId),
        protocolVersion: PROTOCOL_VERSION,
      };
      return response;
    },
  );

  app.post(
    '/v1/jobs',
    {
      schema: {
        tags: ['jobs'],
        summary: 'Create a job',
        security: admin,
        body: JobSpec,
        response: { 201: JobSummary, ...errors },
      },
      onRequest: requireAdmin,
      bodyLimit: 64 * 1024,
    },
    async (request, reply) => {
      const spec = request.body as JobSpec;
      const id = `job-${randomBytes(6).toString('hex')}`;
      try {
        const job = await coordinator.createJob(id, spec);
        void reply.code(201);
        return jobSummary(store, job);
      } catch (error) {
        if (error instanceof FloeError || error instanceof RangeError) {
          throw new HttpError(400, error instanceof FloeError ? error.code : 'invalid_job', error.message);
        }
        throw error;
      }
    },
  );

  app.get(
    '/v1/jobs',
    {
      schema: { tags: ['jobs'], summary: 'List jobs', security: admin, response: { 200: Type.Array(JobSummary) } },
      onRequest: requireAdmin,
    },
    async () => Promise.all((await store.jobs()).map((job) => jobSummary(store, job))),
  );

  app.get(
    '/v1/jobs/open',
    {
      schema: {
        tags: ['jobs'],
        summary: 'Running jobs and what they train, for enrolled devices planning their rank',
        security: [...admin, { clientCredential: [] }],
        response: { 200: Type.Array(OpenJob) },
      },
      onRequest: requireAdminOrClient,
    },
    async () =>
      (await store.jobs())
        .filter((job) => job.status === 'running')
        .map((job) => ({ id: job.id, spec: job.spec, currentRound: job.currentRound })),
  );

  app.get(
    '/v1/jobs/:id',
    {
      schema: {
        tags: ['jobs'],
        summary: 'A job with its round history',
        security: admin,
        params: JobParams,
        response: { 200: JobSummary, ...errors },
      },
      onRequest: requireAdmin,
    },
    async (request) => jobSummary(store, await jobOr404((request.params as { id: string }).id)),
  );

  app.post(
    '/v1/jobs/:id/stop',
    {
      schema: {
        tags: ['jobs'],
        summary: 'Stop a job (its open round fails)',
        security: admin,
        params: JobParams,
        response: { 200: JobSummary, ...errors },
      },
      onRequest: requireAdmin,
    },
    async (request) => {
      const job = await jobOr404((request.params as { id: string }).id);
      return jobSummary(store, await coordinator.stopJob(job.id));
    },
  );

  app.get(
    '/v1/jobs/:id/rounds',
    {
      schema: {
        tags: ['jobs'],
        summary: 'Round history with metrics',
        security: admin,
        params: JobParams,
        response: { 200: Type.Array(RoundRecordSchema), ...errors },
      },
      onRequest: requireAdmin,
    },
    async (request) =>
      (await store.rounds((await jobOr404((request.params as { id: string }).id)).id)).map(roundRecord),
  );

  app.get(
    '/v1/jobs/:id/rounds/:round/updates',
    {
      schema: {
        tags: ['jobs'],
        summary:
          'The accepted updates of a round: client, samples, rank, SHA-256 of the stored frame (checked on read)',
        security: admin,
        params: RoundParams,
        response: { 200: Type.Array(UpdateInfo), ...errors },
      },
      onRequest: requireAdmin,
    },
    async (request) => {
      const { id, round } = request.params as { id: string; round: number };
      return (await store.updates((await jobOr404(id)).id, round)).map((u) => ({
        clientId: u.clientId,
        numSamples: u.numSamples,
        rank: u.rank,
        sha256: u.sha256,
        receivedAt: u.receivedAt,
        metrics: u.metrics,
      }));
    },
  );

  app.get(
    '/v1/jobs/:id/clusters',
    {
      schema: {
        tags: ['jobs'],
        summary: 'Clusters of a job: their adapter (round, rank, checksum) and members',
        security: admin,
        params: JobParams,
        response: { 200: Type.Array(ClusterInfo), ...errors },
      },
      onRequest: requireAdmin,
    },
    async (request) => {
      const job = await jobOr404((request.params as { id: string }).id);
      return (await store.adapters(job.id)).map((a) => ({
        clusterId: a.clusterId,
        round: a.round,
        rank: a.rank,
        sha256: a.sha256,
        clients: Object.entries(job.state.clusterOf)
          .filter(([, c]) => c === a.clusterId)
          .map(([id]) => id)
          .sort(),
      }));
    },
  );

  const adapterOf = async (request: FastifyRequest) => {
    const { id, cluster } = request.params as { id: string; cluster: number };
    const job = await jobOr404(id);
    const stored = await store.adapter(job.id, cluster);
    if (!stored)
      throw new HttpError(404, 'no_adapter', `job ${job.id} has no aggregated adapter for cluster ${cluster}`);
    const full = adapterFromTensors([...parseSafetensors(stored.safetensors).tensors.values()], job.spec.alpha);
    const { rank, layers } = request.query as { rank?: number; layers?: string };
    if (rank === undefined && layers === undefined) return { job, stored, adapter: full };
    if (
      (rank ?? job.spec.maxRank) > job.spec.maxRank ||
      (job.spec.strategy === 'fedavg' && rank !== undefined && rank !== job.spec.maxRank)
    )
      throw new HttpError(
        400,
        'wrong_rank',
        `job ${job.id} hands out ranks up to ${job.spec.maxRank} (fedavg: exactly)`,
      );
    const adapter = startAdapter(job.spec, full, {
      clientId: '',
      clusterId: cluster,
      rank: rank ?? job.spec.maxRank,
      ...(layers === undefined ? {} : { layers: layers.split(',').map(Number) }),
    }) as typeof full;
    return { job, stored, adapter, resized: true };
  };

  app.get(
    '/v1/jobs/:id/clusters/:cluster/adapter_config.json',
    {
      schema: {
        tags: ['adapters'],
        summary: "PEFT adapter_config.json of a cluster adapter (admins and the job's participants)",
        security: [...admin, { clientCredential: [] }],
        params: ClusterParams,
        querystring: AdapterQuery,
      },
      onRequest: requireJobParticipant,
    },
    async (request) => {
      const { job, adapter } = await adapterOf(request);
      return peftAdapterConfig(adapter, job.spec.baseModel.id);
    },
  );

  app.get(
    '/v1/jobs/:id/clusters/:cluster/adapter_model.safetensors',
    {
      schema: {
        tags: ['adapters'],
        summary:
          "PEFT adapter_model.safetensors of a cluster adapter (admins and the job's participants; ETag: the stored adapter's SHA-256, or for a resized one the SHA-256 of that hash, rank and layers; If-None-Match answered by 304)",
        security: [...admin, { clientCredential: [] }],
        params: ClusterParams,
        querystring: AdapterQuery,
      },
      onRequest: requireJobParticipant,
    },
    async (request, reply: FastifyReply) => {
      // the ETag comes from the stored adapter's hash (and the resize asked for), so a matching
      // If-None-Match is answered before the adapter is read, checked or resized
      const { id, cluster } = request.params as { id: string; cluster: number };
      const { rank, layers } = request.query as { rank?: number; layers?: string };
      const listed = (await store.adapters((await jobOr404(id)).id)).find((a) => a.clusterId === cluster);
      if (listed) {
        const etag = adapterEtag(listed.sha256, rank, layers);
        void reply.header('etag', etag).header('cache-control', 'private, no-cache');
        if (matchesEtag(request.headers['if-none-match'], etag)) {
          return reply.header('x-floe-round', String(listed.round)).code(304).send();
        }
      }
      const { stored, adapter, resized } = await adapterOf(request);
      const bytes = resized ? serializeSafetensors(adapterToTensors(adapter), 'F32') : stored.safetensors;
      void reply
        .header('content-type', 'application/octet-stream')
        .header('x-floe-round', String(stored.round))
        .header('etag', adapterEtag(stored.sha256, rank, layers))
        .header('cache-control', 'private, no-cache');
      return reply.send(Buffer.from(bytes));
    },
  );

  app.get(
    '/v1/me',
    {
      schema: {
        tags: ['clients'],
        summary: 'The client a credential names; a device refused at the socket.io handshake learns why here',
        security: [{ clientCredential: [] }],
        response: { 200: Type.Object({ clientId: Id, connected: Type.Boolean() }), ...errors },
      },
    },
    async (request) => {
      const { clientId } = await activeClient(request);
      return { clientId, connected: await gateway.isConnected(clientId) };
    },
  );

  app.post(
    '/v1/credentials/refresh',
    {
      schema: {
        tags: ['clients'],
        summary: 'A fresh credential for a client whose current one is still valid (short-lived credentials)',
        security: [{ clientCredential: [] }],
        response: {
          200: Type.Object({ clientId: Id, credential: Type.String(), expiresAt: Type.String() }),
          ...errors,
        },
      },
    },
    async (request) => {
      const { clientId } = await activeClient(request);
      const credential = await credentials.issue(clientId);
      const { expiresAt } = await credentials.inspect(credential);
      return { clientId, credential, expiresAt: new Date(expiresAt).toISOString() };
    },
  );

  app.post(
    '/v1/clients/:id/revoke',
    {
      schema: {
        tags: ['clients'],
        summary: 'Revoke a client: its connection closes and its credential is refused from now on',
        security: admin,
        params: JobParams,
        response: { 200: Type.Object({ id: Id, revokedAt: Type.String() }), ...errors },
      },
      onRequest: requireAdmin,
    },
    async (request) => {
      const { id } = request.params as { id: string };
      const revokedAt = await store.revokeClient(id);
      if (!revokedAt) throw new HttpError(404, 'unknown_client', `no client ${id}`);
      gateway.disconnectClient(id, 'revoked', 'this client was revoked by the operator');
      request.log.info({ clientId: id }, 'client revoked');
      return { id, revokedAt };
    },
  );

  app.post(
    '/v1/join-token',
    {
      schema: {
        tags: ['clients'],
        summary:
          'Rotate the join token (the previous one stops working at once): body {} for a random one, or {joinToken}',
        security: admin,
        body: Type.Object(
          { joinToken: Type.Optional(Type.String({ minLength: 16, maxLength: 256 })) },
          { additionalProperties: false },
        ),
        response: { 200: Type.Object({ joinToken: Type.String() }), ...errors },
      },
      onRequest: requireAdmin,
    },
    async (request) => {
      const joinToken =
        (request.body as { joinToken?: string } | undefined)?.joinToken ?? randomBytes(24).toString('hex');
      await store.setMeta('join_token', joinToken);
      request.log.info('join token rotated');
      return { joinToken };
    },
  );

  app.post(
    '/v1/enrollment-keys',
    {
      schema: {
        tags: ['clients'],
        summary: 'One-time enrollment keys: each enrolls one device, once, before it expires',
        security: admin,
        body: Type.Object(
          {
            count: Type.Integer({ minimum: 1, maximum: 1000 }),
            ttlSec: Type.Optional(Type.Integer({ minimum: 1, maximum: 365 * 24 * 3600 })),
          },
          { additionalProperties: false },
        ),
        response: { 200: Type.Object({ keys: Type.Array(Type.String()), expiresAt: Type.String() }), ...errors },
      },
      onRequest: requireAdmin,
    },
    async (request) => {
      const { count, ttlSec = 7 * 24 * 3600 } = request.body as { count: number; ttlSec?: number };
      const expiresAt = Date.now() + ttlSec * 1000;
      const keys = Array.from({ length: count }, () => `ek-${randomBytes(24).toString('hex')}`);
      await store.addEnrollmentKeys(
        keys.map((key) => sha256Hex(Buffer.from(key))),
        expiresAt,
      );
      return { keys, expiresAt: new Date(expiresAt).toISOString() };
    },
  );

  app.get(
    '/v1/clients',
    {
      schema: {
        tags: ['clients'],
        summary: 'Enrolled clients',
        security: admin,
        response: { 200: Type.Array(ClientInfo) },
      },
      onRequest: requireAdmin,
    },
    async () => {
      const connected = await gateway.connectedClients();
      return (await store.clients()).map((c) => ({ ...c, connected: connected.has(c.id) }));
    },
  );
}
