/**
 * The device's link to a coordination server: enrollment over HTTP, then one socket.io connection
 * authenticated by the credential, each event one framed msgpack message (@floe/shared codec).
 * Incoming frames are decoded and validated before any listener sees them. What the server sends
 * never throws on the device: refusals arrive as `server_error` events (not Node's special 'error',
 * which ends a process that has no listener), and the connection reconnects by itself with
 * exponential backoff and jitter (socket.io's manager) unless the server itself closed it.
 */
import { EventEmitter } from 'node:events';
import { rootCertificates } from 'node:tls';
import { Agent, type RequestInit as UndiciRequestInit, fetch as undiciFetch } from 'undici';
import { io, type Socket } from 'socket.io-client';
import {
  type DeviceProfile,
  type EnrollResponse,
  type ErrorMessage,
  type Hello,
  type Message,
  type MessageOf,
  PROTOCOL_VERSION,
  type RankPlan,
  type RoundEnd,
  type RoundStart,
  type Update,
  type UpdateAck,
  type Welcome,
  FloeError,
  SERVER_MESSAGES,
  decodeMessage,
  encodeMessage,
} from '@floe/shared';

export class ConnectionError extends FloeError {}

/** A private certificate authority the server's TLS certificate must chain to (besides the system's). */
let trusted: { pem: string; dispatcher: Agent } | undefined;

/**
 * Trust `pem` (one or more CA certificates) for every HTTPS request and WSS connection to the server
 * from now on, in addition to the system's authorities: a deployment with its own CA.
 */
export function trustCertificateAuthority(pem: string): void {
  const ca = [...rootCertificates, pem];
  trusted = { pem, dispatcher: new Agent({ connect: { ca } }) };
}

/** An HTTP request to the server; an unreachable server is a ConnectionError that names it. */
export async function request(serverUrl: string, route: string, init: RequestInit = {}): Promise<Response> {
  const url = new URL(route, serverUrl);
  try {
    if (trusted) {
      return (await undiciFetch(url, {
        signal: AbortSignal.timeout(30_000),
        ...(init as unknown as UndiciRequestInit),
        dispatcher: trusted.dispatcher,
      })) as unknown as Response;
    }
    return await fetch(url, { signal: AbortSignal.timeout(30_000), ...init });
  } catch (error) {
    const cause = (error as { cause?: { code?: string; message?: string } }).cause;
    const why = cause?.code ?? cause?.message ?? (error as Error).message;
    throw new ConnectionError('unreachable', `cannot reach the server at ${url.origin}: ${why}`);
  }
}

/** POST /v1/enroll: trades the deployment's join token for this device's credential. */
export async function enroll(serverUrl: string, joinToken: string, profile: DeviceProfile): Promise<EnrollResponse> {
  const response = await request(serverUrl, '/v1/enroll', {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ joinToken, protocolVersion: PROTOCOL_VERSION, profile }),
  });
  const body = (await response.json().catch(() => ({
    code: 'not_a_floe_server',
    message: `${serverUrl} answered ${response.status} without JSON`,
  }))) as EnrollResponse | { code: string; message: string };
  if (!response.ok || !('credential' in body)) {
    const error = body as { code?: string; message?: string };
    throw new ConnectionError(error.code ?? 'enroll_failed', `enrollment refused: ${error.message ?? response.status}`);
  }
  return body;
}

/**
 * Why the server refuses `credential`, or undefined when it accepts it. The socket.io handshake is
 * refused with a bare HTTP 400 before any websocket exists (no reason travels with it), so a device
 * refused there asks the REST side.
 */
export async function credentialRefusal(serverUrl: string, credential: string): Promise<ConnectionError | undefined> {
  const response = await request(serverUrl, '/v1/me', { headers: { authorization: `Bearer ${credential}` } });
  if (response.ok) return undefined;
  const body = (await response.json().catch(() => ({}))) as { code?: string; message?: string };
  if (response.status !== 401) return undefined; // not about the credential (rate limit, server trouble)
  return new ConnectionError(body.code ?? 'bad_credential', body.message ?? 'credential refused');
}

/** POST /v1/credentials/refresh: a fresh credential for one that is still valid. */
export async function refreshCredential(serverUrl: string, credential: string): Promise<string> {
  const response = await request(serverUrl, '/v1/credentials/refresh', {
    method: 'POST',
    headers: { authorization: `Bearer ${credential}` },
  });
  const body = (await response.json().catch(() => ({}))) as { credential?: string; code?: string; message?: string };
  if (!response.ok || !body.credential) {
    throw new ConnectionError(body.code ?? 'refresh_failed', `refresh refused: ${body.message ?? response.status}`);
  }
  return body.credential;
}

