#!/usr/bin/env node
/**
 * floe-server [--host H] [--port P] [--data-dir DIR]
 *
 * Settings come from FLOE_* variables (see config.ts); the flags override them. The join and admin
 * tokens are required; with FLOE_DEV=1 missing tokens are generated and printed (local use only).
 */
import { randomBytes } from 'node:crypto';
import { parseArgs } from 'node:util';
import { FloeError } from '@floe/shared';
import { type FloeServer, startServer } from './app.js';
import { DEFAULT_CONFIG, ENV_NAMES, type ServerConfig, configFromEnv } from './config.js';
import { trustedProxy } from './transport/gateway.js';

function fail(message: string): never {
  console.error(`floe-server: ${message}`);
  process.exit(2);
}

const USAGE = [
  'usage: floe-server [--host H] [--port P] [--data-dir DIR]',
  '',
  'Settings come from these environment variables (defaults in brackets); the flags override the first three.',
  'The join and admin tokens are required; FLOE_DEV=1 generates and prints missing ones (local use only).',
  'FLOE_TRUST_PROXY is false, true or the trusted proxies (comma-separated addresses, CIDR ranges, loopback,',
  'linklocal, uniquelocal) whose X-Forwarded-For names the client; 0 turns FLOE_REQUEST_TIMEOUT_MS and',
  'FLOE_MAX_CONNECTIONS_PER_IP off. FLOE_DATABASE_URL (postgres://user:password@host:port/database) keeps the',
  'state in PostgreSQL instead of the SQLite file in FLOE_DATA_DIR; one server per database, unless FLOE_REDIS_URL',
  '(redis://host:port) names a Redis shared by replicas: then devices connect to any replica, one coordinates',
  'at a time and another takes over when it dies (docs/deployment.md).',
  '',
  ...Object.entries(ENV_NAMES).map(
    ([key, name]) => `  ${name.padEnd(34)} [${String(DEFAULT_CONFIG[key as keyof ServerConfig] ?? '')}]`,
  ),
].join('\n');

let values: { host?: string | undefined; port?: string | undefined; 'data-dir'?: string | undefined; help?: boolean };
try {
  ({ values } = parseArgs({
    options: {
      host: { type: 'string' },
      port: { type: 'string' },
      'data-dir': { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
  }));
} catch (error) {
  fail(`${error instanceof Error ? error.message : String(error)}\n${USAGE}`);
}
if (values.help) {
  console.log(USAGE);
  process.exit(0);
}

let config: ServerConfig;
try {
  config = configFromEnv({
    ...process.env,
    ...(values.host && { FLOE_HOST: values.host }),
    ...(values.port && { FLOE_PORT: values.port }),
    ...(values['data-dir'] && { FLOE_DATA_DIR: values['data-dir'] }),
  });
} catch (error) {
  fail(error instanceof Error ? error.message : String(error));
}
try {
  trustedProxy(config.trustProxy);
} catch (error) {
  fail(`FLOE_TRUST_PROXY: ${error instanceof Error ? error.message : String(error)}`);
}

const dev = process.env.FLOE_DEV === '1';
for (const key of ['joinToken', 'adminToken'] as const) {
  if (config[key]) continue;
  if (!dev) fail(`set FLOE_${key === 'joinToken' ? 'JOIN' : 'ADMIN'}_TOKEN (or FLOE_DEV=1 to generate one)`);
  config[key] = randomBytes(16).toString('hex');
  console.error(`floe-server (dev): ${key} = ${config[key]}`);
}

let server: FloeServer;
try {
  server = await startServer(config, {
    onFatal: (reason) => {
      console.error(`floe-server: ${reason}`);
      process.exitCode = 1;
    },
  });
} catch (error) {
  // a setting the process cannot work with (a database it cannot open, a bad certificate): one line, exit 1
  console.error(`floe-server: ${error instanceof FloeError ? error.message : String(error)}`);
  if (!(error instanceof FloeError)) console.error(error);
  process.exit(1);
}
server.app.log.info({ url: server.url, dataDir: config.dataDir }, 'floe server listening');

let stopping = false;
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.on(signal, () => {
    if (stopping) return;
    stopping = true;
    server.app.log.info({ signal }, 'shutting down');
    server.close().then(
      () => process.exit(0),
      (error: unknown) => {
        console.error(error);
        process.exit(1);
      },
    );
  });
}
