/**
 * The cloud stand-in's composition root: the checkpoint on ONNX Runtime behind a continuous-batching
 * engine, OpenAI-compatible routes, API-key auth, fault injection, /healthz and /metrics.
 */
import { timingSafeEqual } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import type { AddressInfo } from 'node:net';
import Fastify, { type FastifyError, type FastifyInstance } from 'fastify';
import { TypeBoxValidatorCompiler } from '@fastify/type-provider-typebox';
import { OrtLlama, type TextTokenizer, loadCheckpoint } from '@floe/model';
import { CloudError } from './choice.js';
import { BatchEngine } from './engine.js';
import { type FaultOptions, Faults } from './faults.js';
import { CloudMetrics } from './metrics.js';
import { registerOpenAi } from './openai.js';

export interface CloudConfig {
  /** Checkpoint directory (config.json, model.safetensors, tokenizer.json). */
  modelDir: string;
  /** The model id clients name. */
  modelName: string;
  host: string;
  port: number;
  /** Accepted bearer keys; none means no authentication (local use). */
  apiKeys: string[];
  maxBatch: number;
  maxWaiting: number;
  /** ORT intra-op threads. */
  threads: number;
  requestTimeoutMs: number;
  faults: Partial<FaultOptions>;
  logLevel: string;
  /** A JSON-lines file that gets every request's text (prompt or messages, stop strings), as received (for audits and tests). */
  requestLog?: string | undefined;
}

/** What a request asked the stand-in, as received. */
export interface ReceivedRequest {
  at: string;
  route: string;
  prompt?: unknown;
  messages?: unknown;
  stop?: unknown;
}

/** Requests kept in memory (`CloudServer.received`), newest last. */
const RECEIVED_KEPT = 1000;

export const DEFAULT_CLOUD_CONFIG: CloudConfig = {
  modelDir: 'models/cloud',
  modelName: 'floe-cloud',
  host: '127.0.0.1',
  port: 8000,
  apiKeys: [],
  maxBatch: 8,
  maxWaiting: 64,
  threads: 1,
  requestTimeoutMs: 120_000,
  faults: {},
  logLevel: 'warn',
};

export interface CloudServer {
  app: FastifyInstance;
  engine: BatchEngine;
  tokenizer: TextTokenizer;
  faults: Faults;
  metrics: CloudMetrics;
  config: CloudConfig;
  /** The latest requests' prompts and messages, as received, oldest first. */
  received: ReceivedRequest[];
  /** http://host:port once listening. */
  url: string;
  close(): Promise<void>;
}

function keyMatches(given: string, keys: readonly string[]): boolean {
  const a = Buffer.from(given);
  return keys.some((key) => {
    const b = Buffer.from(key);
    return a.length === b.length && timingSafeEqual(a, b);
  });
}

