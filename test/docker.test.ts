/**
 * No Docker engine runs on the build machines, so the server image's build stage is replayed outside
 * Docker: the files its COPY lines name are copied into an empty directory, its pnpm steps run there
 * (install, compile, deploy), and the deployed tree is started as the image's CMD starts it, then asked
 * for /healthz. A workspace package the server needs but the Dockerfile forgets fails here.
 */
import { execFile, spawn } from 'node:child_process';
import { cpSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, describe, expect, it } from 'vitest';

const ROOT = path.join(import.meta.dirname, '..');
const DOCKERFILE = path.join(ROOT, 'docker', 'server.Dockerfile');
const run = promisify(execFile);

/** The build stage's instructions (up to the second FROM), continuation lines joined. */
function buildStage(): string[] {
  const lines = readFileSync(DOCKERFILE, 'utf8')
    .replace(/\\\n/g, ' ')
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l && !l.startsWith('#'));
  const froms = lines.flatMap((l, i) => (l.startsWith('FROM ') ? [i] : []));
  return lines.slice(froms[0]! + 1, froms[1]);
}

/** Workspace packages @floe/server needs, transitively. */
function serverWorkspaceDeps(): string[] {
  const seen = new Set<string>();
  const visit = (dir: string) => {
    const pkg = JSON.parse(readFileSync(path.join(ROOT, 'packages', dir, 'package.json'), 'utf8')) as {
      dependencies?: Record<string, string>;
    };
    for (const [name, range] of Object.entries(pkg.dependencies ?? {})) {
      if (!range.startsWith('workspace:')) continue;
      const dep = name.replace('@floe/', '');
      if (!seen.has(dep)) {
        seen.add(dep);
        visit(dep);
      }
    }
  };
  visit('server');
  return [...seen, 'server'].sort();
}

function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const server = createServer().listen(0, '127.0.0.1', () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolve(port));
    });
  });
}

describe('docker/server.Dockerfile', () => {
  const work = mkdtempSync(path.join(os.tmpdir(), 'floe-image-'));
  afterAll(() => rmSync(work, { recursive: true, force: true }));

  it('copies every workspace package the server depends on', () => {
    const sources = buildStage()
      .filter((l) => l.startsWith('COPY '))
      .flatMap((l) => l.split(/\s+/).slice(1, -1));
    const missing = serverWorkspaceDeps().filter(
      (dep) => !sources.some((s) => s === 'packages' || s === `packages/${dep}`),
    );
    expect(missing).toEqual([]);
  });

  it('builds outside Docker as its build stage says, and the deployed server answers /healthz', async () => {
    const context = path.join(work, 'src');
    const out = path.join(work, 'out');
    for (const line of buildStage().filter((l) => l.startsWith('COPY '))) {
      const [, ...parts] = line.split(/\s+/);
      const destination = parts.pop()!;
      for (const source of parts) {
        cpSync(path.join(ROOT, source), path.join(context, destination.endsWith('/') ? source : destination), {
          recursive: true,
          filter: (file) => !/[/\\](node_modules|dist)([/\\]|$)|tsbuildinfo$/.test(file),
        });
      }
    }
    const steps = buildStage()
      .filter((l) => l.startsWith('RUN pnpm '))
      .map((l) => l.slice('RUN '.length).replace(' /out', ` ${out}`));
    expect(steps.length).toBeGreaterThanOrEqual(3);
    for (const step of steps) {
      await run('bash', ['-c', step], { cwd: context, env: { ...process.env, CI: '1' }, maxBuffer: 64 << 20 });
    }

    const port = await freePort();
    const server = spawn(process.execPath, ['dist/main.js'], {
      cwd: out,
      env: {
        PATH: process.env['PATH'],
        NODE_ENV: 'production',
        FLOE_HOST: '127.0.0.1',
        FLOE_PORT: String(port),
        FLOE_DATA_DIR: path.join(work, 'data'),
        FLOE_JOIN_TOKEN: 'join-token-for-the-image-test',
        FLOE_ADMIN_TOKEN: 'admin-token-for-the-image-test',
        FLOE_LOG_LEVEL: 'error',
      },
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let stderr = '';
    server.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    try {
      await expect
        .poll(
          async () => {
            if (server.exitCode !== null) throw new Error(`the deployed server exited: ${stderr}`);
            return fetch(`http://127.0.0.1:${port}/healthz`).then(
              (r) => r.status,
              () => 0,
            );
          },
          { timeout: 30_000, interval: 250 },
        )
        .toBe(200);
    } finally {
      server.kill('SIGTERM');
    }
  }, 600_000);
});