/** When a credential (a JWT) was issued and expires, epoch ms by the server's clock; undefined when unreadable. */
export function credentialTimes(credential: string): { issuedAt: number; expiresAt: number } | undefined {
  try {
    const payload = JSON.parse(Buffer.from(credential.split('.')[1] ?? '', 'base64url').toString('utf8')) as {
      iat?: number;
      exp?: number;
    };
    if (typeof payload.iat !== 'number' || typeof payload.exp !== 'number' || payload.exp <= payload.iat)
      return undefined;
    return { issuedAt: payload.iat * 1000, expiresAt: payload.exp * 1000 };
  } catch {
    return undefined;
  }
}

/** Whether a credential has lived more than half its life by this device's clock; false when unreadable. */
export function pastHalfLife(credential: string, now = Date.now()): boolean {
  const times = credentialTimes(credential);
  return times !== undefined && now > (times.issuedAt + times.expiresAt) / 2;
}

/** A refused websocket upgrade, as engine.io-client reports it. */
function isHandshakeRefusal(error: Error & { description?: unknown }): boolean {
  const description = error.description as { message?: unknown } | undefined;
  return typeof description?.message === 'string' && /Unexpected server response: 4\d\d/.test(description.message);
}

export interface ConnectionEvents {
  round_start: [RoundStart];
  round_end: [RoundEnd];
  update_ack: [UpdateAck];
  /** A refusal or notice from the server (`rate_limited`, `replaced`, ...), or a server frame that did not decode. */
  server_error: [ErrorMessage];
  disconnect: [string];
  /** The link is back (after a drop) and hello was said again. */
  reconnect: [];
}

/** Every frame that crossed the link, with its size: what the device sent and received. */
export interface Traffic {
  framesSent: number;
  bytesSent: number;
  framesReceived: number;
  bytesReceived: number;
}

export interface ConnectOptions {
  profile: DeviceProfile;
  plan?: RankPlan;
  /** ms to wait for the welcome; 0 waits as long as it takes (the link keeps retrying). Default 10 s. */
  timeoutMs?: number;
  /** Reconnect (and say hello again) after the link drops. Default true. */
  reconnect?: boolean;
  /** Longest pause between reconnection attempts, ms (they back off exponentially up to it, with jitter). */
  maxReconnectDelayMs?: number;
  /** Sees every frame the connection sends, hello included, as it leaves (traffic inspection). */
  onFrameSent?: (event: string, frame: Uint8Array) => void;
}

/** Round messages kept for a listener that has not subscribed yet (older ones are dropped first). */
const MAX_HELD_MESSAGES = 16;

export class ServerConnection extends EventEmitter<ConnectionEvents> {
  private readonly socket: Socket;
  private welcome: Welcome | undefined;
  /**
   * The credential the next connection attempt presents; the one the attempt under way presents (socket.io
   * reads the header when an attempt starts); the one the open link was accepted with; and the one whose
   * expiry the server announced. A link the server ended at expiry waits for a fresher one when needed.
   */
  private credential: string;
  private attemptWith: string;
  private connectedWith = '';
  private expiredWith: string | undefined;
  private awaitingCredential = false;
  private closed = false;
  readonly traffic: Traffic = { framesSent: 0, bytesSent: 0, framesReceived: 0, bytesReceived: 0 };
  private readonly frameListeners: ((event: string, frame: Uint8Array) => void)[] = [];

  /**
   * round_start and round_end that arrived before anyone listened: the server sends a reconnecting
   * device its open round right after the welcome, often in the same read as the welcome, before the
   * caller of `open` has had a chance to subscribe. They are handed to the first listener.
   */
  private readonly held: (RoundStart | RoundEnd)[] = [];

  private constructor(socket: Socket, credential: string) {
    super();
    this.socket = socket;
    this.credential = credential;
    this.attemptWith = credential;
    (this as EventEmitter).on('newListener', (event: string) => {
      if (event === 'round_start' || event === 'round_end') queueMicrotask(() => this.releaseHeld(event));
    });
  }

  private releaseHeld(type: 'round_start' | 'round_end'): void {
    for (let i = 0; i < this.held.length;) {
      const message = this.held[i] as RoundStart | RoundEnd;
      if (message.type !== type) {
        i++;
        continue;
      }
      this.held.splice(i, 1);
      if (message.type === 'round_start') this.emit('round_start', message);
      else this.emit('round_end', message);
    }
  }

