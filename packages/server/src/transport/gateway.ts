/**
 * The socket.io side of the server. A connection is admitted only with a valid credential of an
 * enrolled client, checked on the HTTP upgrade request itself (`Authorization: Bearer`), before
 * engine.io or socket.io parse a single packet of it; from then on every message on it is that
 * client's. Each event carries one framed msgpack message of the same type (codec/message.ts in
 * @floe/shared). Anything a client sends is size- and rate-limited, decoded and validated; what fails
 * gets an `error` (or a refusing `update_ack`) and is dropped. No client input can throw out of a handler.
 */
import type { IncomingMessage } from 'node:http';
import { BlockList, isIP } from 'node:net';
import type { Server, Socket } from 'socket.io';
import { Decoder, Encoder } from 'socket.io-parser';
import { type RateLimiterAbstract, RateLimiterMemory } from 'rate-limiter-flexible';
import {
  FloeError,
  PROTOCOL_VERSION,
  type ErrorMessage,
  type Message,
  type RankPlan,
  type RoundEnd,
  type RoundStart,
  assertCompatibleProtocol,
  decodeMessageOf,
  encodeMessage,
} from '@floe/shared';
import { bearer, type Credentials } from '../auth.js';
import type { ServerMetrics } from '../metrics.js';
import type { Coordinator, Logger, ReplicaEvent, RoundTransport } from '../rounds/coordinator.js';
import type { Store } from '../store/store.js';

export interface GatewayOptions {
  maxFrameBytes: number;
  /** A connection that has not said hello by then is closed. */
  helloTimeoutMs: number;
  /** Messages a client may send per `rateWindowSec`. */
  rateLimitMessages: number;
  rateWindowSec: number;
  /** Refusals are logged once per client, code and window of this length (default 10 s). */
  refusalLogWindowMs?: number;
  /**
   * One of several replicas: socket.io's adapter reaches the other replicas' connections (messages to a
   * device, presence, events for the coordinator); the message rate limit is shared (default: per process).
   */
  replicated?: { messageLimiter: RateLimiterAbstract };
}

interface ClientSocketData {
  clientId: string;
  greeted: boolean;
  /** The plan of its hello: a client with one may be sampled. */
  plan?: RankPlan | undefined;
  /** When the credential it connected with expires (epoch ms): the connection ends then. */
  expiresAt: number;
}

type ClientSocket = Socket<Record<string, never>, Record<string, never>, Record<string, never>, ClientSocketData>;

/** The socket.io room of a client's connection, on whichever replica holds it. */
const clientRoom = (clientId: string) => `client:${clientId}`;
/** Events between replicas (socket.io's server-side emits, through the adapter). */
const REPLICA_EVENT = 'floe:event';
const PRESENCE_REQUEST = 'floe:presence';
/** Longest wait for the other replicas' ready clients (the adapter's own timeout is 3 s). */
const PRESENCE_TIMEOUT_MS = 4000;

/** Where a handshake's verified client id is kept between engine.io's check and socket.io's. */
const CLIENT_ID = Symbol('floe client id');
type AuthenticatedRequest = IncomingMessage & { [CLIENT_ID]?: { clientId: string; expiresAt: number } };

const NAMED_RANGES: Readonly<Record<string, readonly string[]>> = {
  loopback: ['127.0.0.1/8', '::1/128'],
  linklocal: ['169.254.0.0/16', 'fe80::/10'],
  uniquelocal: ['10.0.0.0/8', '172.16.0.0/12', '192.168.0.0/16', 'fc00::/7'],
};

/**
 * Whether a peer is a trusted proxy, for a `trustProxy` setting as fastify takes it: a boolean, or a
 * comma-separated list of addresses, CIDR ranges and proxy-addr's range names. Throws on a bad entry.
 */
