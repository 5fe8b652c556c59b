/**
 * A device in a federation: enrolls once (the identity is kept in the device store), connects, says
 * hello with its profile and plan, and answers every `round_start` with its participant's update, one
 * round at a time. The link reconnects by itself; an update whose ack was lost is sent again until the
 * round's deadline (the server answers a copy it already holds with `duplicate_update`, taken as
 * accepted). A device restarted mid-round gets its `round_start` again when it says hello and trains
 * that round anew. Nothing the server sends ends the process: refusals and notices become events.
 */
import { EventEmitter } from 'node:events';
import {
  type DeviceProfile,
  type ErrorMessage,
  type RankPlan,
  type RoundEnd,
  type RoundStart,
  type UpdateAck,
  encodeMessage,
} from '@floe/shared';
import {
  ConnectionError,
  ServerConnection,
  credentialTimes,
  enroll,
  pastHalfLife,
  refreshCredential,
} from './connection.js';
import { FederationError } from './errors.js';
import type { DeviceStore } from './device-store.js';
import type { RoundParticipant, UpdateBody } from './participant.js';

export interface FederationClientOptions {
  serverUrl: string;
  /** Needed only to enroll (first run, or after the server forgot this device). */
  joinToken?: string | undefined;
  store: DeviceStore;
  profile: DeviceProfile;
  plan: RankPlan;
  participant: RoundParticipant;
  /** Longest pause between reconnection attempts, ms. */
  maxReconnectDelayMs?: number;
  /** Sees every frame the device sends, as it leaves. */
  onFrameSent?: (event: string, frame: Uint8Array) => void;
}

export interface RoundSent {
  start: RoundStart;
  update: UpdateBody;
  reply: UpdateAck | ErrorMessage;
  /** Bytes of the round_start received and of the update sent. */
  bytesDown: number;
  bytesUp: number;
}

export interface FederationClientEvents {
  connected: [{ clientId: string; enrolled: boolean }];
  round_start: [RoundStart];
  round_sent: [RoundSent];
  round_failed: [{ start: RoundStart; error: Error }];
  round_end: [RoundEnd];
  job_end: [RoundEnd];
  server_error: [ErrorMessage];
  disconnect: [string];
  reconnect: [];
}

/** Refusals of a credential itself (`GET /v1/me` codes): refreshing it again cannot help. */
const CREDENTIAL_REFUSALS = new Set(['bad_credential', 'unknown_client', 'revoked', 'credential_expired']);

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** The identity kept in `store` for `serverUrl`, or a new one from enrollment with `joinToken`. */
export async function ensureIdentity(
  store: DeviceStore,
  serverUrl: string,
  joinToken: string | undefined,
  profile: DeviceProfile,
): Promise<{ credential: string; clientId: string; enrolled: boolean }> {
  const known = store.identity(serverUrl);
  if (known && pastHalfLife(known.credential)) {
    // short-lived credentials: a device trades one past half its life for a fresh one when it starts
    const credential = await refreshCredential(serverUrl, known.credential).catch(() => known.credential);
    if (credential !== known.credential) store.saveIdentity({ ...known, credential });
    return { credential, clientId: known.clientId, enrolled: false };
  }
  if (known) return { credential: known.credential, clientId: known.clientId, enrolled: false };
  if (!joinToken) {
    throw new FederationError('not_enrolled', `this device is not enrolled at ${serverUrl}: give a join token`);
  }
  const { clientId, credential } = await enroll(serverUrl, joinToken, profile);
  store.saveIdentity({ serverUrl, clientId, credential });
  return { credential, clientId, enrolled: true };
}

export class FederationClient extends EventEmitter<FederationClientEvents> {
  private connection: ServerConnection | undefined;
  private queue: Promise<void> = Promise.resolve();
  private readonly aborts = new Map<string, AbortController>();
  private stopped = false;
  private refreshTimer: NodeJS.Timeout | undefined;
  clientId = '';

  constructor(readonly options: FederationClientOptions) {
    super();
  }

  /** The identity kept in the store, or a new one from enrollment. */
  private identity(): Promise<{ credential: string; enrolled: boolean }> {
    const { store, serverUrl, joinToken, profile } = this.options;
    return ensureIdentity(store, serverUrl, joinToken, profile);
  }

  /** Connects (waiting for the server as long as it takes) and starts answering rounds. */
  async start(): Promise<void> {
    let { credential, enrolled } = await this.identity();
    const open = (token: string) =>
      ServerConnection.open(this.options.serverUrl, token, {
        profile: this.options.profile,
        plan: this.options.plan,
        timeoutMs: 0,
        reconnect: true,
        maxReconnectDelayMs: this.options.maxReconnectDelayMs ?? 10_000,
        ...(this.options.onFrameSent ? { onFrameSent: this.options.onFrameSent } : {}),
      });
    let connection: ServerConnection;
    try {
      connection = await open(credential);
    } catch (error) {
      // a server that lost its data (or rotated its secret) no longer knows this device: enroll again
      const refused = error instanceof ConnectionError && ['bad_credential', 'unknown_client'].includes(error.code);
      if (!refused || enrolled || !this.options.joinToken) throw error;
      this.options.store.forgetIdentity();
      ({ credential, enrolled } = await this.identity());
      connection = await open(credential);
    }
    this.connection = connection;
    this.clientId = connection.clientId ?? '';
    connection.on('round_start', (start) => this.onRoundStart(connection, start));
    connection.on('round_end', (end) => this.onRoundEnd(end));
    connection.on('server_error', (error) => this.emit('server_error', error));
    connection.on('disconnect', (reason) => this.emit('disconnect', reason));
    connection.on('reconnect', () => this.emit('reconnect'));
    this.emit('connected', { clientId: this.clientId, enrolled });
    this.scheduleRefresh(credential, false);
  }

