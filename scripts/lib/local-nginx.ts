/**
 * docker/nginx-replicas.conf run by Debian's nginx on loopback, in front of server replicas on local
 * ports: the deployment's load balancer, tried outside Docker (the replica tests).
 */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { freePort } from './free-port.js';

const CONFIG = fileURLToPath(new URL('../../docker/nginx-replicas.conf', import.meta.url));

export function hasNginx(): boolean {
  return spawnSync('nginx', ['-v'], { stdio: 'ignore' }).status === 0;
}

export interface LocalNginx {
  url: string;
  stop(): Promise<void>;
}

/** The compose file's nginx, its `server-N:8080` upstreams pointed at `backends` (host:port, in order). */
export async function startLocalNginx(backends: string[]): Promise<LocalNginx> {
  const port = await freePort();
  let config = readFileSync(CONFIG, 'utf8').replace('listen 8080;', `listen 127.0.0.1:${port};`);
  backends.forEach((backend, i) => (config = config.replace(`server-${i + 1}:8080`, backend)));
  if (/server-\d+:8080/.test(config)) throw new Error('nginx-replicas.conf names more replicas than were given');
  const prefix = mkdtempSync(path.join(os.tmpdir(), 'floe-nginx-'));
  mkdirSync(path.join(prefix, 'logs'));
  writeFileSync(path.join(prefix, 'nginx.conf'), config);
  const child: ChildProcess = spawn(
    'nginx',
    [
      '-p',
      prefix,
      '-c',
      path.join(prefix, 'nginx.conf'),
      '-e',
      path.join(prefix, 'logs', 'error.log'),
      '-g',
      `pid ${path.join(prefix, 'nginx.pid')}; daemon off;`,
    ],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  let stderr = '';
  child.stderr?.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const until = Date.now() + 10_000;
  for (;;) {
    const up = await new Promise<boolean>((resolve) => {
      const socket = connect({ host: '127.0.0.1', port }, () => {
        socket.destroy();
        resolve(true);
      });
      socket.on('error', () => resolve(false));
    });
    if (up) break;
    if (child.exitCode !== null || Date.now() > until) {
      child.kill('SIGKILL');
      rmSync(prefix, { recursive: true, force: true });
      throw new Error(`nginx did not start: ${stderr}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  return {
    url: `http://127.0.0.1:${port}`,
    stop: () =>
      new Promise((resolve) => {
        const done = () => {
          rmSync(prefix, { recursive: true, force: true });
          resolve();
        };
        if (child.exitCode !== null) return done();
        child.once('exit', done);
        child.kill('SIGTERM');
      }),
  };
}
