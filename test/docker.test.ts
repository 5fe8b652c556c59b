/**
 * No Docker engine runs on the build machines, so docker/Dockerfile is replayed outside Docker: the files
 * its build stage copies go into an empty directory, its pnpm steps run there (fetch, offline install of
 * the whole workspace, compile, deploy), and each image's deployed tree is started as its CMD says, with
 * its ENV, as an unprivileged user when the test runs as root, and with the application files read-only.
 * The server's tree then runs a federated round (the aggregation worker and ONNX Runtime inside it) and
 * answers its own HEALTHCHECK over HTTP and HTTPS; the cloud's tree answers a completion. The compose file
 * is checked by docker-compose's own parser.
 */
import { type ChildProcess, type StdioOptions, execFile, execFileSync, spawn, spawnSync } from 'node:child_process';
import { chmodSync, chownSync, cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { JobSummary } from '@floe/shared';
import {
  ADMIN_TOKEN,
  JOIN_TOKEN,
  type TestServer,
  adminClient,
  jobSpec,
  startDevices,
  waitForJob,
} from './server/helpers.js';

const ROOT = path.join(import.meta.dirname, '..');
/**
 * The Node.js that builds and runs the images' trees: FLOE_IMAGE_NODE names the image's own Node line
 * (.ci/run takes it from npm's node-linux-* package, headers included, so native addons compile for it);
 * unset, the Node running this test.
 */
const IMAGE_NODE = process.env['FLOE_IMAGE_NODE'] ?? process.execPath;
const imageNodeEnv = (env: NodeJS.ProcessEnv): NodeJS.ProcessEnv =>
  process.env['FLOE_IMAGE_NODE']
    ? {
        ...env,
        PATH: `${path.dirname(IMAGE_NODE)}${path.delimiter}${env['PATH'] ?? ''}`,
        npm_config_nodedir: path.join(path.dirname(IMAGE_NODE), '..'),
      }
    : env;
const DOCKERFILE = path.join(ROOT, 'docker', 'Dockerfile');
const run = promisify(execFile);

interface Stage {
  name: string;
  args: Map<string, string>;
  lines: string[];
}

/** ARGs declared before the first FROM: Docker lets only FROM lines (and a stage's bare `ARG NAME`) see them. */
function globalArgs(): Map<string, string> {
  const global = new Map<string, string>();
  for (const line of readFileSync(DOCKERFILE, 'utf8').split('\n')) {
    if (line.startsWith('FROM ')) break;
    const arg = /^ARG (\w+)=(\S+)$/.exec(line.trim());
    if (arg) global.set(arg[1]!, arg[2]!);
  }
  return global;
}

/** Each stage of the Dockerfile: its instructions (continuation lines joined) and the ARGs it sees. */
function parseDockerfile(): Stage[] {
  const lines = readFileSync(DOCKERFILE, 'utf8')
    .replace(/\\\n/g, ' ')
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l && !l.startsWith('#'));
  const global = globalArgs();
  const stages: Stage[] = [];
  for (const line of lines) {
    const arg = /^ARG (\w+)(?:=(\S+))?$/.exec(line);
    const from = /^FROM \S+(?: AS (\S+))?$/.exec(line);
    if (from) stages.push({ name: from[1] ?? String(stages.length), args: new Map(), lines: [] });
    else if (arg && stages.length > 0) stages.at(-1)!.args.set(arg[1]!, arg[2] ?? global.get(arg[1]!) ?? '');
    else if (!arg) stages.at(-1)?.lines.push(line);
  }
  return stages;
}

function stage(name: string): Stage {
  const found = parseDockerfile().find((s) => s.name === name);
  if (!found) throw new Error(`docker/Dockerfile has no stage ${name}`);
  return found;
}

/** `${NAME}` replaced by the ARG values a stage sees. */
const expand = (line: string, args: Map<string, string>) =>
  line.replace(/\$\{(\w+)\}/g, (_, name: string) => args.get(name) ?? `\${${name}}`);

/** The exec-form (JSON array) argument of an instruction such as CMD or HEALTHCHECK ... CMD. */
function execForm(s: Stage, instruction: RegExp): string[] {
  const line = s.lines.find((l) => instruction.test(l));
  if (!line) throw new Error(`stage ${s.name} has no ${instruction.source}`);
  return JSON.parse(line.slice(line.indexOf('['))) as string[];
}

