/**
 * The socket.io protocol as an AsyncAPI 3.0 document, built from the same TypeBox schemas that validate
 * every message in the code. The server serves it at /docs/asyncapi.json; docs/asyncapi.json is the
 * committed copy a test compares with this output (a schema change without its specification fails).
 * Prose (frame layout, round order, resend rule) is in docs/protocol.md.
 */
import { ERROR_CODES } from './error-codes.js';
import { CLIENT_MESSAGES, MESSAGE_SCHEMAS, type MessageType, SERVER_MESSAGES } from './schemas.js';
import { PROTOCOL_VERSION } from './version.js';

const SUMMARIES: Record<MessageType, string> = {
  hello: 'First message on every connection: protocol version, device profile and, to be sampled, a rank plan.',
  welcome: "The server's answer to a valid hello: the client id and the largest frame it accepts.",
  round_start:
    "The client is sampled: its assignment (rank, layers through the start adapter, cluster), the deadline in epoch milliseconds on the server's clock and the start adapter (always sent; null would mean PEFT's initialisation).",
  update:
    'The trained adapter of a round, with the rank plan it was trained at, the local example count and scalar metrics.',
  update_ack:
    'The verdict on an update, matched to it by jobId and round: accepted (durably stored), or refused with a code; a refused client may send a corrected update until the deadline.',
  round_end:
    "The round is over: aggregated or failed, the client's cluster, and whether the job goes on (sent for failed rounds too).",
  error:
    'Something the client sent was refused; `code` is one of x-floe-error-codes. It names no request: a client waiting for an update_ack takes an error that arrives meanwhile as the answer.',
};

/** Component names of the messages (the event names in camelCase). */
const componentName = (type: string) => type.replace(/_([a-z])/g, (_, c: string) => c.toUpperCase());

/** A TypeBox schema as plain JSON Schema (its own keys are non-enumerable and drop out). */
const plain = (schema: unknown): unknown => JSON.parse(JSON.stringify(schema)) as unknown;

export function asyncApiDocument(): Record<string, unknown> {
  const message = (type: MessageType) => ({ $ref: `#/channels/device/messages/${componentName(type)}` });
  const operations: Record<string, unknown> = {};
  for (const type of CLIENT_MESSAGES) {
    operations[`receive${componentName(type[0]!.toUpperCase() + type.slice(1))}`] = {
      action: 'receive',
      summary: `A client sends \`${type}\`.`,
      channel: { $ref: '#/channels/device' },
      messages: [message(type)],
      reply: {
        channel: { $ref: '#/channels/device' },
        messages: type === 'hello' ? [message('welcome'), message('error')] : [message('update_ack'), message('error')],
      },
    };
  }
  for (const type of SERVER_MESSAGES) {
    operations[`send${componentName(type[0]!.toUpperCase() + type.slice(1))}`] = {
      action: 'send',
      summary: `The server sends \`${type}\`.`,
      channel: { $ref: '#/channels/device' },
      messages: [message(type)],
    };
  }
  const types = Object.keys(MESSAGE_SCHEMAS) as MessageType[];
  return {
    asyncapi: '3.0.0',
    info: {
      title: 'Floe device protocol',
      version: String(PROTOCOL_VERSION),
      description:
        'Devices and the Floe coordination server over socket.io v4 (Engine.IO 4), websocket transport only, default namespace. ' +
        'Each event carries exactly one binary argument: a 16-byte FLOE frame header and a msgpack map (docs/protocol.md); ' +
        "the payload schemas below describe the decoded map, whose `type` equals the event's name. No socket.io acknowledgements are used. " +
        'Enrollment, credentials and adapters are HTTP (OpenAPI at /docs/json).',
    },
    // each event's bytes are a FLOE frame (x-floe-frame) around one msgpack map
    defaultContentType: 'application/vnd.floe.frame+msgpack',
    servers: {
      coordination: {
        host: 'localhost:8080',
        pathname: '/socket.io/',
        protocol: 'ws',
        description:
          "A coordination server (wss with FLOE_TLS_CERT). Connect with the socket.io client, transports ['websocket'] and the credential in the upgrade request's Authorization header.",
        security: [{ $ref: '#/components/securitySchemes/clientCredential' }],
      },
    },
    channels: {
      device: {
        address: '/',
        description: "The default namespace; a message's name is its socket.io event name.",
        messages: Object.fromEntries(
          types.map((type) => [componentName(type), { $ref: `#/components/messages/${componentName(type)}` }]),
        ),
      },
    },
    operations,
    components: {
      securitySchemes: {
        clientCredential: {
          type: 'http',
          scheme: 'bearer',
          bearerFormat: 'JWT',
          description:
            '`Authorization: Bearer <credential>` on the websocket upgrade request; the credential comes from POST /v1/enroll and POST /v1/credentials/refresh. A refused upgrade is HTTP 400 with the body `code: message` (bad_credential, unknown_client, revoked, too_many_connections).',
        },
      },
      schemas: Object.fromEntries(types.map((type) => [componentName(type), plain(MESSAGE_SCHEMAS[type])])),
      messages: Object.fromEntries(
        types.map((type) => [
          componentName(type),
          {
            name: type,
            title: type,
            summary: SUMMARIES[type],
            payload: { $ref: `#/components/schemas/${componentName(type)}` },
            'x-floe-direction': (CLIENT_MESSAGES as readonly string[]).includes(type)
              ? 'client-to-server'
              : 'server-to-client',
          },
        ]),
      ),
    },
    'x-floe-error-codes': ERROR_CODES,
    'x-floe-frame': {
      header:
        '16 bytes: "FLOE" (4), frame version u8 = 1, 3 reserved zero bytes, payload length u32 LE, CRC-32 (IEEE, zlib) of the payload u32 LE',
      payload: 'one msgpack map (no extension types; binary data as bin)',
    },
  };
}
