#!/usr/bin/env node
/**
 * floe-server-healthcheck: exits 0 when the server configured by the same FLOE_* variables (or their
 * `_FILE` forms) answers /healthz with 200 within FLOE_HEALTHCHECK_TIMEOUT_MS, 1 otherwise. The image's
 * HEALTHCHECK runs it, so the check follows the server onto HTTPS when a certificate is configured.
 */
import { request as httpRequest } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { configFromEnv } from './config.js';

/** The address to probe for a listening address: a wildcard one is reached on loopback. */
function probeHost(host: string): string {
  if (host === '0.0.0.0' || host === '') return '127.0.0.1';
  if (host === '::' || host === '[::]') return '::1';
  return host;
}

async function checkHealth(env: NodeJS.ProcessEnv, timeoutMs: number): Promise<number> {
  const config = configFromEnv(env);
  const tls = config.tlsCert !== '';
  const options = {
    host: probeHost(config.host),
    port: config.port,
    path: '/healthz',
    timeout: timeoutMs,
    // a liveness probe from inside the container: it sends no secret, and the certificate names the
    // public host, not loopback, so the peer's identity is not what it checks
    ...(tls ? { rejectUnauthorized: false } : {}),
  };
  return new Promise<number>((resolve, reject) => {
    const req = (tls ? httpsRequest : httpRequest)(options, (response) => {
      response.resume();
      resolve(response.statusCode ?? 0);
    });
    req.on('timeout', () => req.destroy(new Error(`no answer within ${timeoutMs} ms`)));
    req.on('error', reject);
    req.end();
  });
}

const timeoutMs = Number(process.env.FLOE_HEALTHCHECK_TIMEOUT_MS ?? 2500);
checkHealth(process.env, Number.isFinite(timeoutMs) && timeoutMs > 0 ? timeoutMs : 2500).then(
  (status) => {
    if (status !== 200) console.error(`floe-server-healthcheck: /healthz answered ${status}`);
    process.exit(status === 200 ? 0 : 1);
  },
  (error: unknown) => {
    console.error(`floe-server-healthcheck: ${error instanceof Error ? error.message : String(error)}`);
    process.exit(1);
  },
);
