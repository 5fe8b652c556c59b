/**
 * `floe-edge serve`: the device's models behind an OpenAI-compatible endpoint on a local port, so an app
 * points at the edge as it would at a cloud. `/v1/models` lists the base model and each personalized
 * adapter; `/v1/completions` and `/v1/chat/completions` answer as one JSON body or as server-sent
 * events. Extra body fields choose per request how the answer is made: `fusion` (edge, a fusion mode,
 * or cloud), `privacy` (block, redact, allow) and `deadline_ms`; the defaults come from the device's
 * config. Answers are made one at a time (one model engine on a small device); a bounded queue answers
 * 429 with Retry-After when full. Each answer carries a `floe` field saying who made it.
 */
import { randomBytes, timingSafeEqual } from 'node:crypto';
import type { AddressInfo } from 'node:net';
import { TypeBoxValidatorCompiler } from '@fastify/type-provider-typebox';
import Fastify, { type FastifyError, type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import Type, { type Static } from 'typebox';
import { CHAT_STOPS, ChatRequest, type EventStream, SamplingFields, chatPrompt, openEventStream } from '@floe/shared';
import { PRIVACY_POLICIES, type PrivacyPolicy } from '../privacy/guard.js';
import { UnknownModelError } from './edge-models.js';
import { GENERATION_MODES, type GenerationMode, type TextGenerator, type TextOutcome } from './text-generation.js';

export interface EdgeServerOptions {
  host: string;
  port: number;
  /** Bearer keys an app must present; none: no authentication (the default binds to loopback). */
  apiKeys: readonly string[];
  defaults: { mode: GenerationMode; policy: PrivacyPolicy; deadlineMs: number };
  /** Requests waiting for the model before 429 (default 16). */
  maxWaiting?: number;
  /** Longest an answer may take (ms, default 120000). */
  requestTimeoutMs?: number;
  logLevel?: string;
}

export interface EdgeServer {
  app: FastifyInstance;
  url: string;
  close(): Promise<void>;
}

const Extras = {
  fusion: Type.Optional(Type.Union(GENERATION_MODES.map((m) => Type.Literal(m)))),
  privacy: Type.Optional(Type.Union(PRIVACY_POLICIES.map((p) => Type.Literal(p)))),
  deadline_ms: Type.Optional(Type.Integer({ minimum: 1, maximum: 60_000 })),
};

const EdgeCompletionRequest = Type.Object(
  {
    ...SamplingFields,
    ...Extras,
    prompt: Type.Union([
      Type.String({ maxLength: 65536 }),
      Type.Array(Type.String({ maxLength: 65536 }), { minItems: 1, maxItems: 16 }),
    ]),
    logprobs: Type.Optional(Type.Null()),
    echo: Type.Optional(Type.Union([Type.Literal(false), Type.Null()])),
  },
  { additionalProperties: false },
);
type EdgeCompletionRequest = Static<typeof EdgeCompletionRequest>;

const EdgeChatRequest = Type.Object(
  {
    ...SamplingFields,
    ...Extras,
    messages: ChatRequest.properties.messages,
    max_completion_tokens: ChatRequest.properties.max_completion_tokens,
    logprobs: Type.Optional(Type.Union([Type.Literal(false), Type.Null()])),
  },
  { additionalProperties: false },
);
type EdgeChatRequest = Static<typeof EdgeChatRequest>;

class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly code: string | null = null,
    readonly param: string | null = null,
    readonly type = status === 429 ? 'rate_limit_exceeded' : status >= 500 ? 'server_error' : 'invalid_request_error',
  ) {
    super(message);
  }
}

const STRICTNESS: Record<PrivacyPolicy, number> = { allow: 0, redact: 1, block: 2 };

/** A request may tighten the device's privacy policy, never loosen it: the device decides what leaves it. */
function stricter(asked: PrivacyPolicy | undefined, device: PrivacyPolicy): PrivacyPolicy {
  return asked !== undefined && STRICTNESS[asked] > STRICTNESS[device] ? asked : device;
}

const LOOPBACK_NAMES = new Set(['localhost', '127.0.0.1', '[::1]', '::1']);

function errorBody(message: string, type: string, code: string | null = null, param: string | null = null) {
  return { error: { message, type, param, code } };
}

function keyMatches(given: string, keys: readonly string[]): boolean {
  const a = Buffer.from(given);
  return keys.some((key) => {
    const b = Buffer.from(key);
    return a.length === b.length && timingSafeEqual(a, b);
  });
}

