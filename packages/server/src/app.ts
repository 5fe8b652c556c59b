/**
 * Composition root: one fastify instance (REST, /metrics, /docs, dashboard) and one socket.io server
 * on the same HTTP port, over a store (SQLite or PostgreSQL); replicas add a Redis, through which
 * socket.io reaches every replica's connections and the rate limits are shared.
 */
import { randomBytes } from 'node:crypto';
import type { AddressInfo } from 'node:net';
import Fastify, { type FastifyError, type FastifyInstance } from 'fastify';
import rateLimit from '@fastify/rate-limit';
import swagger from '@fastify/swagger';
import swaggerUi from '@fastify/swagger-ui';
import { TypeBoxValidatorCompiler, registerAjvFormats } from '@fastify/type-provider-typebox';
import { Server as SocketServer } from 'socket.io';
import { createAdapter } from '@socket.io/redis-adapter';
import { Redis } from 'ioredis';
import { RateLimiterMemory, RateLimiterRedis } from 'rate-limiter-flexible';
import { FloeError, PROTOCOL_VERSION, asyncApiDocument } from '@floe/shared';
import { Credentials } from './auth.js';
import { DEFAULT_CONFIG, type ServerConfig } from './config.js';
import { insuredRedisStore } from './http/rate-limit-store.js';
import { registerApi, HttpError } from './http/api.js';
import { registerDashboard } from './http/dashboard.js';
import { ServerMetrics } from './metrics.js';
import { AggregationPool } from './aggregation/pool.js';
import { Coordinator } from './rounds/coordinator.js';
import { openStore } from './store/open-store.js';
import type { Store } from './store/store.js';
import { BOUNDED_PARSER, Gateway, authenticateHandshake } from './transport/gateway.js';

export interface FloeServer {
  app: FastifyInstance;
  store: Store;
  coordinator: Coordinator;
  gateway: Gateway;
  config: ServerConfig;
  /** http://host:port once listening. */
  url: string;
  close(): Promise<void>;
}

export interface StartOptions {
  /** Where the log lines (pino JSON, one per write) go instead of stdout. */
  logStream?: { write(line: string): void };
  /** The server stopped itself (another one took its database's lease): the process should exit non-zero. */
  onFatal?: (reason: string) => void;
}

/** A setting the server cannot start with (never sent to a client: main.ts prints it and exits). */
export class StartupError extends FloeError {}

/** Connects to the replicas' Redis, or fails with one line (password masked). */
async function connectRedis(url: string): Promise<Redis> {
  // commandTimeout: a Redis that stops answering without closing the connection fails commands in 2 s
  // (the limiters then count in memory) rather than after the kernel's retransmissions (minutes)
  const redis = new Redis(url, {
    lazyConnect: true,
    maxRetriesPerRequest: 3,
    connectTimeout: 10_000,
    commandTimeout: 2000,
  });
  redis.on('error', () => undefined); // ioredis reconnects by itself; commands in flight fail with the error
  try {
    await redis.connect();
    await redis.ping();
    return redis;
  } catch (error) {
    redis.disconnect();
    const shown = url.replace(/\/\/([^@/]*)@/, '//***@');
    const reason = error instanceof Error ? error.message : String(error);
    throw new StartupError('redis_unavailable', `cannot reach the Redis ${shown}: ${reason}`);
  }
}

/**
 * `client` whose publishes never reject unheard: the socket.io Redis adapter publishes without awaiting,
 * so while Redis is unreachable each lost message would be an unhandled rejection, which ends Node.
 * The callers that need an answer (requests to the other replicas) time out on their own.
 */
function settledPublisher(client: Redis, onLost: (error: unknown) => void): Redis {
  client.on('error', () => undefined);
  const publish = client.publish.bind(client) as (...args: unknown[]) => Promise<number>;
  client.publish = (...args: unknown[]) => {
    const sent = publish(...args);
    sent.catch(onLost);
    return sent;
  };
  return client;
}

registerAjvFormats();

