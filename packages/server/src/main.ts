#!/usr/bin/env node
/**
 * floe-server [--host H] [--port P] [--data-dir DIR]
 *
 * Settings come from FLOE_* variables (see config.ts); the flags override them. The join and admin
 * tokens are required; with FLOE_DEV=1 missing tokens are generated and printed (local use only).
 */
import { randomBytes } from 'node:crypto';
import { parseArgs } from 'node:util';
import { startServer } from './app.js';
import { configFromEnv } from './config.js';

const { values } = parseArgs({
  options: {
    host: { type: 'string' },
    port: { type: 'string' },
    'data-dir': { type: 'string' },
  },
});

const config = configFromEnv();
if (values.host) config.host = values.host;
if (values.port) config.port = Number(values.port);
if (values['data-dir']) config.dataDir = values['data-dir'];

const dev = process.env.FLOE_DEV === '1';
for (const key of ['joinToken', 'adminToken'] as const) {
  if (config[key]) continue;
  if (!dev) {
    console.error(
      `floe-server: set FLOE_${key === 'joinToken' ? 'JOIN' : 'ADMIN'}_TOKEN (or FLOE_DEV=1 to generate one)`,
    );
    process.exit(2);
  }
  config[key] = randomBytes(16).toString('hex');
  console.error(`floe-server (dev): ${key} = ${config[key]}`);
}

const server = await startServer(config);
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
