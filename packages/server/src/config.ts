/**
 * Server settings: defaults, overridden by FLOE_* environment variables, overridden by code (tests,
 * the simulator). Secrets have no default outside development: `main.ts` refuses to start without
 * them unless FLOE_DEV=1.
 */
import { readFileSync } from 'node:fs';

export interface ServerConfig {
  host: string;
  port: number;
  /** Directory of the embedded store; ':memory:' keeps nothing. Unused with `databaseUrl`. */
  dataDir: string;
  /**
   * A PostgreSQL database (postgres://user:password@host:port/database) to keep the server's state in
   * instead of the embedded SQLite file; empty for SQLite. Without `redisUrl`, one server per database.
   */
  databaseUrl: string;
  /**
   * A Redis (redis://[:password@]host:port[/db]) shared by several replicas of the server over one
   * PostgreSQL database: devices connect to any of them; one coordinates at a time. Empty: one server.
   */
  redisUrl: string;
  /** Devices present this to enroll. */
  joinToken: string;
  /** Admin endpoints take `Authorization: Bearer <adminToken>`. */
  adminToken: string;
  /** Signs client credentials; keep it across restarts or every client must enroll again. */
  credentialSecret: string;
  credentialTtlSec: number;
  /**
   * Largest message a device may send or receive. It bounds what one message costs the server (a 32 MiB
   * websocket message stalls the event loop ~200 ms while ws reassembles it); jobs whose adapters would
   * not fit are refused at creation.
   */
  maxFrameBytes: number;
  /** socket.io messages per client per window. */
  rateLimitMessages: number;
  rateWindowSec: number;
  /** HTTP requests per IP per minute (enrollment and admin API). */
  httpRateLimitPerMinute: number;
  gatherMs: number;
  restartGraceMs: number;
  /** A device connection that has not said hello within this time is closed. */
  helloTimeoutMs: number;
  /** Worker threads that aggregate rounds (off the event loop). */
  aggregationThreads: number;
  /**
   * An HTTP request whose headers and body have not all arrived within this time is answered 408 and
   * its connection closed (node's `requestTimeout`/`headersTimeout`); 0 turns the limit off.
   */
  requestTimeoutMs: number;
  /**
   * Open device connections (websockets, and upgrades being checked) per client address; 0: no cap.
   * Generous by default: devices behind one carrier-grade NAT share an address (and `pnpm bench server`
   * connects 200 from loopback).
   */
  maxConnectionsPerIp: number;
  /**
   * Which peers are trusted proxies, whose `X-Forwarded-For` names the client (fastify's `trustProxy`):
   * false, none (the client is the socket's peer); true, every peer and hop (the leftmost forwarded
   * address counts, right only behind a proxy that overwrites the header); or a comma-separated list of
   * proxy addresses, CIDR ranges and `loopback`/`linklocal`/`uniquelocal` (the nearest address not on
   * it counts). It decides the address of the HTTP rate limit and of the connection cap.
   */
  trustProxy: boolean | string;
  /** PEM certificate chain and key: set both and the server speaks HTTPS and WSS only. */
  tlsCert: string;
  tlsKey: string;
  logLevel: string;
}

export const DEFAULT_CONFIG: ServerConfig = {
  host: '127.0.0.1',
  port: 8080,
  dataDir: './data',
  databaseUrl: '',
  redisUrl: '',
  joinToken: '',
  adminToken: '',
  credentialSecret: '',
  credentialTtlSec: 30 * 24 * 3600,
  maxFrameBytes: 8 * 1024 * 1024,
  rateLimitMessages: 20,
  rateWindowSec: 10,
  httpRateLimitPerMinute: 600,
  gatherMs: 2000,
  restartGraceMs: 15_000,
  helloTimeoutMs: 10_000,
  aggregationThreads: 1,
  requestTimeoutMs: 10_000,
  maxConnectionsPerIp: 256,
  trustProxy: false,
  tlsCert: '',
  tlsKey: '',
  logLevel: 'info',
};

/** The environment variable of each setting. */
export const ENV_NAMES: Readonly<Record<keyof ServerConfig, string>> = {
  host: 'FLOE_HOST',
  port: 'FLOE_PORT',
  dataDir: 'FLOE_DATA_DIR',
  databaseUrl: 'FLOE_DATABASE_URL',
  redisUrl: 'FLOE_REDIS_URL',
  joinToken: 'FLOE_JOIN_TOKEN',
  adminToken: 'FLOE_ADMIN_TOKEN',
  credentialSecret: 'FLOE_CREDENTIAL_SECRET',
  credentialTtlSec: 'FLOE_CREDENTIAL_TTL_SEC',
  maxFrameBytes: 'FLOE_MAX_FRAME_BYTES',
  rateLimitMessages: 'FLOE_RATE_LIMIT_MESSAGES',
  rateWindowSec: 'FLOE_RATE_WINDOW_SEC',
  httpRateLimitPerMinute: 'FLOE_HTTP_RATE_LIMIT_PER_MINUTE',
  gatherMs: 'FLOE_GATHER_MS',
  restartGraceMs: 'FLOE_RESTART_GRACE_MS',
  helloTimeoutMs: 'FLOE_HELLO_TIMEOUT_MS',
  aggregationThreads: 'FLOE_AGGREGATION_THREADS',
  requestTimeoutMs: 'FLOE_REQUEST_TIMEOUT_MS',
  maxConnectionsPerIp: 'FLOE_MAX_CONNECTIONS_PER_IP',
  trustProxy: 'FLOE_TRUST_PROXY',
  tlsCert: 'FLOE_TLS_CERT',
  tlsKey: 'FLOE_TLS_KEY',
  logLevel: 'FLOE_LOG_LEVEL',
};

/**
 * DEFAULT_CONFIG with every FLOE_* variable set in `env` applied; numbers are checked. Each variable may
 * instead name a file as `<NAME>_FILE` (Docker and Kubernetes secrets): its content is the value.
 */
export function configFromEnv(env: NodeJS.ProcessEnv = process.env): ServerConfig {
  const config: ServerConfig = { ...DEFAULT_CONFIG };
  for (const [key, name] of Object.entries(ENV_NAMES) as [keyof ServerConfig, string][]) {
    const file = env[`${name}_FILE`];
    if (file && env[name]) throw new Error(`set ${name} or ${name}_FILE, not both`);
    const fromFile = file ? readSecret(`${name}_FILE`, file) : undefined;
    const raw = fromFile ?? env[name];
    if (raw === undefined || raw === '') continue;
    if (key === 'trustProxy') {
      config.trustProxy = parseTrustProxy(raw);
    } else if (typeof DEFAULT_CONFIG[key] === 'number') {
      const value = Number(raw);
      if (!Number.isFinite(value) || value < 0) throw new Error(`${name} must be a non-negative number, got "${raw}"`);
      (config as unknown as Record<string, number>)[key] = value;
    } else {
      (config as unknown as Record<string, string>)[key] = raw;
    }
  }
  return config;
}

function readSecret(variable: string, file: string): string {
  try {
    const content = readFileSync(file, 'utf8');
    // PEM keeps its newlines; a one-line secret loses the one an editor adds
    return content.includes('-----BEGIN') ? content : content.trim();
  } catch (error) {
    throw new Error(`${variable}: cannot read ${file} (${error instanceof Error ? error.message : String(error)})`);
  }
}

/** `true`, `false`, or the list of trusted proxies (checked when the server starts). */
function parseTrustProxy(raw: string): boolean | string {
  const value = raw.trim();
  if (/^true$/i.test(value)) return true;
  if (/^false$/i.test(value)) return false;
  return value;
}