export function trustedProxy(setting: boolean | string): (address: string) => boolean {
  if (typeof setting === 'boolean') return () => setting;
  const trusted = new BlockList();
  for (const entry of setting.split(',').map((item) => item.trim())) {
    for (const range of NAMED_RANGES[entry] ?? [entry]) {
      const [address = '', prefix, ...rest] = range.split('/');
      const family = isIP(address);
      const bits = prefix === undefined ? undefined : Number(prefix);
      if (
        family === 0 ||
        rest.length > 0 ||
        (bits !== undefined && (!/^[0-9]+$/.test(prefix ?? '') || bits > (family === 4 ? 32 : 128)))
      ) {
        throw new Error(`"${entry}" is neither an address, a CIDR range nor loopback, linklocal or uniquelocal`);
      }
      const type = family === 4 ? 'ipv4' : 'ipv6';
      if (bits === undefined) trusted.addAddress(address, type);
      else trusted.addSubnet(address, bits, type);
    }
  }
  return (address) => {
    const family = isIP(address);
    return family !== 0 && trusted.check(address, family === 4 ? 'ipv4' : 'ipv6');
  };
}

/**
 * The address a request comes from, as fastify (proxy-addr) derives `request.ip`: walking from the
 * socket's peer back through `X-Forwarded-For`, the first address that is not a trusted proxy (or the
 * furthest one, when all are).
 */
export function clientAddress(request: IncomingMessage, isTrusted: (address: string) => boolean): string {
  let address = request.socket.remoteAddress ?? '';
  if (!isTrusted(address)) return address;
  const header = request.headers['x-forwarded-for'];
  const forwarded = (Array.isArray(header) ? header.join(',') : (header ?? '')).split(',');
  for (let i = forwarded.length - 1; i >= 0; i--) {
    const hop = (forwarded[i] as string).trim();
    if (hop === '') continue;
    address = hop;
    if (!isTrusted(address)) break;
  }
  return address;
}

/** Connections held per address, each until its TCP connection closes. */
export class ConnectionsPerAddress {
  private readonly open = new Map<string, number>();

  /** `max` 0: no cap. */
  constructor(private readonly max: number) {}

  count(address: string): number {
    return this.open.get(address) ?? 0;
  }

  /** Takes a slot of `address`: its release (idempotent), or undefined when the address is at the cap. */
  acquire(address: string): (() => void) | undefined {
    const held = this.count(address);
    if (this.max > 0 && held >= this.max) return undefined;
    this.open.set(address, held + 1);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const left = this.count(address) - 1;
      if (left > 0) this.open.set(address, left);
      else this.open.delete(address);
    };
  }
}

export interface HandshakeOptions {
  /** Connections (open, or being checked) per client address; 0: no cap. */
  maxConnectionsPerIp: number;
  /** As fastify's `trustProxy`: whose `X-Forwarded-For` names the client. */
  trustProxy: boolean | string;
}

/**
 * engine.io's `allowRequest`: the client address must be under its connection cap, and the credential
 * in the upgrade request's `Authorization` header must name an enrolled client, or the request is
 * answered 400 before a websocket exists. Devices reach the server over websocket only, so no packet of
 * an unauthenticated peer is ever read.
 */