export async function startServer(
  overrides: Partial<ServerConfig> = {},
  options: StartOptions = {},
): Promise<FloeServer> {
  const config: ServerConfig = { ...DEFAULT_CONFIG, ...overrides };
  const metrics = new ServerMetrics();

  const timeoutMs = config.requestTimeoutMs;
  if ((config.tlsCert === '') !== (config.tlsKey === '')) {
    throw new Error('TLS needs both a certificate and a key (FLOE_TLS_CERT and FLOE_TLS_KEY, or their _FILE forms)');
  }
  const serverOptions = {
    requestTimeout: timeoutMs,
    headersTimeout: timeoutMs > 0 ? Math.min(timeoutMs, 60_000) : 60_000,
    // node looks for expired requests this often (30 s by default, which would dwarf a 10 s timeout)
    connectionsCheckingInterval: timeoutMs > 0 ? Math.min(1000, Math.max(100, Math.floor(timeoutMs / 4))) : 30_000,
  };
  const common = {
    logger: { level: config.logLevel, ...(options.logStream ? { stream: options.logStream } : {}) },
    bodyLimit: 1024 * 1024,
    trustProxy: config.trustProxy,
    // a request whose headers and body are not all in by then gets 408 and its connection closed
    requestTimeout: timeoutMs,
  };
  const tls = config.tlsCert !== '';
  // with a certificate, HTTPS and WSS only (the same routes; socket.io attaches to the TLS server)
  const app = (
    tls
      ? Fastify({ ...common, https: { cert: config.tlsCert, key: config.tlsKey, ...serverOptions } })
      : Fastify({ ...common, http: serverOptions })
  ) as FastifyInstance;
  app.setValidatorCompiler(TypeBoxValidatorCompiler);
  // response schemas document the API; JSON.stringify writes it (TypeBox refinements are not JSON Schema)
  app.setSerializerCompiler(() => (data) => JSON.stringify(data));
  app.setErrorHandler((error: FastifyError, request, reply) => {
    if (error instanceof HttpError) return reply.code(error.status).send({ code: error.code, message: error.message });
    if (error.validation) {
      return reply.code(400).send({ code: 'invalid_request', message: error.message.slice(0, 2048) });
    }
    const status = error.statusCode ?? 500;
    if (status === 429) return reply.code(429).send({ code: 'rate_limited', message: error.message });
    if (status < 500) {
      const code = (error.code || 'bad_request')
        .toLowerCase()
        .replace(/^fst_/, '')
        .replace(/[^a-z0-9_]/g, '_');
      return reply
        .code(status)
        .send({ code: /^[a-z]/.test(code) ? code.slice(0, 64) : 'bad_request', message: error.message });
    }
    request.log.error({ err: error }, 'request failed');
    return reply.code(500).send({ code: 'internal_error', message: 'internal server error' });
  });

  const redis = config.redisUrl === '' ? undefined : await connectRedis(config.redisUrl);
  // with replicas the HTTP limit is counted in Redis, so that spreading requests over them gains nothing
  await app.register(rateLimit, {
    max: config.httpRateLimitPerMinute,
    timeWindow: 60_000,
    ...(redis ? { store: insuredRedisStore(redis, 'floe-http-') } : {}),
  });
  await app.register(swagger, {
    openapi: {
      info: {
        title: 'Floe-TS coordination server',
        version: String(PROTOCOL_VERSION),
        description:
          'Enrollment, federated fine-tuning jobs, round history and aggregated LoRA adapters. Devices then talk ' +
          'socket.io on the same port (events hello/update from clients; welcome/round_start/update_ack/round_end/error ' +
          'from the server), each event one framed msgpack message: AsyncAPI document at /docs/asyncapi.json.',
      },
      components: {
        securitySchemes: {
          adminToken: { type: 'http', scheme: 'bearer', description: 'the deployment admin token' },
          clientCredential: { type: 'http', scheme: 'bearer', description: 'a credential from /v1/enroll' },
        },
      },
    },
  });
  await app.register(swaggerUi, { routePrefix: '/docs' });
  // the socket.io protocol beside the HTTP one, from the same schemas
  const asyncApi = JSON.stringify(asyncApiDocument(), null, 2);
  app.get('/docs/asyncapi.json', { schema: { hide: true } }, (_request, reply) =>
    reply.type('application/json').send(asyncApi),
  );

  let server: FloeServer | undefined;
  // a replica may be handed the lease before the coordinator exists: it takes over once it does
  const leadership = { taken: false, takeOver: () => undefined as unknown };
  let store: Store;
  try {
    store = await openStore(config, {
      onError: (error) => app.log.error({ err: error }, 'database connection error'),
      onLeaseLost: () => {
        app.log.fatal('another server now coordinates this database: stopping this one');
        void server?.close().then(() => options.onFatal?.('lost the coordinator lease to another server'));
      },
      onLeaseTaken: () => {
        leadership.taken = true;
        leadership.takeOver();
      },
    });
  } catch (error) {
    redis?.disconnect();
    await app.close();
    throw error;
  }
  try {
    server = await serve(app, store, config, metrics, redis, leadership);
    return server;
  } catch (error) {
    await store.close();
    await app.close();
    redis?.disconnect();
    throw error;
  }
}

