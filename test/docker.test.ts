/**
 * No Docker engine runs on the build machines, so each image's build stage is replayed outside
 * Docker: the files its COPY lines name are copied into an empty directory, its pnpm steps run there
 * (install, compile, deploy), and the deployed tree is started as the image's CMD starts it, then asked
 * for /healthz. A workspace package an image needs but its Dockerfile forgets fails here. The compose
 * file is checked by docker-compose's own parser.
 */
import { execFile, spawn } from 'node:child_process';
import { cpSync, existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, describe, expect, it } from 'vitest';

const ROOT = path.join(import.meta.dirname, '..');
const run = promisify(execFile);

/** The instructions of a Dockerfile, continuation lines joined, split at each FROM. */
function stages(dockerfile: string): string[][] {
  const lines = readFileSync(path.join(ROOT, 'docker', dockerfile), 'utf8')
    .replace(/\\\n/g, ' ')
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l && !l.startsWith('#'));
  const froms = lines.flatMap((l, i) => (l.startsWith('FROM ') ? [i] : []));
  return froms.map((from, k) => lines.slice(from + 1, froms[k + 1]));
}

/** Workspace packages a package needs, transitively. */
function workspaceDeps(root: string): string[] {
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
  visit(root);
  return [...seen, root].sort();
}

function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const server = createServer().listen(0, '127.0.0.1', () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolve(port));
    });
  });
}

const IMAGES = [
  {
    dockerfile: 'server.Dockerfile',
    pkg: 'server',
    env: (port: number, work: string) => ({
      FLOE_HOST: '127.0.0.1',
      FLOE_PORT: String(port),
      FLOE_DATA_DIR: path.join(work, 'data'),
      FLOE_JOIN_TOKEN: 'join-token-for-the-image-test',
      FLOE_ADMIN_TOKEN: 'admin-token-for-the-image-test',
      FLOE_LOG_LEVEL: 'error',
    }),
  },
  {
    dockerfile: 'cloud-llm.Dockerfile',
    pkg: 'cloud-llm',
    env: (port: number) => ({
      FLOE_CLOUD_HOST: '127.0.0.1',
      FLOE_CLOUD_PORT: String(port),
      FLOE_CLOUD_MODEL: path.join(ROOT, 'models', 'cloud'),
      FLOE_CLOUD_LOG_LEVEL: 'error',
    }),
  },
];

describe('docker/compose.yml', () => {
  it('parses with docker-compose and builds each service from a Dockerfile here', async () => {
    const { stdout } = await run('docker-compose', ['-f', path.join(ROOT, 'docker', 'compose.yml'), 'config'], {
      env: { ...process.env, FLOE_JOIN_TOKEN: 'j', FLOE_ADMIN_TOKEN: 'a', FLOE_CLOUD_API_KEYS: 'k' },
    });
    const dockerfiles = [...stdout.matchAll(/dockerfile: (\S+)/g)].map((m) => path.basename(m[1]!));
    expect(dockerfiles.sort()).toEqual(IMAGES.map((i) => i.dockerfile).sort());
  });
});

describe.each(IMAGES)('docker/$dockerfile', ({ dockerfile, pkg, env }) => {
  const buildStage = () => stages(dockerfile)[0]!;
  const work = mkdtempSync(path.join(os.tmpdir(), 'floe-image-'));
  afterAll(() => rmSync(work, { recursive: true, force: true }));

  it('copies every workspace package it depends on, and the runtime files it names exist', () => {
    const sources = buildStage()
      .filter((l) => l.startsWith('COPY '))
      .flatMap((l) => l.split(/\s+/).slice(1, -1));
    const missing = workspaceDeps(pkg).filter(
      (dep) => !sources.some((s) => s === 'packages' || s === `packages/${dep}`),
    );
    expect(missing).toEqual([]);
    const runtimeSources = stages(dockerfile)[1]!
      .filter((l) => l.startsWith('COPY ') && !l.includes('--from='))
      .flatMap((l) =>
        l
          .split(/\s+/)
          .filter((w) => !w.startsWith('--'))
          .slice(1, -1),
      );
    for (const source of runtimeSources) expect(existsSync(path.join(ROOT, source)), source).toBe(true);
  });

  it('builds outside Docker as its build stage says, and the deployed tree answers /healthz', async () => {
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
      env: { PATH: process.env['PATH'], NODE_ENV: 'production', ...env(port, work) },
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let stderr = '';
    server.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    try {
      await expect
        .poll(
          async () => {
            if (server.exitCode !== null) throw new Error(`the deployed ${pkg} exited: ${stderr}`);
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