export function authenticateHandshake(
  credentials: Credentials,
  store: Store,
  metrics: ServerMetrics,
  options: HandshakeOptions = { maxConnectionsPerIp: 0, trustProxy: false },
) {
  const connections = new ConnectionsPerAddress(options.maxConnectionsPerIp);
  const isTrusted = trustedProxy(options.trustProxy);
  return (request: IncomingMessage, callback: (error: string | null | undefined, success: boolean) => void) => {
    const address = clientAddress(request, isTrusted);
    const release = connections.acquire(address);
    if (!release) {
      metrics.refusedMessages.inc({ code: 'too_many_connections' });
      callback(`too_many_connections: ${address} is at its cap of ${options.maxConnectionsPerIp} connections`, false);
      return;
    }
    // the slot is taken before the credential is checked (so parallel upgrades cannot overshoot the cap)
    // and held by the TCP connection, which after the upgrade is the websocket's
    if (request.socket.destroyed) release();
    else request.socket.once('close', release);
    void credentials
      .inspect(bearer(request.headers.authorization))
      .then(async (identity) => {
        // a store failure is the server's, not a bad credential (a device would throw a good one away)
        const status = await store.clientStatus(identity.clientId).catch(() => {
          throw new FloeError('internal_error', 'the server could not look this client up; try again');
        });
        if (status === 'revoked') throw new FloeError('revoked', `client ${identity.clientId} was revoked`);
        if (!status) throw new FloeError('unknown_client', `client ${identity.clientId} is not enrolled`);
        (request as AuthenticatedRequest)[CLIENT_ID] = identity;
        callback(null, true);
      })
      .catch((error: unknown) => {
        release();
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

interface RefusalWindow {
  since: number;
  codes: Set<string>;
  suppressed: number;
}

/**
 * Which refusals reach the log: per client and window, the first of each code; the others are only
 * counted, and one summary line gives their number when the window is over (at the client's next
 * refusal or the next `sweep`). A client sending junk as fast as it can thus costs a few lines per
 * window. At most `maxClients` clients are remembered; the least recently refused is dropped first
 * (its summary written), so many identities cannot grow it.
 */
export class RefusalLog {
  private readonly windows = new Map<string, RefusalWindow>();

  constructor(
    private readonly log: Logger,
    private readonly windowMs = 10_000,
    private readonly maxClients = 4096,
    private readonly now: () => number = Date.now,
  ) {}

  get trackedClients(): number {
    return this.windows.size;
  }

  refused(clientId: string, code: string, message: string): void {
    const now = this.now();
    let window = this.windows.get(clientId);
    if (window) {
      this.windows.delete(clientId); // re-inserted below: the map's order is recency
      if (now - window.since >= this.windowMs) {
        this.summarize(clientId, window);
        window = undefined;
      }
    }
    window ??= { since: now, codes: new Set(), suppressed: 0 };
    this.windows.set(clientId, window);
    if (window.codes.has(code)) window.suppressed++;
    else {
      window.codes.add(code);
      this.log.warn({ clientId, code }, `message refused: ${message}`);
    }
    if (this.windows.size > this.maxClients) {
      const [oldest, oldestWindow] = this.windows.entries().next().value as [string, RefusalWindow];
      this.windows.delete(oldest);
      this.summarize(oldest, oldestWindow);
    }
  }

  /** Summarizes and forgets every window that is over. */
  sweep(): void {
    const now = this.now();
    for (const [clientId, window] of this.windows) {
      if (now - window.since < this.windowMs) continue;
      this.windows.delete(clientId);
      this.summarize(clientId, window);
    }
  }

  private summarize(clientId: string, window: RefusalWindow): void {
    if (window.suppressed === 0) return;
    this.log.warn(
      { clientId, suppressed: window.suppressed, codes: [...window.codes] },
      `suppressed ${window.suppressed} refusals of this client (logged: one per code per ${Math.round(this.windowMs / 1000)} s)`,
    );
  }
}

export class Gateway implements RoundTransport {
  private readonly sockets = new Map<string, ClientSocket>();
  private readonly limiter: RateLimiterAbstract;
  private readonly refusals: RefusalLog;
  private readonly sweeper: NodeJS.Timeout;
  private coordinator: Coordinator | undefined;

  constructor(
    private readonly io: Server,
    private readonly metrics: ServerMetrics,
    private readonly log: Logger,
    private readonly options: GatewayOptions,
  ) {
    this.limiter =
      options.replicated?.messageLimiter ??
      new RateLimiterMemory({ points: options.rateLimitMessages, duration: options.rateWindowSec });
    const refusalLogWindowMs = options.refusalLogWindowMs ?? 10_000;
    this.refusals = new RefusalLog(log, refusalLogWindowMs);
    this.sweeper = setInterval(() => this.refusals.sweep(), refusalLogWindowMs).unref();
    io.use((socket, next) => {
      const identity = (socket.request as AuthenticatedRequest)[CLIENT_ID];
      if (identity === undefined) {
        // only reachable if the server was built without authenticateHandshake: refuse rather than trust
        this.metrics.refusedMessages.inc({ code: 'bad_credential' });
        next(Object.assign(new Error('the handshake carried no credential'), { data: { code: 'bad_credential' } }));
        return;
      }
      (socket as ClientSocket).data = { ...identity, greeted: false };
      next();
    });
    io.on('connection', (socket) => this.connected(socket as ClientSocket));
    if (options.replicated) {
      const server = io as unknown as NodeJS.EventEmitter;
      server.on(REPLICA_EVENT, (event: ReplicaEvent) => this.coordinator?.onReplicaEvent(event));
      server.on(PRESENCE_REQUEST, (reply: (ready: [string, RankPlan][]) => void) => reply([...this.localReady()]));
    }
  }

  /** Ends a client's connection with a reason (revoked, credential expired), on whichever replica holds it. */
  disconnectClient(clientId: string, code: string, message: string): void {
    const socket = this.sockets.get(clientId);
    if (socket) this.end(socket, code, message);
    if (this.options.replicated) this.endElsewhere(clientId, code, message);
  }

  /** Ends the connections of `clientId` on the other replicas (and `except` here). */
  private endElsewhere(clientId: string, code: string, message: string, except?: string): void {
    const room = this.io.to(clientRoom(clientId));
    const others = except === undefined ? room : room.except(except);
    others.emit('error', encodeMessage({ type: 'error', code, message }));
    others.disconnectSockets(true);
  }

  private end(socket: ClientSocket, code: string, message: string): void {
    if (!socket.connected) return;
    this.refuse(socket, code, message);
    socket.disconnect(true);
  }

  /** The coordinator is created after the gateway (it sends through it). */
  attach(coordinator: Coordinator): void {
    this.coordinator = coordinator;
  }

  /** Whether the client has a connection, here or on another replica (here only while Redis cannot answer). */
  async isConnected(clientId: string): Promise<boolean> {
    if (this.sockets.has(clientId) || !this.options.replicated) return this.sockets.has(clientId);
    const remote = await this.askReplicas(() => this.io.in(clientRoom(clientId)).fetchSockets());
    return (remote?.length ?? 0) > 0;
  }

  /** The clients with a connection, on every replica (this one's only while Redis cannot answer). */
  async connectedClients(): Promise<Set<string>> {
    const here = new Set(this.sockets.keys());
    if (!this.options.replicated) return here;
    const all = await this.askReplicas(() => this.io.fetchSockets());
    return all ? new Set(all.map((s) => (s.data as ClientSocketData).clientId)) : here;
  }

  /** A question to the other replicas through Redis; undefined (logged) when Redis cannot carry it. */
  private async askReplicas<T>(ask: () => Promise<T>): Promise<T | undefined> {
    try {
      return await ask();
    } catch (error) {
      this.log.warn(
        { err: error },
        'the other replicas could not be asked (Redis unreachable): answering for this one',
      );
      return undefined;
    }
  }

  /** Connections held by this process. */
  connectedCount(): number {
    return this.sockets.size;
  }

  send(clientId: string, message: RoundStart | RoundEnd): void {
    const socket = this.sockets.get(clientId);
    if (socket) this.emit(socket, message);
    else if (this.options.replicated) this.io.to(clientRoom(clientId)).emit(message.type, encodeMessage(message));
  }

  isLocal(clientId: string): boolean {
    return this.sockets.has(clientId);
  }

  private *localReady(): Generator<[string, RankPlan]> {
    for (const [clientId, socket] of this.sockets) {
      if (socket.data.greeted && socket.data.plan !== undefined) yield [clientId, socket.data.plan];
    }
  }

  async readyClients(): Promise<Map<string, RankPlan>> {
    const ready = new Map(this.localReady());
    if (!this.options.replicated) return ready;
    // The adapter times the ask out after 3 s, but not when Redis itself fails (its promise never
    // settles): a timer of our own bounds it, and the coordinator's lock with it.
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_resolve, reject) => {
      timer = setTimeout(() => reject(new Error('no answer within 4 s')), PRESENCE_TIMEOUT_MS);
    });
    try {
      const replies = (await Promise.race([this.io.serverSideEmitWithAck(PRESENCE_REQUEST), timeout])) as [
        string,
        RankPlan,
      ][][];
      for (const reply of replies) for (const [clientId, plan] of reply) ready.set(clientId, plan);
    } catch (error) {
      // a replica is dying, or Redis is unreachable: this round samples from this replica's clients
      this.log.warn({ err: error }, 'the other replicas did not tell their ready clients');
    } finally {
      clearTimeout(timer);
    }
    return ready;
  }

  /** Sent to every other replica; each decides whether it concerns it. */
  tellReplicas(event: ReplicaEvent): void {
    if (this.options.replicated) this.io.serverSideEmit(REPLICA_EVENT, event);
  }

  private emit(socket: ClientSocket, message: Message): void {
    (socket as unknown as Socket).emit(message.type, encodeMessage(message));
  }

  private refuse(socket: ClientSocket, code: string, message: string): void {
    this.metrics.refusedMessages.inc({ code });
    this.refusals.refused(socket.data.clientId, code, message);
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
    if (this.options.replicated) {
      this.endElsewhere(clientId, 'replaced', 'another connection of this client took over', socket.id);
    }
    void socket.join(clientRoom(clientId));
    this.sockets.set(clientId, socket);
    this.metrics.connectedClients.set(this.sockets.size);
    this.log.info({ clientId }, 'client connected');

    const helloTimer = setTimeout(() => {
      if (socket.data.greeted || !socket.connected) return;
      this.refuse(socket, 'hello_timeout', `no hello within ${this.options.helloTimeoutMs} ms`);
      socket.disconnect(true);
    }, this.options.helloTimeoutMs);
    // a credential is checked once, at the upgrade: an open connection ends when it expires
    const expiryTimer = setTimeout(
      () => this.end(socket, 'credential_expired', 'the credential expired: refresh it and reconnect'),
      Math.min(Math.max(0, socket.data.expiresAt - Date.now()), 2 ** 31 - 1),
    );
    socket.on('disconnect', () => {
      clearTimeout(helloTimer);
      clearTimeout(expiryTimer);
    });

    socket.onAny((event: unknown, payload: unknown) => {
      void this.handle(socket, event, payload);
    });
    socket.on('disconnect', (reason) => {
      if (this.sockets.get(clientId) === socket) this.sockets.delete(clientId);
      this.metrics.connectedClients.set(this.sockets.size);
      this.log.info({ clientId, reason }, 'client disconnected');
    });
  }

  /** `event` is whatever the client named it: socket.io also passes numbers through. */
  private async handle(socket: ClientSocket, event: unknown, payload: unknown): Promise<void> {
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
        socket.data.plan = hello.plan;
        this.emit(socket, {
          type: 'welcome',
          protocolVersion: PROTOCOL_VERSION,
          clientId,
          maxFrameBytes: this.options.maxFrameBytes,
        });
        await this.coordinator?.clientReady(clientId);
      } else if (event === 'update') {
        if (!socket.data.greeted) {
          this.refuse(socket, 'hello_first', 'send hello before anything else');
          return;
        }
        const update = decodeMessageOf(payload, 'update', {
          maxBytes: this.options.maxFrameBytes,
          requireFinite: false,
        });
        const ack = await this.coordinator?.receiveUpdate(clientId, payload as Uint8Array, update);
        if (ack) this.emit(socket, ack);
      } else {
        this.refuse(socket, 'unknown_event', `clients may send hello and update, not ${String(event).slice(0, 64)}`);
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

  /** Closes every connection and the socket.io server. */
  async close(): Promise<void> {
    clearInterval(this.sweeper);
    this.refusals.sweep();
    await this.io.close();
  }
}