export async function startCloud(overrides: Partial<CloudConfig> = {}): Promise<CloudServer> {
  const config: CloudConfig = { ...DEFAULT_CLOUD_CONFIG, ...overrides };
  const faults = new Faults(config.faults);
  const checkpoint = await loadCheckpoint(config.modelDir);
  const model = await OrtLlama.create(checkpoint.config, checkpoint.weights, { threads: config.threads });
  const metrics = new CloudMetrics();
  const engine = new BatchEngine(model, {
    maxBatch: config.maxBatch,
    maxWaiting: config.maxWaiting,
    onRun: (kind, rows, seconds) => {
      metrics.runs.observe({ kind }, seconds);
      if (kind === 'decode') metrics.batchRows.observe(rows);
    },
    onPrefill: (_, cached) => metrics.prefixCachedTokens.inc(cached),
  });

  // closing cuts open connections (a device's abandoned lookahead call must not hold a shutdown)
  const app = Fastify({ logger: { level: config.logLevel }, bodyLimit: 1024 * 1024, forceCloseConnections: true });
  app.setValidatorCompiler(TypeBoxValidatorCompiler);
  app.setErrorHandler((error: FastifyError | CloudError, request, reply) => {
    const body = (message: string, type: string, code: string | null = null, param: string | null = null) => ({
      error: { message, type, param, code },
    });
    if (error instanceof CloudError) {
      return reply.code(error.status).send(body(error.message, error.type, error.code, error.param));
    }
    if (error.validation) {
      return reply.code(400).send(body(`invalid request: ${error.message.slice(0, 1024)}`, 'invalid_request_error'));
    }
    const status = error.statusCode ?? 500;
    if (status < 500) return reply.code(status).send(body(error.message, 'invalid_request_error'));
    request.log.error({ err: error }, 'request failed');
    return reply.code(500).send(body('internal server error', 'server_error'));
  });

  app.addHook('onRequest', async (request) => {
    if (!request.url.startsWith('/v1/')) return;
    if (config.apiKeys.length > 0) {
      const header = request.headers.authorization ?? '';
      const key = header.startsWith('Bearer ') ? header.slice(7) : '';
      if (!keyMatches(key, config.apiKeys)) {
        throw new CloudError(401, 'invalid_request_error', 'Incorrect API key provided.', 'invalid_api_key');
      }
    }
    const { delayMs, fail } = faults.draw();
    if (delayMs > 0) await new Promise((resolve) => setTimeout(resolve, delayMs));
    if (fail) {
      metrics.injectedFaults.inc();
      const status = faults.current.errorStatus;
      throw new CloudError(
        status,
        status === 429 ? 'rate_limit_exceeded' : 'server_error',
        `injected fault (${status})`,
      );
    }
  });
  const received: ReceivedRequest[] = [];
  const requestLog = config.requestLog ? createWriteStream(config.requestLog, { flags: 'a', mode: 0o600 }) : undefined;
  // once parsed, before validation: whatever body arrived, well-formed or not
  app.addHook('preValidation', (request, _reply, done) => {
    if (request.method !== 'POST' || !request.url.startsWith('/v1/')) return done();
    const body = (request.body ?? {}) as { prompt?: unknown; messages?: unknown; stop?: unknown };
    const entry: ReceivedRequest = {
      at: new Date().toISOString(),
      route: request.routeOptions.url ?? request.url,
      ...(body.prompt !== undefined ? { prompt: body.prompt } : {}),
      ...(body.messages !== undefined ? { messages: body.messages } : {}),
      ...(body.stop !== undefined ? { stop: body.stop } : {}),
    };
    received.push(entry);
    if (received.length > RECEIVED_KEPT) received.splice(0, received.length - RECEIVED_KEPT);
    requestLog?.write(`${JSON.stringify(entry)}\n`);
    done();
  });
  app.addHook('onResponse', async (request, reply) => {
    metrics.requests.inc({ route: request.routeOptions.url ?? 'unknown', status: String(reply.statusCode) });
  });

  app.get('/healthz', () => ({
    status: 'ok',
    model: config.modelName,
    running: engine.runningCount,
    waiting: engine.waitingCount,
  }));
  app.get('/metrics', async (_request, reply) => {
    metrics.running.set(engine.runningCount);
    metrics.waiting.set(engine.waitingCount);
    return reply.type(metrics.registry.contentType).send(await metrics.registry.metrics());
  });
  registerOpenAi(app, {
    engine,
    tokenizer: checkpoint.tokenizer,
    modelName: config.modelName,
    metrics,
    requestTimeoutMs: config.requestTimeoutMs,
    streamStallMs: () => faults.current.streamStallMs,
  });

  await app.listen({ host: config.host, port: config.port });
  const address = app.server.address() as AddressInfo;
  const host = address.family === 'IPv6' ? `[${address.address}]` : address.address;
  return {
    app,
    engine,
    tokenizer: checkpoint.tokenizer,
    faults,
    metrics,
    config,
    received,
    url: `http://${host}:${address.port}`,
    async close() {
      await app.close();
      await new Promise<void>((resolve) => (requestLog ? requestLog.end(resolve) : resolve()));
      await model.release();
    },
  };
}
