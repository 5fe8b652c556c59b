/**
 * OpenAI-compatible routes: /v1/models, /v1/completions (legacy logprobs format: tokens, token_logprobs,
 * top_logprobs, text_offset) and /v1/chat/completions (logprobs.content with bytes), each as one JSON
 * body or as server-sent events ending with `data: [DONE]`.
 */
import { randomBytes } from 'node:crypto';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { TextTokenizer } from '@floe/model';
import { type ChoiceEvent, type ChoiceFinish, CloudError, type ReportedToken, runChoice } from './choice.js';
import { type BatchEngine, QueueFullError, RequestTooLargeError, type Sequence, type SequenceSpec } from './engine.js';
import type { CloudMetrics } from './metrics.js';
import { CHAT_STOPS, ChatRequest, CompletionRequest, chatPrompt, openEventStream } from '@floe/shared';

export interface OpenAiDeps {
  engine: BatchEngine;
  tokenizer: TextTokenizer;
  modelName: string;
  metrics: CloudMetrics;
  /** Longest a request may run before its sequences are cancelled. */
  requestTimeoutMs: number;
  /** Milliseconds a stream stays quiet after its headers (fault injection). */
  streamStallMs: () => number;
}

const DEFAULT_MAX_TOKENS = 16;

interface Job {
  prompts: number[][];
  n: number;
  stop: string[];
  echo: boolean;
  stream: boolean;
  wantLogprobs: boolean;
  spec: Omit<SequenceSpec, 'prompt' | 'seed'> & { seed: number };
}

