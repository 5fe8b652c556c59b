/**
 * A throwaway Redis from Debian's `redis-server` (package `redis-server`): in memory only (no RDB, no
 * AOF), on a free loopback port, for the replica tests, `pnpm chaos` and `pnpm bench scale`.
 */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { Redis } from 'ioredis';
import { freePort } from './free-port.js';

export function hasRedisServer(): boolean {
  return spawnSync('redis-server', ['--version'], { stdio: 'ignore' }).status === 0;
}

export interface LocalRedis {
  url: string;
  port: number;
  /** Freezes the server (SIGSTOP): connections stay open and nothing answers, as on a network cut. */
  pause(): void;
  resume(): void;
  stop(): Promise<void>;
}

/** A Redis on `port` (default: a free one); starting one again on a stopped one's port brings it back, empty. */
export async function startLocalRedis(port?: number): Promise<LocalRedis> {
  if (!hasRedisServer()) throw new Error('redis-server is not installed (apt-get install redis-server)');
  port ??= await freePort();
  const child: ChildProcess = spawn(
    'redis-server',
    ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--protected-mode', 'yes'],
    { stdio: 'ignore' },
  );
  const url = `redis://127.0.0.1:${port}`;
  const until = Date.now() + 10_000;
  for (;;) {
    const probe = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null });
    probe.on('error', () => undefined);
    const up = await probe
      .connect()
      .then(() => probe.ping())
      .then(
        () => true,
        () => false,
      );
    probe.disconnect();
    if (up) break;
    if (Date.now() > until || child.exitCode !== null) {
      child.kill('SIGKILL');
      throw new Error(`redis-server did not answer on port ${port}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  return {
    url,
    port,
    pause: () => child.kill('SIGSTOP'),
    resume: () => child.kill('SIGCONT'),
    stop: () =>
      new Promise((resolve) => {
        if (child.exitCode !== null) return resolve();
        child.once('exit', () => resolve());
        child.kill('SIGTERM');
      }),
  };
}
