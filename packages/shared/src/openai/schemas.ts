/**
 * Request bodies of the OpenAI API subset Floe serves (the cloud stand-in, and the edge's local
 * endpoint with its own extra fields). Unknown fields are refused with a clear 400 rather than silently
 * ignored, so a client never believes a setting took effect.
 */
import Type, { type Static } from 'typebox';

const Stop = Type.Union([
  Type.String({ minLength: 1, maxLength: 64 }),
  Type.Array(Type.String({ minLength: 1, maxLength: 64 }), { maxItems: 4 }),
  Type.Null(),
]);

export const SamplingFields = {
  model: Type.String({ minLength: 1, maxLength: 128 }),
  max_tokens: Type.Optional(Type.Union([Type.Integer({ minimum: 0, maximum: 4096 }), Type.Null()])),
  temperature: Type.Optional(Type.Union([Type.Number({ minimum: 0, maximum: 2 }), Type.Null()])),
  top_p: Type.Optional(Type.Union([Type.Number({ exclusiveMinimum: 0, maximum: 1 }), Type.Null()])),
  n: Type.Optional(Type.Union([Type.Integer({ minimum: 1, maximum: 16 }), Type.Null()])),
  stop: Type.Optional(Stop),
  stream: Type.Optional(Type.Union([Type.Boolean(), Type.Null()])),
  stream_options: Type.Optional(
    Type.Union([Type.Object({ include_usage: Type.Optional(Type.Boolean()) }), Type.Null()]),
  ),
  seed: Type.Optional(Type.Union([Type.Integer(), Type.Null()])),
  user: Type.Optional(Type.String({ maxLength: 256 })),
  presence_penalty: Type.Optional(Type.Union([Type.Literal(0), Type.Null()])),
  frequency_penalty: Type.Optional(Type.Union([Type.Literal(0), Type.Null()])),
};

const TokenIds = Type.Array(Type.Integer({ minimum: 0 }), { minItems: 1, maxItems: 8192 });

export const CompletionRequest = Type.Object(
  {
    ...SamplingFields,
    prompt: Type.Union([
      Type.String({ maxLength: 65536 }),
      Type.Array(Type.String({ maxLength: 65536 }), { minItems: 1, maxItems: 16 }),
      TokenIds,
      Type.Array(TokenIds, { minItems: 1, maxItems: 16 }),
    ]),
    logprobs: Type.Optional(Type.Union([Type.Integer({ minimum: 0, maximum: 20 }), Type.Null()])),
    echo: Type.Optional(Type.Union([Type.Boolean(), Type.Null()])),
  },
  { additionalProperties: false },
);
export type CompletionRequest = Static<typeof CompletionRequest>;

const ChatMessage = Type.Object(
  {
    role: Type.Union([
      Type.Literal('system'),
      Type.Literal('developer'),
      Type.Literal('user'),
      Type.Literal('assistant'),
    ]),
    content: Type.Union([
      Type.String({ maxLength: 65536 }),
      Type.Array(Type.Object({ type: Type.Literal('text'), text: Type.String({ maxLength: 65536 }) }), {
        maxItems: 64,
      }),
    ]),
    name: Type.Optional(Type.String({ maxLength: 64 })),
  },
  { additionalProperties: false },
);

export const ChatRequest = Type.Object(
  {
    ...SamplingFields,
    messages: Type.Array(ChatMessage, { minItems: 1, maxItems: 256 }),
    max_completion_tokens: Type.Optional(Type.Union([Type.Integer({ minimum: 0, maximum: 4096 }), Type.Null()])),
    logprobs: Type.Optional(Type.Union([Type.Boolean(), Type.Null()])),
    top_logprobs: Type.Optional(Type.Union([Type.Integer({ minimum: 0, maximum: 20 }), Type.Null()])),
  },
  { additionalProperties: false },
);
export type ChatRequest = Static<typeof ChatRequest>;
export type ChatMessage = Static<typeof ChatMessage>;

/** Renders chat messages for a base model: `Role: content` lines, then `Assistant:` to continue. */
export function chatPrompt(messages: readonly ChatMessage[]): string {
  const text = (m: ChatMessage) => (typeof m.content === 'string' ? m.content : m.content.map((p) => p.text).join(''));
  const role = (m: ChatMessage) => (m.role === 'developer' ? 'System' : m.role[0]!.toUpperCase() + m.role.slice(1));
  return `${messages.map((m) => `${role(m)}: ${text(m)}\n`).join('')}Assistant:`;
}

/** Where an answer under `chatPrompt` ends: the model starting the next turn. */
export const CHAT_STOPS = ['\nUser:', '\nSystem:'] as const;