/** One answer at a time, the rest waiting in order; a full queue refuses. */
class Turns {
  private busy = false;
  private readonly waiting: (() => void)[] = [];

  constructor(private readonly maxWaiting: number) {}

  /** Throws the 429 when the queue is full (before a stream sends its 200). */
  admit(): void {
    if (this.busy && this.waiting.length >= this.maxWaiting) {
      throw new ApiError(429, 'The device is busy; retry after the time in Retry-After.', 'rate_limit_exceeded');
    }
  }

  async take(): Promise<() => void> {
    this.admit();
    if (this.busy) await new Promise<void>((resolve) => this.waiting.push(resolve));
    this.busy = true;
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const next = this.waiting.shift();
      if (next) next();
      else this.busy = false;
    };
  }
}

interface Plan {
  model: string;
  prompts: string[];
  n: number;
  maxTokens: number;
  temperature: number;
  topP: number;
  stop: string[];
  seed: number;
  mode: GenerationMode;
  policy: PrivacyPolicy;
  deadlineMs: number;
  stream: boolean;
  includeUsage: boolean;
}

export async function startEdgeServer(generator: TextGenerator, options: EdgeServerOptions): Promise<EdgeServer> {
  const { models } = generator;
  const contextLength = models.checkpoint.config.max_position_embeddings;
  const turns = new Turns(options.maxWaiting ?? 16);
  const requestTimeoutMs = options.requestTimeoutMs ?? 120_000;
  const app = Fastify({
    logger: { level: options.logLevel ?? 'warn' },
    bodyLimit: 1024 * 1024,
    forceCloseConnections: true,
  });
  app.setValidatorCompiler(TypeBoxValidatorCompiler);
  app.setErrorHandler((error: FastifyError | ApiError, request, reply) => {
    if (error instanceof ApiError) {
      if (error.status === 429) void reply.header('retry-after', '1');
      return reply.code(error.status).send(errorBody(error.message, error.type, error.code, error.param));
    }
    if (error instanceof UnknownModelError) {
      return reply.code(404).send(errorBody(error.message, 'invalid_request_error', 'model_not_found', 'model'));
    }
    if (error.validation) {
      return reply
        .code(400)
        .send(errorBody(`invalid request: ${error.message.slice(0, 1024)}`, 'invalid_request_error'));
    }
    const status = error.statusCode ?? 500;
    if (status < 500) return reply.code(status).send(errorBody(error.message, 'invalid_request_error'));
    request.log.error({ err: error }, 'request failed');
    return reply.code(500).send(errorBody('internal server error', 'server_error'));
  });
  // without keys, only this machine's own names: a web page that rebinds its DNS name to 127.0.0.1
  // reaches the port but sends its own name in Host
  const openOnLoopback = options.apiKeys.length === 0;
  app.addHook('onRequest', (request, _reply, done) => {
    if (openOnLoopback) {
      const host = (request.headers.host ?? '').replace(/:\d+$/, '').toLowerCase();
      if (!LOOPBACK_NAMES.has(host) && host !== options.host.toLowerCase()) {
        return done(
          new ApiError(403, `Host ${host || '(none)'} is not this device; set --api-keys to serve other names.`),
        );
      }
    }
    if (!request.url.startsWith('/v1/') || options.apiKeys.length === 0) return done();
    const header = request.headers.authorization ?? '';
    if (!keyMatches(header.startsWith('Bearer ') ? header.slice(7) : '', options.apiKeys)) {
      return done(new ApiError(401, 'Incorrect API key provided.', 'invalid_api_key'));
    }
    done();
  });

  const card = (m: { id: string; parent: string; adapterDir?: string }) => ({
    id: m.id,
    object: 'model',
    created: 0,
    owned_by: 'floe-edge',
    parent: m.id === m.parent ? null : m.parent,
    root: m.adapterDir ?? m.id,
  });
  app.get('/healthz', () => ({
    status: 'ok',
    models: models.list().map((m) => m.id),
    cloud: generator.cloud?.model ?? null,
  }));
  app.get('/v1/models', () => ({ object: 'list', data: models.list().map(card) }));
  app.get<{ Params: { id: string } }>('/v1/models/:id', (request) => {
    const model = models.list().find((m) => m.id === request.params.id);
    if (!model) throw new UnknownModelError(request.params.id);
    return card(model);
  });

  function plan(
    body: EdgeCompletionRequest | EdgeChatRequest,
    prompts: string[],
    maxTokens: number | null | undefined,
    chat: boolean,
  ): Plan {
    if (!models.has(body.model)) throw new UnknownModelError(body.model);
    const longest = Math.max(...prompts.map((p) => Buffer.byteLength(p) + 1));
    // completions default to 16 tokens, as OpenAI's; chat runs to the end of the context
    const tokens = maxTokens ?? (chat ? Math.max(1, contextLength - longest) : 16);
    if (longest + tokens > contextLength) {
      throw new ApiError(
        400,
        `This model's maximum context length is ${contextLength} tokens (bytes), however you requested ${longest + tokens} tokens (${longest} in your prompt; ${tokens} for the completion).`,
        'context_length_exceeded',
        'max_tokens',
      );
    }
    if (tokens === 0)
      throw new ApiError(400, 'max_tokens must be at least 1 here (no echo scoring)', null, 'max_tokens');
    const stop = body.stop == null ? [] : typeof body.stop === 'string' ? [body.stop] : body.stop;
    return {
      model: body.model,
      prompts,
      n: body.n ?? 1,
      maxTokens: tokens,
      temperature: body.temperature ?? 1,
      topP: body.top_p ?? 1,
      stop: chat ? [...CHAT_STOPS, ...stop] : stop,
      seed: body.seed ?? randomBytes(4).readUInt32LE(),
      mode: body.fusion ?? options.defaults.mode,
      policy: stricter(body.privacy, options.defaults.policy),
      deadlineMs: body.deadline_ms ?? options.defaults.deadlineMs,
      stream: body.stream ?? false,
      includeUsage: body.stream_options?.include_usage ?? false,
    };
  }

  /**
   * Runs every choice of a plan in turn, calling `onPiece` with each piece of text; stops when the
   * client leaves or the request runs out of time.
   */
  async function run(
    plan: Plan,
    reply: FastifyReply,
    onPiece: (index: number, piece: string) => void,
  ): Promise<{ outcomes: TextOutcome[]; promptTokens: number }> {
    // listening before the queue: a client that leaves while waiting is not answered
    const controller = new AbortController();
    const leave = () => controller.abort();
    reply.raw.on('close', leave);
    let release: (() => void) | undefined;
    let timer: NodeJS.Timeout | undefined;
    try {
      release = await turns.take();
      timer = setTimeout(() => controller.abort(), requestTimeoutMs);
      const outcomes: TextOutcome[] = [];
      for (const [p, prompt] of plan.prompts.entries()) {
        for (let j = 0; j < plan.n; j++) {
          if (controller.signal.aborted) break;
          const index = p * plan.n + j;
          const pieces = generator.generate({
            model: plan.model,
            prompt,
            maxTokens: plan.maxTokens,
            temperature: plan.temperature,
            topP: plan.topP,
            stop: plan.stop,
            seed: plan.seed + index,
            mode: plan.mode,
            policy: plan.policy,
            deadlineMs: plan.deadlineMs,
            signal: controller.signal,
          });
          for (;;) {
            const next = await pieces.next();
            if (next.done) {
              outcomes.push(next.value);
              break;
            }
            onPiece(index, next.value);
          }
        }
      }
      const promptTokens = plan.prompts.reduce((s, p) => s + Buffer.byteLength(p) + 1, 0) * plan.n;
      return { outcomes, promptTokens };
    } finally {
      clearTimeout(timer);
      reply.raw.off('close', leave);
      release?.();
    }
  }

  /**
   * An answer as server-sent events: refused with 429 before the 200 when the queue is full; an error
   * once the stream has begun goes out as an error chunk.
   */
  async function streamed(
    request: FastifyRequest,
    reply: FastifyReply,
    write: (sse: EventStream) => Promise<void>,
  ): Promise<FastifyReply> {
    turns.admit();
    reply.hijack();
    const sse = openEventStream(reply.raw);
    try {
      await write(sse);
    } catch (error) {
      request.log.error({ err: error }, 'generation failed');
      sse.fail(error instanceof Error ? error.message : 'the model failed while generating');
    }
    sse.end();
    return reply;
  }

  const usage = (promptTokens: number, outcomes: TextOutcome[]) => {
    const completion = outcomes.reduce((s, o) => s + o.bytes, 0);
    return { prompt_tokens: promptTokens, completion_tokens: completion, total_tokens: promptTokens + completion };
  };
  const floe = (plan: Plan, outcome: TextOutcome | undefined) => ({
    mode: plan.mode,
    privacy: plan.policy,
    answered_by: outcome?.answeredBy ?? null,
    blocked_calls: outcome?.blockedCalls ?? 0,
    ...(outcome?.fused ? { fused_bytes: outcome.fused.fused, fell_back_bytes: outcome.fused.fellBack } : {}),
  });

  app.post('/v1/completions', { schema: { body: EdgeCompletionRequest } }, async (request, reply) => {
    const body = request.body as EdgeCompletionRequest;
    const job = plan(body, typeof body.prompt === 'string' ? [body.prompt] : body.prompt, body.max_tokens, false);
    const id = `cmpl-${randomBytes(12).toString('hex')}`;
    const created = Math.floor(Date.now() / 1000);
    const head = { id, object: 'text_completion', created, model: job.model };
    if (job.stream) {
      return streamed(request, reply, async (sse) => {
        const { outcomes, promptTokens } = await run(job, reply, (index, text) =>
          sse.send({ ...head, choices: [{ index, text, logprobs: null, finish_reason: null }] }),
        );
        outcomes.forEach((o, index) =>
          sse.send({
            ...head,
            choices: [{ index, text: '', logprobs: null, finish_reason: o.finish }],
            floe: floe(job, o),
          }),
        );
        if (job.includeUsage) sse.send({ ...head, choices: [], usage: usage(promptTokens, outcomes) });
      });
    }
    const texts: string[] = [];
    const { outcomes, promptTokens } = await run(
      job,
      reply,
      (index, text) => (texts[index] = (texts[index] ?? '') + text),
    );
    return {
      ...head,
      choices: outcomes.map((o, index) => ({
        index,
        text: texts[index] ?? '',
        logprobs: null,
        finish_reason: o.finish,
      })),
      usage: usage(promptTokens, outcomes),
      floe: floe(job, outcomes[0]),
    };
  });

  app.post('/v1/chat/completions', { schema: { body: EdgeChatRequest } }, async (request, reply) => {
    const body = request.body as EdgeChatRequest;
    const job = plan(body, [chatPrompt(body.messages)], body.max_completion_tokens ?? body.max_tokens, true);
    const id = `chatcmpl-${randomBytes(12).toString('hex')}`;
    const created = Math.floor(Date.now() / 1000);
    const head = { id, object: 'chat.completion.chunk', created, model: job.model };
    // the space after `Assistant:` belongs to the template, not the answer
    const begun = new Set<number>();
    const trimFirst = (index: number, text: string) => {
      if (begun.has(index) || text === '') return text;
      begun.add(index);
      return text.replace(/^ /, '');
    };
    if (job.stream) {
      return streamed(request, reply, async (sse) => {
        const chunk = (index: number, delta: object, finish: string | null, extra: object = {}) =>
          sse.send({ ...head, choices: [{ index, delta, logprobs: null, finish_reason: finish }], ...extra });
        for (let index = 0; index < job.n; index++) chunk(index, { role: 'assistant', content: '' }, null);
        const { outcomes, promptTokens } = await run(job, reply, (index, text) => {
          const content = trimFirst(index, text);
          if (content) chunk(index, { content }, null);
        });
        outcomes.forEach((o, index) => chunk(index, {}, o.finish, { floe: floe(job, o) }));
        if (job.includeUsage) sse.send({ ...head, choices: [], usage: usage(promptTokens, outcomes) });
      });
    }
    const texts: string[] = [];
    const { outcomes, promptTokens } = await run(job, reply, (index, text) => {
      texts[index] = (texts[index] ?? '') + trimFirst(index, text);
    });
    return {
      ...head,
      object: 'chat.completion',
      choices: outcomes.map((o, index) => ({
        index,
        message: { role: 'assistant', content: texts[index] ?? '' },
        logprobs: null,
        finish_reason: o.finish,
      })),
      usage: usage(promptTokens, outcomes),
      floe: floe(job, outcomes[0]),
    };
  });

  await app.listen({ host: options.host, port: options.port });
  const address = app.server.address() as AddressInfo;
  const host = address.family === 'IPv6' ? `[${address.address}]` : address.address;
  return {
    app,
    url: `http://${host}:${address.port}`,
    async close() {
      await app.close();
    },
  };
}