/** The rest of a server over its store: the credential secret, socket.io, the coordinator, listening. */
async function serve(
  app: FastifyInstance,
  store: Store,
  config: ServerConfig,
  metrics: ServerMetrics,
  redis: Redis | undefined,
  leadership: { taken: boolean; takeOver: () => unknown },
): Promise<FloeServer> {
  // the first secret written to a store is kept (a server that restarts keeps its devices' credentials)
  const secret =
    config.credentialSecret || (await store.initMeta('credential_secret', randomBytes(32).toString('hex')));
  const credentials = new Credentials(secret, config.credentialTtlSec);
  const io = new SocketServer(app.server, {
    allowRequest: authenticateHandshake(credentials, store, metrics, {
      maxConnectionsPerIp: config.maxConnectionsPerIp,
      trustProxy: config.trustProxy,
    }),
    transports: ['websocket'],
    parser: BOUNDED_PARSER,
    // one websocket message carries one frame (socket.io sends a binary attachment as its own message)
    maxHttpBufferSize: config.maxFrameBytes + 1024,
    connectTimeout: config.helloTimeoutMs,
    serveClient: false,
    pingInterval: 10_000,
    pingTimeout: 20_000,
  });
  const subscriber = redis?.duplicate();
  subscriber?.on('error', () => undefined);
  const publisher =
    redis &&
    settledPublisher(redis.duplicate(), (error) =>
      app.log.warn({ err: error }, 'a message to the other replicas was lost (Redis unreachable)'),
    );
  if (publisher && subscriber) {
    io.adapter(createAdapter(publisher, subscriber, { key: 'floe', requestsTimeout: 3000 }));
  }
  const limit = { points: config.rateLimitMessages, duration: config.rateWindowSec };
  const gateway = new Gateway(io, metrics, app.log, {
    maxFrameBytes: config.maxFrameBytes,
    helloTimeoutMs: config.helloTimeoutMs,
    rateLimitMessages: config.rateLimitMessages,
    rateWindowSec: config.rateWindowSec,
    ...(redis && {
      replicated: {
        // counted in Redis, so a device hopping between replicas gets no more; in memory while Redis is down
        messageLimiter: new RateLimiterRedis({
          storeClient: redis,
          keyPrefix: 'floe-messages',
          ...limit,
          rejectIfRedisNotReady: true,
          insuranceLimiter: new RateLimiterMemory(limit),
        }),
      },
    }),
  });
  const aggregation = new AggregationPool(config.aggregationThreads);
  const coordinator = new Coordinator(
    store,
    metrics,
    gateway,
    app.log,
    {
      gatherMs: config.gatherMs,
      restartGraceMs: config.restartGraceMs,
      maxFrameBytes: config.maxFrameBytes,
      replicated: redis !== undefined,
    },
    aggregation,
  );
  gateway.attach(coordinator);

  registerApi(app, { config, store, credentials, coordinator, gateway, metrics });
  registerDashboard(app);

  if (redis) {
    leadership.takeOver = () =>
      void coordinator.takeOver().catch((error: unknown) => app.log.error({ err: error }, 'could not take over'));
    if (leadership.taken) leadership.takeOver();
  } else {
    await coordinator.recover();
  }
  await app.listen({ host: config.host, port: config.port });
  const address = app.server.address() as AddressInfo;
  const host = address.family === 'IPv6' ? `[${address.address}]` : address.address;

  let closing: Promise<void> | undefined;
  return {
    app,
    store,
    coordinator,
    gateway,
    config,
    url: `${config.tlsCert !== '' ? 'https' : 'http'}://${host}:${address.port}`,
    close() {
      closing ??= (async () => {
        await coordinator.close();
        await gateway.close();
        await app.close();
        await aggregation.close();
        await store.close();
        subscriber?.disconnect();
        publisher?.disconnect();
        redis?.disconnect();
      })();
      return closing;
    },
  };
}
