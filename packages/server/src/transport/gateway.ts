/**
 * The socket.io side of the server. A connection is admitted only with a valid credential of an
 * enrolled client, checked on the HTTP upgrade request itself (`Authorization: Bearer`), before
 * engine.io or socket.io parse a single packet of it; from then on every message on it is that
 * client's. Each event carries one framed msgpack message of the same type (codec/message.ts in
 * @floe/shared). Anything a client sends is size- and rate-limited, decoded and validated; what fails
 * gets an `error` (or a refusing `update_ack`) and is dropped. No client input can throw out of a handler.
 */
import type { IncomingMessage } from 'node:http';
import type { Server, Socket } from 'socket.io';
import { Decoder, Encoder } from 'socket.io-parser';
import { RateLimiterMemory } from 'rate-limiter-flexible';
import {
  FloeError,
  PROTOCOL_VERSION,
  type ErrorMessage,
  type Message,
  type RoundEnd,
  type RoundStart,
  assertCompatibleProtocol,
  decodeMessageOf,
  encodeMessage,
} from '@floe/shared';
import { bearer, type Credentials } from '../auth.js';
import type { ServerMetrics } from '../metrics.js';
import type { Coordinator, Logger, RoundTransport } from '../rounds/coordinator.js';
import type { Store } from '../store/store.js';

export interface GatewayOptions {
  maxFrameBytes: number;
  /** A connection that has not said hello by then is closed. */
  helloTimeoutMs: number;
  /** Messages a client may send per `rateWindowSec`. */
  rateLimitMessages: number;
  rateWindowSec: number;
}

interface ClientSocketData {
  clientId: string;
  greeted: boolean;
}

type ClientSocket = Socket<Record<string, never>, Record<string, never>, Record<string, never>, ClientSocketData>;

/** Where a handshake's verified client id is kept between engine.io's check and socket.io's. */
const CLIENT_ID = Symbol('floe client id');
type AuthenticatedRequest = IncomingMessage & { [CLIENT_ID]?: string };

/**
 * engine.io's `allowRequest`: the credential in the upgrade request's `Authorization` header must name
 * an enrolled client, or the request is answered 403 before a websocket exists. Devices reach the
 * server over websocket only, so no packet of an unauthenticated peer is ever read.
 */
export function authenticateHandshake(credentials: Credentials, store: Store, metrics: ServerMetrics) {
  return (request: IncomingMessage, callback: (error: string | null | undefined, success: boolean) => void) => {
    void credentials
      .verify(bearer(request.headers.authorization))
      .then((clientId) => {
        if (!store.hasClient(clientId)) throw new FloeError('unknown_client', `client ${clientId} is not enrolled`);
        (request as AuthenticatedRequest)[CLIENT_ID] = clientId;
        callback(null, true);
      })
      .catch((error: unknown) => {
        const code = error instanceof FloeError ? error.code : 'bad_credential';
        metrics.refusedMessages.inc({ code });
        callback(`${code}: ${error instanceof Error ? error.message : 'refused'}`, false);
      });
  };
}

/**
 * socket.io's packet decoder, narrowed to what the protocol sends: an event's text part is a short
 * header (`451-["update",{"_placeholder":true,"num":0}]`) and it carries exactly one binary frame. A
 * longer text packet or a second attachment closes the connection before JSON.parse sees it.
 */
const MAX_TEXT_PACKET_CHARS = 1024;
class BoundedDecoder extends Decoder {
  constructor() {
    super({ maxAttachments: 1 });
  }

  override add(packet: unknown): void {
    if (typeof packet === 'string' && packet.length > MAX_TEXT_PACKET_CHARS) {
      throw new Error(`text packet of ${packet.length} characters (at most ${MAX_TEXT_PACKET_CHARS})`);
    }
    super.add(packet);
  }
}
export const BOUNDED_PARSER = { Encoder, Decoder: BoundedDecoder };

export class Gateway implements RoundTransport {
  private readonly sockets = new Map<string, ClientSocket>();
  private readonly limiter: RateLimiterMemory;
  private coordinator: Coordinator | undefined;

  constructor(
    private readonly io: Server,
    private readonly metrics: ServerMetrics,
    private readonly log: Logger,
    private readonly options: GatewayOptions,
  ) {
    this.limiter = new RateLimiterMemory({ points: options.rateLimitMessages, duration: options.rateWindowSec });
    io.use((socket, next) => {
      const clientId = (socket.request as AuthenticatedRequest)[CLIENT_ID];
      if (clientId === undefined) {
        // only reachable if the server was built without authenticateHandshake: refuse rather than trust
        this.metrics.refusedMessages.inc({ code: 'bad_credential' });
        next(Object.assign(new Error('the handshake carried no credential'), { data: { code: 'bad_credential' } }));
        return;
      }
      (socket as ClientSocket).data = { clientId, greeted: false };
      next();
    });
    io.on('connection', (socket) => this.connected(socket as ClientSocket));
  }