export function registerOpenAi(app: FastifyInstance, deps: OpenAiDeps): void {
  const { engine, tokenizer, modelName } = deps;
  const contextLength = engine.model.config.max_position_embeddings;

  app.get('/v1/models', () => ({
    object: 'list',
    data: [{ id: modelName, object: 'model', created: 0, owned_by: 'floe-ts' }],
  }));
  app.get<{ Params: { id: string } }>('/v1/models/:id', (request) => {
    if (request.params.id !== modelName) throw modelNotFound(request.params.id);
    return { id: modelName, object: 'model', created: 0, owned_by: 'floe-ts' };
  });

  function encodePrompt(prompt: string | number[]): number[] {
    if (typeof prompt === 'string') return tokenizer.encode(prompt, { bos: true });
    const bad = prompt.find((id) => id >= tokenizer.vocabSize);
    if (bad !== undefined) {
      throw new CloudError(
        400,
        'invalid_request_error',
        `token id ${bad} is outside the vocabulary (${tokenizer.vocabSize})`,
        null,
        'prompt',
      );
    }
    return prompt[0] === tokenizer.bos ? prompt : [tokenizer.bos, ...prompt];
  }

  function plan(
    body: {
      model: string;
      max_tokens?: number | null | undefined;
      temperature?: number | null | undefined;
      top_p?: number | null | undefined;
      n?: number | null | undefined;
      stop?: string | string[] | null | undefined;
      stream?: boolean | null | undefined;
      seed?: number | null | undefined;
    },
    prompts: number[][],
    extra: {
      echo: boolean;
      topLogprobs: number;
      wantLogprobs: boolean;
      maxTokens?: number | null | undefined;
      chat?: boolean;
    },
  ): Job {
    if (body.model !== modelName) throw modelNotFound(body.model);
    const longest = Math.max(...prompts.map((p) => p.length));
    // completions default to 16 tokens, as OpenAI's; chat runs to the end of the context, as OpenAI's
    const fallback = extra.chat ? Math.max(1, contextLength - longest) : DEFAULT_MAX_TOKENS;
    const maxTokens = extra.maxTokens ?? body.max_tokens ?? fallback;
    for (const p of prompts) {
      if (p.length + maxTokens > contextLength) {
        throw new CloudError(
          400,
          'invalid_request_error',
          `This model's maximum context length is ${contextLength} tokens, however you requested ${p.length + maxTokens} tokens (${p.length} in your prompt; ${maxTokens} for the completion). Please reduce your prompt; or completion length.`,
          'context_length_exceeded',
          'max_tokens',
        );
      }
    }
    if (maxTokens === 0 && !extra.echo) {
      throw new CloudError(
        400,
        'invalid_request_error',
        'max_tokens 0 needs echo (scoring the prompt)',
        null,
        'max_tokens',
      );
    }
    const stop = body.stop == null ? [] : typeof body.stop === 'string' ? [body.stop] : body.stop;
    return {
      prompts,
      n: body.n ?? 1,
      stop,
      echo: extra.echo,
      stream: body.stream ?? false,
      wantLogprobs: extra.wantLogprobs,
      spec: {
        maxTokens,
        temperature: body.temperature ?? 1,
        topP: body.top_p ?? 1,
        seed: body.seed ?? randomBytes(4).readUInt32LE(),
        topLogprobs: extra.topLogprobs,
        promptLogprobs: extra.echo && extra.wantLogprobs,
      },
    };
  }

  /** Submits every choice of a job and cancels them when the client leaves or the request times out. */
  function start(job: Job, request: FastifyRequest, reply: FastifyReply): Sequence[] {
    let sequences: Sequence[];
    try {
      sequences = engine.submit(
        job.prompts.flatMap((prompt) =>
          Array.from({ length: job.n }, (_, j) => ({ ...job.spec, prompt, seed: job.spec.seed + j })),
        ),
      );
    } catch (error) {
      if (error instanceof RequestTooLargeError) {
        throw new CloudError(400, 'invalid_request_error', error.message, null, 'n');
      }
      if (error instanceof QueueFullError) {
        void reply.header('retry-after', String(error.retryAfterSeconds));
        throw new CloudError(
          429,
          'rate_limit_exceeded',
          'The server is at capacity; retry after the time in Retry-After.',
          'rate_limit_exceeded',
        );
      }
      throw error;
    }
    deps.metrics.promptTokens.inc(promptTokens(job));
    const cancel = () => sequences.forEach((s) => s.cancel());
    const timer = setTimeout(cancel, deps.requestTimeoutMs);
    reply.raw.on('close', () => {
      clearTimeout(timer);
      cancel();
    });
    request.raw.on('aborted', cancel);
    return sequences;
  }

  /** A finished job's token counts (OpenAI's `usage`); its completion tokens also go to the metrics. */
  function usageOf(job: Job, sequences: readonly Sequence[]) {
    const prompt = promptTokens(job);
    const completion = sequences.reduce((n, s) => n + s.generated, 0);
    deps.metrics.completionTokens.inc(completion);
    return { prompt_tokens: prompt, completion_tokens: completion, total_tokens: prompt + completion };
  }

  app.post('/v1/completions', { schema: { body: CompletionRequest } }, async (request, reply) => {
    const body = request.body as CompletionRequest;
    const raw = body.prompt;
    const prompts = (
      typeof raw === 'string'
        ? [raw]
        : raw.length > 0 && typeof raw[0] === 'number'
          ? [raw as number[]]
          : (raw as (string | number[])[])
    ).map(encodePrompt);
    const k = body.logprobs ?? 0;
    const job = plan(body, prompts, { echo: body.echo ?? false, topLogprobs: k, wantLogprobs: body.logprobs != null });
    const sequences = start(job, request, reply);
    const id = `cmpl-${randomBytes(12).toString('hex')}`;
    const created = Math.floor(Date.now() / 1000);
    const legacy = (tokens: ReportedToken[]) =>
      job.wantLogprobs
        ? {
            tokens: tokens.map((t) => t.text),
            token_logprobs: tokens.map((t) => (Number.isNaN(t.logprob) ? null : t.logprob)),
            top_logprobs: tokens.map((t) =>
              Number.isNaN(t.logprob) ? null : Object.fromEntries(t.top.map((x) => [x.text, x.logprob])),
            ),
            text_offset: tokens.map((t) => t.offset),
          }
        : null;

    if (job.stream) {
      const sse = openStream(reply);
      const stall = deps.streamStallMs();
      if (stall > 0) await new Promise((resolve) => setTimeout(resolve, stall));
      await Promise.all(
        sequences.map(async (sequence, index) => {
          const finish = await forEachEvent(runChoice(sequence, tokenizer, choiceOptions(job, index)), (event) => {
            const tokens = event.type === 'prompt' ? event.tokens : event.token ? [event.token] : [];
            sse.send({
              id,
              object: 'text_completion',
              created,
              model: modelName,
              choices: [{ index, text: event.text, logprobs: legacy(tokens), finish_reason: null }],
            });
          });
          sse.send({
            id,
            object: 'text_completion',
            created,
            model: modelName,
            choices: [{ index, text: '', logprobs: null, finish_reason: finish }],
          });
        }),
      ).catch((error: unknown) => sse.fail(error));
      const usage = usageOf(job, sequences);
      if (body.stream_options?.include_usage) {
        sse.send({
          id,
          object: 'text_completion',
          created,
          model: modelName,
          choices: [],
          usage,
        });
      }
      sse.end();
      return reply;
    }

    const choices = await Promise.all(
      sequences.map(async (sequence, index) => {
        const tokens: ReportedToken[] = [];
        let text = '';
        const finish = await forEachEvent(runChoice(sequence, tokenizer, choiceOptions(job, index)), (event) => {
          text += event.text;
          if (event.type === 'prompt') tokens.push(...event.tokens);
          else if (event.token) tokens.push(event.token);
        });
        return { index, text, logprobs: legacy(tokens), finish_reason: finish };
      }),
    );
    return { id, object: 'text_completion', created, model: modelName, choices, usage: usageOf(job, sequences) };
  });

  app.post('/v1/chat/completions', { schema: { body: ChatRequest } }, async (request, reply) => {
    const body = request.body as ChatRequest;
    const prompt = encodePrompt(chatPrompt(body.messages));
    const wantLogprobs = body.logprobs ?? false;
    if (!wantLogprobs && (body.top_logprobs ?? 0) > 0) {
      throw new CloudError(400, 'invalid_request_error', 'top_logprobs needs logprobs: true', null, 'top_logprobs');
    }
    const job = plan(body, [prompt], {
      echo: false,
      topLogprobs: body.top_logprobs ?? 0,
      wantLogprobs,
      maxTokens: body.max_completion_tokens,
      chat: true,
    });
    const stop = [...CHAT_STOPS, ...job.stop];
    const sequences = start({ ...job, stop }, request, reply);
    const id = `chatcmpl-${randomBytes(12).toString('hex')}`;
    const created = Math.floor(Date.now() / 1000);
    const content = (tokens: ReportedToken[]) =>
      wantLogprobs
        ? {
            content: tokens.map((t) => ({
              token: t.text,
              logprob: t.logprob,
              bytes: t.bytes,
              top_logprobs: t.top.map((x) => ({ token: x.text, logprob: x.logprob, bytes: x.bytes })),
            })),
          }
        : null;
    const options = { stop, echo: false, promptIds: prompt };

    if (job.stream) {
      const sse = openStream(reply);
      const stall = deps.streamStallMs();
      if (stall > 0) await new Promise((resolve) => setTimeout(resolve, stall));
      const chunk = (index: number, delta: object, tokens: ReportedToken[], finish: ChoiceFinish | null) =>
        sse.send({
          id,
          object: 'chat.completion.chunk',
          created,
          model: modelName,
          choices: [{ index, delta, logprobs: finish ? null : content(tokens), finish_reason: finish }],
        });
      // the space after `Assistant:` belongs to the template, not the answer
      const begun = new Set<number>();
      const trimFirst = (text: string, index: number) => {
        if (begun.has(index) || text === '') return text;
        begun.add(index);
        return text.replace(/^ /, '');
      };
      await Promise.all(
        sequences.map(async (sequence, index) => {
          chunk(index, { role: 'assistant', content: '' }, [], null);
          const finish = await forEachEvent(runChoice(sequence, tokenizer, options), (event) => {
            if (event.type !== 'delta') return;
            chunk(index, { content: trimFirst(event.text, index) }, event.token ? [event.token] : [], null);
          });
          chunk(index, {}, [], finish);
        }),
      ).catch((error: unknown) => sse.fail(error));
      const usage = usageOf(job, sequences);
      if (body.stream_options?.include_usage) {
        sse.send({ id, object: 'chat.completion.chunk', created, model: modelName, choices: [], usage });
      }
      sse.end();
      return reply;
    }

    const choices = await Promise.all(
      sequences.map(async (sequence, index) => {
        const tokens: ReportedToken[] = [];
        let text = '';
        const finish = await forEachEvent(runChoice(sequence, tokenizer, options), (event) => {
          text += event.text;
          if (event.type === 'delta' && event.token) tokens.push(event.token);
        });
        return {
          index,
          message: { role: 'assistant', content: text.replace(/^ /, '') },
          logprobs: content(tokens),
          finish_reason: finish,
        };
      }),
    );
    return { id, object: 'chat.completion', created, model: modelName, choices, usage: usageOf(job, sequences) };
  });
}

function promptTokens(job: Job): number {
  return job.prompts.reduce((n, p) => n + p.length, 0) * job.n;
}

function choiceOptions(job: Job, index: number) {
  return { stop: job.stop, echo: job.echo, promptIds: job.prompts[Math.floor(index / job.n)] as number[] };
}

async function forEachEvent(
  choice: AsyncGenerator<ChoiceEvent, ChoiceFinish>,
  onEvent: (event: ChoiceEvent) => void,
): Promise<ChoiceFinish> {
  for (;;) {
    const next = await choice.next();
    if (next.done) return next.value;
    onEvent(next.value);
  }
}

function modelNotFound(model: string): CloudError {
  return new CloudError(
    404,
    'invalid_request_error',
    `The model \`${model}\` does not exist.`,
    'model_not_found',
    'model',
  );
}

/** Server-sent events on the raw response (fastify hands it over). */
function openStream(reply: FastifyReply) {
  reply.hijack();
  const sse = openEventStream(reply.raw);
  return {
    send: (data: object) => sse.send(data),
    end: () => sse.end(),
    fail(error: unknown) {
      sse.fail(error instanceof CloudError ? error.message : 'the model failed while generating');
    },
  };
}