function env(s: Stage): Record<string, string> {
  const out: Record<string, string> = {};
  for (const line of s.lines.filter((l) => l.startsWith('ENV '))) {
    for (const [, key, value] of line.matchAll(/(\w+)=(\S+)/g)) out[key!] = value!;
  }
  return out;
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

/** End of security support of each Node.js LTS line (nodejs.org/en/about/previous-releases). */
const NODE_LTS_END: Record<number, string> = { 22: '2027-04-30', 24: '2028-04-30', 26: '2029-04-30' };

const IMAGES = [
  { target: 'server', service: 'server', pkg: 'server' },
  { target: 'cloud-llm', service: 'cloud', pkg: 'cloud-llm' },
];

describe('docker/compose.yml', () => {
  it('parses with docker-compose and builds each service from a stage of docker/Dockerfile', async () => {
    const { stdout } = await run('docker-compose', ['-f', path.join(ROOT, 'docker', 'compose.yml'), 'config'], {
      env: { ...process.env, FLOE_JOIN_TOKEN: 'j', FLOE_ADMIN_TOKEN: 'a', FLOE_CLOUD_API_KEYS: 'k' },
    });
    const builds = [...stdout.matchAll(/dockerfile: (\S+)\n\s+target: (\S+)/g)].map((m) => [
      path.basename(m[1]!),
      m[2],
    ]);
    expect(builds.sort()).toEqual(IMAGES.map((i) => ['Dockerfile', i.target]).sort());
    for (const { target } of IMAGES) expect(() => stage(target)).not.toThrow();
  });
});

describe('docker/compose.postgres.yml', () => {
  it('puts the server on a PostgreSQL service it waits for', async () => {
    const files = ['compose.yml', 'compose.postgres.yml'].flatMap((f) => ['-f', path.join(ROOT, 'docker', f)]);
    const env = { ...process.env, FLOE_JOIN_TOKEN: 'j', FLOE_ADMIN_TOKEN: 'a', FLOE_CLOUD_API_KEYS: 'k' };
    await expect(run('docker-compose', [...files, 'config'], { env })).rejects.toThrow(/FLOE_POSTGRES_PASSWORD/);
    const { stdout } = await run('docker-compose', [...files, 'config'], {
      env: { ...env, FLOE_POSTGRES_PASSWORD: 'secret1' },
    });
    const from = stdout.slice(stdout.indexOf('\n  server:') + 1);
    const server = from.slice(0, from.slice(1).search(/\n {0,2}\S/) + 1);
    expect(server).toContain('FLOE_DATABASE_URL: postgres://floe:secret1@postgres:5432/floe');
    expect(server).toMatch(/depends_on:\s+postgres:\s+condition: service_healthy/);
    expect(stdout).toMatch(/\n {2}postgres:\n[\s\S]*POSTGRES_PASSWORD: secret1/);
  });
});

describe('docker/compose.replicas.yml', () => {
  it('puts two server replicas over one PostgreSQL and one Redis behind nginx, with its config mounted', async () => {
    const file = ['-f', path.join(ROOT, 'docker', 'compose.replicas.yml')];
    const env = { ...process.env, FLOE_JOIN_TOKEN: 'j', FLOE_ADMIN_TOKEN: 'a' };
    await expect(run('docker-compose', [...file, 'config'], { env })).rejects.toThrow(/FLOE_POSTGRES_PASSWORD/);
    const { stdout } = await run('docker-compose', [...file, 'config'], {
      env: { ...env, FLOE_POSTGRES_PASSWORD: 'secret2' },
    });
    const service = (name: string) => {
      const from = stdout.slice(stdout.indexOf(`\n  ${name}:`) + 1);
      return from.slice(0, from.slice(1).search(/\n {0,2}\S/) + 1);
    };
    for (const name of ['server-1', 'server-2']) {
      const server = service(name);
      expect(server).toContain('FLOE_DATABASE_URL: postgres://floe:secret2@postgres:5432/floe');
      expect(server).toContain('FLOE_REDIS_URL: redis://redis:6379');
      expect(server).toContain('target: server');
      expect(server).toMatch(
        /depends_on:\s+postgres:\s+condition: service_healthy\s+redis:\s+condition: service_healthy/,
      );
    }
    const balancer = service('balancer');
    expect(balancer).toMatch(/nginx-replicas\.conf:\/etc\/nginx\/nginx\.conf:ro/);
    expect(balancer).toMatch(/target: 8080/);
    // the balancer's upstreams are exactly the compose file's replicas (test/replicas runs it in front of two)
    const upstreams = [
      ...readFileSync(path.join(ROOT, 'docker', 'nginx-replicas.conf'), 'utf8').matchAll(/server (server-\d+):8080/g),
    ];
    expect(upstreams.map((m) => m[1])).toEqual(['server-1', 'server-2']);
    expect(service('redis')).toContain('redis-server');
  });
});

describe('docker/Dockerfile', () => {
  it('builds on a Node.js LTS line still supported, with an exact pnpm 10', () => {
    const build = stage('build');
    const image = globalArgs().get('NODE_IMAGE') ?? '';
    const major = Number(/^node:(\d+)[-.]/.exec(image)?.[1]);
    if (process.env['FLOE_IMAGE_NODE']) {
      const version = execFileSync(IMAGE_NODE, ['--version'], { encoding: 'utf8' });
      expect(version, "FLOE_IMAGE_NODE is not the image's Node line").toMatch(new RegExp(`^v${major}\\.`));
    }
    expect(NODE_LTS_END[major], `${image} is not a Node.js LTS line`).toBeDefined();
    expect(new Date(NODE_LTS_END[major]!).getTime(), `${image} is past its end of life`).toBeGreaterThan(Date.now());
    for (const name of IMAGES.map((i) => i.target)) expect(parseDockerfile().some((s) => s.name === name)).toBe(true);
    expect(build.args.get('PNPM_VERSION')).toMatch(/^10\.\d+\.\d+$/);
    expect(
      build.lines.some((l) => expand(l, build.args) === `RUN npm install -g pnpm@${build.args.get('PNPM_VERSION')}`),
    ).toBe(true);
  });

  it('copies every workspace package an image depends on, and the runtime files it names exist', () => {
    const sources = stage('build')
      .lines.filter((l) => l.startsWith('COPY '))
      .flatMap((l) => l.split(/\s+/).slice(1, -1));
    for (const { pkg, target } of IMAGES) {
      const missing = workspaceDeps(pkg).filter(
        (dep) => !sources.some((s) => s === 'packages' || s === `packages/${dep}`),
      );
      expect(missing, target).toEqual([]);
      const runtimeSources = stage(target)
        .lines.filter((l) => l.startsWith('COPY ') && !l.includes('--from='))
        .flatMap((l) =>
          l
            .split(/\s+/)
            .filter((w) => !w.startsWith('--'))
            .slice(1, -1),
        );
      for (const source of runtimeSources) expect(existsSync(path.join(ROOT, source)), source).toBe(true);
    }
  });
});

describe('docker/Dockerfile replayed outside Docker', () => {
  const work = mkdtempSync(path.join(os.tmpdir(), 'floe-image-'));
  const out = path.join(work, 'out');
  const rootfs = path.join(work, 'rootfs');
  const children: ChildProcess[] = [];
  // root replays the image's USER with nobody's ids; anyone else runs as themselves
  const nobody = process.getuid?.() === 0 ? { uid: 65534, gid: 65534 } : undefined;
  afterAll(() => {
    for (const child of children) child.kill('SIGKILL');
    rmSync(work, { recursive: true, force: true });
  });

  /** Copies `COPY` sources from the repository: `into(destination)` says where the destination lands. */
  const copy = (line: string, into: (destination: string, source: string) => string) => {
    const [, ...parts] = line.split(/\s+/);
    const destination = parts.pop()!;
    for (const source of parts) {
      cpSync(path.join(ROOT, source), into(destination, source), {
        recursive: true,
        filter: (file) => !/[/\\](node_modules|dist)([/\\]|$)|tsbuildinfo$/.test(file),
      });
    }
  };

  beforeAll(async () => {
    chmodSync(work, 0o755); // nobody must reach the trees (mkdtemp makes 0700)
    const build = stage('build');
    const context = path.join(work, 'src');
    // in the Dockerfile's order (pnpm fetch sees the lockfile alone); every RUN but the toolchain's setup
    let steps = 0;
    for (const line of build.lines) {
      if (line.startsWith('COPY ')) {
        copy(line, (destination, source) =>
          path.join(context, destination.endsWith('/') || destination === '.' ? source : destination),
        );
      } else if (line.startsWith('RUN ') && !/^RUN (apt-get|npm install -g)/.test(line)) {
        const step = expand(line.slice('RUN '.length), build.args).replace(/(^| )\/out\//g, `$1${out}/`);
        await run('bash', ['-c', step], {
          cwd: context,
          env: imageNodeEnv({ ...process.env, CI: '1' }),
          maxBuffer: 64 << 20,
        });
        steps++;
      }
    }
    expect(steps).toBeGreaterThanOrEqual(5);
    // what the runtime stages copy from the repository (the cloud checkpoint) lands under rootfs
    for (const { target } of IMAGES) {
      for (const line of stage(target).lines.filter((l) => l.startsWith('COPY ') && !l.includes('--from='))) {
        copy(line, (destination) => path.join(rootfs, destination));
      }
    }
  }, 900_000);

  /** Runs an image's exec-form instruction (CMD, HEALTHCHECK) as the image would: in its tree, with its ENV over `overrides`, as its USER. */
  function spawnInstruction(
    target: string,
    instruction: RegExp,
    overrides: Record<string, string>,
    stdio: StdioOptions,
  ): { command: string; child: ChildProcess } {
    const s = stage(target);
    const [command, ...args] = execForm(s, instruction);
    const child = spawn(command === 'node' ? IMAGE_NODE : command!, args, {
      cwd: path.join(out, target),
      env: { PATH: process.env['PATH'], ...env(s), ...overrides },
      stdio,
      ...nobody,
    });
    return { command: command!, child };
  }

  /** Starts an image's CMD, resolved once /healthz is 200. */
  async function start(target: string, overrides: Record<string, string>, scheme = 'http'): Promise<ChildProcess> {
    const { command, child } = spawnInstruction(target, /^CMD /, overrides, ['ignore', 'ignore', 'pipe']);
    children.push(child);
    let stderr = '';
    child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    child.once('error', (error) => (stderr += `cannot start ${command}: ${error.message}`));
    const port = overrides['FLOE_PORT'] ?? overrides['FLOE_CLOUD_PORT'];
    await expect
      .poll(
        async () => {
          if (child.exitCode !== null || stderr.startsWith('cannot start'))
            throw new Error(`the deployed ${target} exited: ${stderr}`);
          // over HTTPS the image's own HEALTHCHECK probes (its certificate is self-signed)
          if (scheme === 'https') return (await healthcheck(target, overrides)) === 0 ? 200 : 0;
          return fetch(`http://127.0.0.1:${port}/healthz`).then(
            (r) => r.status,
            () => 0,
          );
        },
        { timeout: 30_000, interval: 250 },
      )
      .toBe(200);
    return child;
  }

  /** The image's HEALTHCHECK command: its exit code. */
  async function healthcheck(target: string, overrides: Record<string, string>): Promise<number> {
    return new Promise((resolve) => {
      const { child } = spawnInstruction(target, /^HEALTHCHECK .*CMD \[/, overrides, 'ignore');
      child.once('error', () => resolve(-1));
      child.on('exit', (code) => resolve(code ?? -1));
    });
  }

  it('server: runs a federated round as nobody on read-only files, and answers its HEALTHCHECK', async () => {
    if (nobody) {
      // the tree belongs to root, as the image's does: its USER cannot change it
      const probe = spawnSync(IMAGE_NODE, ['-e', "require('node:fs').writeFileSync('dist/probe.js', '')"], {
        cwd: path.join(out, 'server'),
        ...nobody,
      });
      expect(probe.stderr.toString()).toContain('EACCES');
    }
    const data = path.join(work, 'data');
    mkdirSync(data);
    if (nobody) chownSync(data, nobody.uid, nobody.gid);
    const port = await freePort();
    const settings = {
      FLOE_HOST: '127.0.0.1',
      FLOE_PORT: String(port),
      FLOE_DATA_DIR: data,
      FLOE_JOIN_TOKEN: JOIN_TOKEN,
      FLOE_ADMIN_TOKEN: ADMIN_TOKEN,
      FLOE_LOG_LEVEL: 'error',
    };
    const server = await start('server', settings);
    expect(await healthcheck('server', settings)).toBe(0);

    // two devices, one round: the aggregation runs in the tree's worker thread with its ONNX Runtime
    const url = `http://127.0.0.1:${port}`;
    const test = { url, admin: adminClient(url) } as TestServer;
    const created = await test.admin<JobSummary>(
      'POST',
      '/v1/jobs',
      jobSpec({ rounds: 1, clientsPerRound: 2, quorum: 2 }),
    );
    expect(created.status).toBe(201);
    const devices = await startDevices(url, 2, (i) => ({
      plan: { rank: 2 + 2 * i, targetModules: ['q_proj', 'v_proj'] },
      distribution: { seed: 3, scale: 0.05, noise: 0.5 },
      clientSeed: i,
    }));
    try {
      const job = await waitForJob(test, created.body.id);
      expect(job.status).toBe('completed');
      expect(job.rounds.map((r) => [r.status, r.accepted])).toEqual([['aggregated', 2]]);
    } finally {
      for (const device of devices) device.stop();
    }

    server.kill('SIGTERM');
    await new Promise((resolve) => server.once('exit', resolve));
    expect(await healthcheck('server', settings)).toBe(1);
  }, 120_000);

  it('server: the HEALTHCHECK follows it onto HTTPS (certificate and key as _FILE secrets)', async () => {
    const tls = path.join(work, 'tls');
    mkdirSync(tls);
    execFileSync(
      'openssl',
      [
        'req',
        '-x509',
        '-newkey',
        'ec',
        '-pkeyopt',
        'ec_paramgen_curve:P-256',
        '-nodes',
        '-keyout',
        'key.pem',
        '-out',
        'cert.pem',
        '-days',
        '1',
        '-subj',
        '/CN=floe.example',
      ],
      { cwd: tls, stdio: 'pipe' },
    );
    execFileSync('chmod', ['a+r', path.join(tls, 'key.pem')]);
    const data = path.join(work, 'data-tls');
    mkdirSync(data);
    if (nobody) chownSync(data, nobody.uid, nobody.gid);
    const settings = {
      FLOE_HOST: '127.0.0.1',
      FLOE_PORT: String(await freePort()),
      FLOE_DATA_DIR: data,
      FLOE_JOIN_TOKEN: JOIN_TOKEN,
      FLOE_ADMIN_TOKEN: ADMIN_TOKEN,
      FLOE_LOG_LEVEL: 'error',
      FLOE_TLS_CERT_FILE: path.join(tls, 'cert.pem'),
      FLOE_TLS_KEY_FILE: path.join(tls, 'key.pem'),
    };
    const server = await start('server', settings, 'https');
    expect(await healthcheck('server', settings)).toBe(0);
    // the same probe in plain HTTP fails against a TLS listener
    const { FLOE_TLS_CERT_FILE: _cert, FLOE_TLS_KEY_FILE: _key, ...plain } = settings;
    expect(await healthcheck('server', plain)).toBe(1);
    server.kill('SIGTERM');
  }, 60_000);

  it('cloud-llm: answers a completion from the committed checkpoint, and its HEALTHCHECK', async () => {
    const port = await freePort();
    const settings = {
      FLOE_CLOUD_HOST: '127.0.0.1',
      FLOE_CLOUD_PORT: String(port),
      FLOE_CLOUD_MODEL: path.join(rootfs, env(stage('cloud-llm'))['FLOE_CLOUD_MODEL'] ?? ''),
      FLOE_CLOUD_API_KEYS: 'key-for-the-image-test',
      FLOE_CLOUD_LOG_LEVEL: 'error',
    };
    const cloud = await start('cloud-llm', settings);
    expect(await healthcheck('cloud-llm', settings)).toBe(0);
    const response = await fetch(`http://127.0.0.1:${port}/v1/completions`, {
      method: 'POST',
      headers: { authorization: 'Bearer key-for-the-image-test', 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'floe-cloud', prompt: 'The weather', max_tokens: 4, temperature: 0 }),
    });
    const body = (await response.json()) as { usage?: { completion_tokens: number } };
    expect(response.status, JSON.stringify(body)).toBe(200);
    expect(body.usage?.completion_tokens).toBe(4);
    cloud.kill('SIGTERM');
  }, 60_000);
});