  /**
   * Short-lived credentials on a long-lived link: near half its life the credential is traded for a fresh
   * one, kept in the store and presented from the next connection on; the server ends the link when the
   * old one expires and it reopens at once with the new one. A fresh credential's refresh is timed from
   * its receipt (40-50% of its lifetime, jittered off the server's expiry timers), not by comparing the
   * server's timestamps with this device's clock, so a skewed clock neither loops nor misses it.
   */
  private scheduleRefresh(credential: string, fresh: boolean, retryMs = 5_000): void {
    const times = credentialTimes(credential);
    if (!times || this.stopped) return;
    const lifetime = times.expiresAt - times.issuedAt;
    const delay = fresh
      ? lifetime * (0.4 + 0.1 * Math.random())
      : Math.min(Math.max(0, (times.issuedAt + times.expiresAt) / 2 - Date.now()), lifetime / 2);
    this.refreshTimer = setTimeout(
      () => {
        const { store, serverUrl } = this.options;
        refreshCredential(serverUrl, credential).then(
          (next) => {
            if (this.stopped) return;
            const known = store.identity(serverUrl);
            if (known) store.saveIdentity({ ...known, credential: next });
            this.connection?.useCredential(next);
            this.scheduleRefresh(next, true);
          },
          (error: unknown) => {
            // refused (revoked, expired): the server says so on the link; anything else: try again, backing off
            const refused = error instanceof ConnectionError && CREDENTIAL_REFUSALS.has(error.code);
            if (refused || this.stopped) return;
            this.refreshTimer = setTimeout(
              () => this.scheduleRefresh(credential, false, Math.min(retryMs * 2, 600_000)),
              retryMs,
            );
            this.refreshTimer.unref();
          },
        );
      },
      Math.min(delay, 2 ** 31 - 1),
    );
    this.refreshTimer.unref();
  }

  get traffic(): ServerConnection['traffic'] | undefined {
    return this.connection?.traffic;
  }

  private onRoundStart(connection: ServerConnection, start: RoundStart): void {
    const key = `${start.jobId}:${start.round}`;
    if (this.aborts.has(key)) return; // already training this round (a re-sent round_start)
    const abort = new AbortController();
    this.aborts.set(key, abort);
    const bytesDown = encodeMessage(start).byteLength;
    this.queue = this.queue.then(async () => {
      try {
        if (abort.signal.aborted || Date.now() > start.deadline) return;
        this.emit('round_start', start);
        const update = await this.options.participant.onRound(start, abort.signal);
        const bytesUp = encodeMessage({ type: 'update', ...update }).byteLength;
        const reply = await this.deliver(connection, update, start.deadline);
        if (reply.type === 'update_ack' && (reply.accepted || reply.error?.code === 'duplicate_update')) {
          this.options.store.updateJob(start.jobId, { lastRound: start.round, clusterId: start.clusterId });
        }
        this.emit('round_sent', { start, update, reply, bytesDown, bytesUp });
      } catch (error) {
        this.emit('round_failed', { start, error: error instanceof Error ? error : new Error(String(error)) });
      } finally {
        this.aborts.delete(key);
      }
    });
  }

  /** Sends an update until the server answers it or the round's deadline passes. */
  private async deliver(
    connection: ServerConnection,
    update: UpdateBody,
    deadline: number,
  ): Promise<UpdateAck | ErrorMessage> {
    for (let attempt = 0; ; attempt++) {
      if (this.stopped) throw new FederationError('stopped', 'the client was stopped');
      if (!connection.connected) {
        if (Date.now() > deadline) throw new FederationError('deadline', 'the link was down until the round deadline');
        await sleep(Math.min(2000, 100 * 2 ** attempt));
        continue;
      }
      try {
        const reply = await connection.sendUpdate(update, Math.max(1000, Math.min(30_000, deadline - Date.now())));
        if (reply.type === 'error' && reply.code === 'rate_limited' && Date.now() < deadline) {
          await sleep(1000 + Math.random() * 1000);
          continue;
        }
        if (reply.type === 'error' && reply.code === 'credential_expired' && Date.now() < deadline) {
          // the link is ending at its credential's expiry and reopens with a fresh one: send again then
          await sleep(200);
          continue;
        }
        return reply;
      } catch (error) {
        if (!(error instanceof ConnectionError) || Date.now() > deadline) throw error;
      }
    }
  }

  private onRoundEnd(end: RoundEnd): void {
    this.options.store.updateJob(end.jobId, { clusterId: end.clusterId, status: end.jobStatus });
    if (end.jobStatus !== 'running') {
      for (const [key, abort] of this.aborts) if (key.startsWith(`${end.jobId}:`)) abort.abort();
    }
    this.emit('round_end', end);
    if (end.jobStatus !== 'running') {
      // after any round still being sent
      void this.queue.then(() => this.emit('job_end', end));
    }
  }

  /** Resolves with the `round_end` that ends `jobId` (any job when absent). */
  jobEnd(jobId?: string): Promise<RoundEnd> {
    return new Promise((resolve) => {
      const listener = (end: RoundEnd) => {
        if (jobId !== undefined && end.jobId !== jobId) return;
        this.off('job_end', listener);
        resolve(end);
      };
      this.on('job_end', listener);
    });
  }

  /** The credential, for REST calls on behalf of this device (adapter downloads). */
  credential(): string {
    const identity = this.options.store.identity(this.options.serverUrl);
    if (!identity) throw new FederationError('not_enrolled', 'no identity');
    return identity.credential;
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.refreshTimer);
    for (const abort of this.aborts.values()) abort.abort();
    this.connection?.close();
    await this.queue;
  }
}