  private hold(message: RoundStart | RoundEnd): void {
    if (this.held.length >= MAX_HELD_MESSAGES) this.held.shift();
    this.held.push(message);
  }

  /** Calls `listener` with every frame this connection sends, as it leaves (traffic inspection). */
  onFrameSent(listener: (event: string, frame: Uint8Array) => void): void {
    this.frameListeners.push(listener);
  }

  private emitFrame(event: string, frame: Uint8Array): void {
    this.traffic.framesSent++;
    this.traffic.bytesSent += frame.byteLength;
    for (const listener of this.frameListeners) listener(event, frame);
    this.socket.emit(event, frame);
  }

  /** Connects with `credential`, says hello and resolves with the server's welcome. */
  static async open(serverUrl: string, credential: string, options: ConnectOptions): Promise<ServerConnection> {
    const socket = io(serverUrl, {
      // checked on the upgrade request itself, before the server reads any packet
      extraHeaders: { authorization: `Bearer ${credential}` },
      ...(trusted ? { ca: [...rootCertificates, trusted.pem] } : {}),
      transports: ['websocket'],
      reconnection: options.reconnect ?? true,
      reconnectionDelay: 200,
      reconnectionDelayMax: options.maxReconnectDelayMs ?? 5000,
      randomizationFactor: 0.5,
    });
    const connection = new ServerConnection(socket, credential);
    if (options.onFrameSent) connection.onFrameSent(options.onFrameSent);
    const hello: Hello = {
      type: 'hello',
      protocolVersion: PROTOCOL_VERSION,
      profile: options.profile,
      ...(options.plan ? { plan: options.plan } : {}),
    };
    for (const type of SERVER_MESSAGES) {
      socket.on(type, (payload: unknown) => connection.receive(payload));
    }
    let connectedBefore = false;
    socket.io.on('reconnect_attempt', () => (connection.attemptWith = connection.credential));
    socket.on('connect', () => {
      connection.connectedWith = connection.attemptWith;
      connection.emitFrame('hello', encodeMessage(hello));
      if (connectedBefore) connection.emit('reconnect');
      connectedBefore = true;
    });
    socket.on('disconnect', (reason) => {
      connection.emit('disconnect', reason);
      // the server ended a link whose credential expired: a refreshed one opens it again
      if (reason === 'io server disconnect' && connection.expiredWith === connection.connectedWith) connection.reopen();
    });
    await new Promise<void>((resolve, reject) => {
      const timeoutMs = options.timeoutMs ?? 10_000;
      const timer =
        timeoutMs > 0
          ? setTimeout(() => {
              socket.close();
              reject(new ConnectionError('timeout', 'no welcome from the server'));
            }, timeoutMs)
          : undefined;
      const onError = (error: Error & { data?: { code?: string }; description?: unknown }) => {
        if (isHandshakeRefusal(error)) {
          void credentialRefusal(serverUrl, connection.credential).then(
            (refusal) => {
              if (!refusal) return; // the credential is fine: a passing fault, socket.io retries
              socket.off('connect_error', onError);
              clearTimeout(timer);
              socket.close();
              reject(refusal);
            },
            () => undefined, // the REST side is unreachable too: keep retrying
          );
          return;
        }
        if (socket.active) return; // transient: socket.io retries by itself
        socket.off('connect_error', onError);
        clearTimeout(timer);
        reject(new ConnectionError(error.data?.code ?? 'connect_failed', error.message));
      };
      socket.on('connect_error', onError);
      socket.once('welcome', () => {
        socket.off('connect_error', onError);
        clearTimeout(timer);
        resolve();
      });
    });
    // later, a reconnection refused for its credential (revoked, expired) ends the link instead of retrying forever
    socket.on('connect_error', (error: Error & { description?: unknown }) => {
      if (!isHandshakeRefusal(error)) return;
      void credentialRefusal(serverUrl, connection.credential).then(
        (refusal) => {
          if (!refusal || !socket.active) return;
          socket.close();
          connection.emit('server_error', { type: 'error', code: refusal.code, message: refusal.message });
          connection.emit('disconnect', 'credential refused');
        },
        () => undefined,
      );
    });
    return connection;
  }