  /** The coordinator is created after the gateway (it sends through it). */
  attach(coordinator: Coordinator): void {
    this.coordinator = coordinator;
  }

  isConnected(clientId: string): boolean {
    return this.sockets.has(clientId);
  }

  connectedCount(): number {
    return this.sockets.size;
  }

  send(clientId: string, message: RoundStart | RoundEnd): boolean {
    const socket = this.sockets.get(clientId);
    if (!socket) return false;
    this.emit(socket, message);
    return true;
  }

  private emit(socket: ClientSocket, message: Message): void {
    (socket as unknown as Socket).emit(message.type, encodeMessage(message));
  }

  private refuse(socket: ClientSocket, code: string, message: string): void {
    this.metrics.refusedMessages.inc({ code });
    this.log.warn({ clientId: socket.data.clientId, code }, `message refused: ${message}`);
    const reply: ErrorMessage = { type: 'error', code, message: message.slice(0, 2048) };
    this.emit(socket, reply);
  }

  private connected(socket: ClientSocket): void {
    const { clientId } = socket.data;
    const previous = this.sockets.get(clientId);
    if (previous) {
      // one live connection per identity: the newest (a reconnect) replaces the old one
      this.refuse(previous, 'replaced', 'another connection of this client took over');
      previous.disconnect(true);
    }
    this.sockets.set(clientId, socket);
    this.metrics.connectedClients.set(this.sockets.size);
    this.log.info({ clientId }, 'client connected');

    const helloTimer = setTimeout(() => {
      if (socket.data.greeted || !socket.connected) return;
      this.refuse(socket, 'hello_timeout', `no hello within ${this.options.helloTimeoutMs} ms`);
      socket.disconnect(true);
    }, this.options.helloTimeoutMs);
    socket.on('disconnect', () => clearTimeout(helloTimer));

    socket.onAny((event: string, payload: unknown) => {
      void this.handle(socket, event, payload);
    });
    socket.on('disconnect', (reason) => {
      if (this.sockets.get(clientId) === socket) {
        this.sockets.delete(clientId);
        this.coordinator?.clientGone(clientId);
      }
      this.metrics.connectedClients.set(this.sockets.size);
      this.log.info({ clientId, reason }, 'client disconnected');
    });
  }

  private async handle(socket: ClientSocket, event: string, payload: unknown): Promise<void> {
    const { clientId } = socket.data;
    try {
      await this.limiter.consume(clientId);
    } catch {
      this.refuse(
        socket,
        'rate_limited',
        `more than ${this.options.rateLimitMessages} messages in ${this.options.rateWindowSec} s`,
      );
      return;
    }
    try {
      if (event === 'hello') {
        const hello = decodeMessageOf(payload, 'hello', { maxBytes: this.options.maxFrameBytes });
        assertCompatibleProtocol(hello.protocolVersion, 'client');
        socket.data.greeted = true;
        this.emit(socket, {
          type: 'welcome',
          protocolVersion: PROTOCOL_VERSION,
          clientId,
          maxFrameBytes: this.options.maxFrameBytes,
        });
        this.coordinator?.clientReady(clientId, hello.plan);
      } else if (event === 'update') {
        if (!socket.data.greeted) {
          this.refuse(socket, 'hello_first', 'send hello before anything else');
          return;
        }
        const update = decodeMessageOf(payload, 'update', {
          maxBytes: this.options.maxFrameBytes,
          requireFinite: false,
        });
        const ack = this.coordinator?.receiveUpdate(clientId, payload as Uint8Array, update);
        if (ack) this.emit(socket, ack);
      } else {
        this.refuse(socket, 'unknown_event', `clients may send hello and update, not ${event.slice(0, 64)}`);
      }
    } catch (error) {
      if (error instanceof FloeError) {
        this.refuse(socket, error.code, error.message);
        if (error.code === 'version_mismatch') socket.disconnect(true);
        return;
      }
      this.log.error({ clientId, event, err: error }, 'internal error handling a client message');
      this.refuse(socket, 'internal_error', 'the server failed to handle this message');
    }
  }

  close(): void {
    void this.io.close();
  }
}