  /**
   * Present `credential` (a refreshed one) from the next connection on. The server ends a link when the
   * credential it was opened with expires; the link then reopens at once with this one.
   */
  useCredential(credential: string): void {
    this.credential = credential;
    this.socket.io.opts.extraHeaders = { authorization: `Bearer ${credential}` };
    if (this.awaitingCredential) this.reopen();
  }

  /** Opens a link the server ended at expiry, with a credential other than the expired one (or waits for one). */
  private reopen(): void {
    this.awaitingCredential = this.credential === this.connectedWith;
    if (this.awaitingCredential || this.closed || this.socket.connected) return;
    this.attemptWith = this.credential;
    this.socket.connect();
  }

  get clientId(): string | undefined {
    return this.welcome?.clientId;
  }

  get maxFrameBytes(): number | undefined {
    return this.welcome?.maxFrameBytes;
  }

  private receive(payload: unknown): void {
    this.traffic.framesReceived++;
    this.traffic.bytesReceived += payload instanceof Uint8Array ? payload.byteLength : 0;
    let message: Message;
    try {
      message = decodeMessage(payload);
    } catch (error) {
      this.emit('server_error', {
        type: 'error',
        code: 'bad_server_frame',
        message: error instanceof Error ? error.message : String(error),
      });
      return;
    }
    if (message.type === 'welcome') this.welcome = message;
    else if (message.type === 'round_start') {
      if (this.listenerCount('round_start') === 0) this.hold(message);
      else this.emit('round_start', message);
    } else if (message.type === 'round_end') {
      if (this.listenerCount('round_end') === 0) this.hold(message);
      else this.emit('round_end', message);
    } else if (message.type === 'update_ack') this.emit('update_ack', message);
    else if (message.type === 'error') {
      if (message.code === 'credential_expired') this.expiredWith = this.connectedWith;
      this.emit('server_error', message);
    }
  }

  /** Sends an update and resolves with its ack (or the error message that refused it, e.g. rate_limited). */
  async sendUpdate(update: Omit<Update, 'type'>, timeoutMs = 30_000): Promise<UpdateAck | ErrorMessage> {
    const frame = encodeMessage({ type: 'update', ...update });
    const limit = this.maxFrameBytes;
    if (limit !== undefined && frame.byteLength > limit) {
      // the server would close the link on it (its websocket takes no larger message)
      throw new ConnectionError('too_large', `update frame of ${frame.byteLength} bytes exceeds the server's ${limit}`);
    }
    return this.sendFrame('update', frame, update.jobId, update.round, timeoutMs);
  }

  /**
   * Sends raw bytes on an event and resolves with the server's answer: the ack for (jobId, round),
   * or the next `error` message. For clients with their own encoder, and for testing the server.
   */
  sendFrame(
    event: string,
    frame: Uint8Array,
    jobId: string,
    round: number,
    timeoutMs = 30_000,
  ): Promise<UpdateAck | ErrorMessage> {
    return new Promise((resolve, reject) => {
      const cleanup = () => {
        clearTimeout(timer);
        this.off('update_ack', onAck);
        this.off('server_error', onError);
      };
      const onAck = (ack: UpdateAck) => {
        if (ack.jobId !== jobId || ack.round !== round) return;
        cleanup();
        resolve(ack);
      };
      const onError = (error: ErrorMessage) => {
        cleanup();
        resolve(error);
      };
      const timer = setTimeout(() => {
        cleanup();
        reject(new ConnectionError('timeout', `no answer to ${event} within ${timeoutMs} ms`));
      }, timeoutMs);
      this.on('update_ack', onAck);
      this.on('server_error', onError);
      this.emitFrame(event, frame);
    });
  }

  /** The next message of `type` (optionally matching `filter`). */
  next<T extends 'round_start' | 'round_end' | 'update_ack'>(
    type: T,
    filter: (message: MessageOf<T>) => boolean = () => true,
    timeoutMs = 60_000,
  ): Promise<MessageOf<T>> {
    return new Promise((resolve, reject) => {
      const listener = (message: MessageOf<T>) => {
        if (!filter(message)) return;
        clearTimeout(timer);
        this.off(type, listener as never);
        resolve(message);
      };
      const timer = setTimeout(() => {
        this.off(type, listener as never);
        reject(new ConnectionError('timeout', `no ${type} within ${timeoutMs} ms`));
      }, timeoutMs);
      this.on(type, listener as never);
    });
  }

  /** True while the link is up. */
  get connected(): boolean {
    return this.socket.connected;
  }

  close(): void {
    this.closed = true;
    this.socket.close();
  }
}
