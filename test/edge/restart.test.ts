/**
 * A device killed mid-round comes back: `floe-edge join` runs as a child process, is killed with SIGKILL
 * while it trains, and is started again on the same home directory. It must rejoin under the identity it
 * kept (no second enrollment), take the open round up again, and the job must complete with every round
 * aggregated from both devices.
 */
import { type ChildProcessWithoutNullStreams, spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type Device, DeviceStore, calibrate, calibrationKey, startDevice } from '@floe/edge-client';
import { architectureOf, checkpointSha256, loadCheckpoint } from '@floe/model';
import type { JobSummary } from '@floe/shared';
import { federationPartition, writeDataDir } from '@floe/tasks';
import { ROOT, floeEdgeCommand, floeEdgeEnv } from './floe-edge.js';
import { JOIN_TOKEN, type TestServer, jobSpec, startTestServer, waitForJob } from '../server/helpers.js';

const MODEL = path.join(ROOT, 'models', 'edge-small');
const TARGET_MODULES = ['q_proj', 'v_proj'];
const SEQ_LEN = 128;
const THREADS = 1;

interface Child {
  process: ChildProcessWithoutNullStreams;
  output: string[];
  exited: Promise<number | null>;
}

function join(serverUrl: string, home: string, data: string): Child {
  const child = spawn(
    ...floeEdgeCommand([
      'join',
      '--server',
      serverUrl,
      '--join-token',
      JOIN_TOKEN,
      '--home',
      home,
      '--model',
      MODEL,
      '--data',
      data,
      '--tier',
      'phone-low',
      '--threads',
      String(THREADS),
      '--seq-len',
      String(SEQ_LEN),
      '--no-eval-rounds',
    ]),
    { env: floeEdgeEnv(), cwd: ROOT },
  );
  const output: string[] = [];
  const collect = (chunk: Buffer) => output.push(...chunk.toString().split('\n').filter(Boolean));
  child.stdout.on('data', collect);
  child.stderr.on('data', collect);
  return { process: child, output, exited: new Promise((resolve) => child.once('exit', resolve)) };
}

async function until(what: string, check: () => boolean, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

describe('a device killed with SIGKILL mid-round', () => {
  let server: TestServer;
  let dir: string;
  let peer: Device;
  let job: JobSummary;
  let clientIdBefore: string;
  let clientIdAfter: string;
  let acceptedWhenKilled: number;
  let firstRun: Child;
  let secondRun: Child;
  let secondExit: number | null;

  beforeAll(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'floe-restart-'));
    server = await startTestServer({ gatherMs: 60_000 });
    const [speech] = federationPartition('speech', { seed: 0, clients: 8, pretrainSeed: 0 }).clients;
    const arithmetic = federationPartition('arithmetic', { seed: 0, clients: 8, pretrainSeed: 0 }).clients[1];
    const dataOf = (id: string) => path.join(dir, id, 'data');
    writeDataDir(dataOf('peer'), speech!);
    writeDataDir(dataOf('killed'), arithmetic!);

    const { config } = await loadCheckpoint(MODEL);
    const sha256 = await checkpointSha256(MODEL);
    const cost = await calibrate({
      model: MODEL,
      config,
      seqLen: SEQ_LEN,
      targetModules: TARGET_MODULES,
      threads: THREADS,
      passes: 1,
      steps: 8,
    });
    // the child would measure itself for a minute; it finds this host's measurement in its store instead
    const killedHome = path.join(dir, 'killed', 'home');
    new DeviceStore(killedHome).cache(
      calibrationKey({ sha256, seqLen: SEQ_LEN, threads: THREADS, targetModules: TARGET_MODULES }),
      cost,
    );

    const created = await server.admin<JobSummary>(
      'POST',
      '/v1/jobs',
      jobSpec({
        name: 'restart',
        baseModel: { id: 'edge-small', sha256, architecture: architectureOf(config) },
        targetModules: TARGET_MODULES,
        strategy: 'flexlora',
        rounds: 2,
        clientsPerRound: 2,
        quorum: 2,
        roundDeadlineSec: 240,
        localSteps: 20,
        learningRate: 5e-4,
        batchSize: 8,
        maxRank: 4,
      }),
    );
    expect(created.status).toBe(201);

    peer = await startDevice({
      serverUrl: server.url,
      joinToken: JOIN_TOKEN,
      home: path.join(dir, 'peer', 'home'),
      model: MODEL,
      data: dataOf('peer'),
      job: created.body.id,
      calibration: cost,
      threads: THREADS,
      seqLen: SEQ_LEN,
      evaluateRounds: false,
    });

    firstRun = join(server.url, killedHome, dataOf('killed'));
    await until(
      'the child to start training round 0',
      () => firstRun.output.some((l) => /round 0: training/.test(l)),
      180_000,
    );
    firstRun.process.kill('SIGKILL');
    await firstRun.exited;
    acceptedWhenKilled = (await server.admin<JobSummary>('GET', `/v1/jobs/${created.body.id}`)).body.rounds[0]!
      .accepted;
    clientIdBefore = (JSON.parse(readFileSync(path.join(killedHome, 'identity.json'), 'utf8')) as { clientId: string })
      .clientId;

    secondRun = join(server.url, killedHome, dataOf('killed'));
    secondExit = await secondRun.exited;
    clientIdAfter = (JSON.parse(readFileSync(path.join(killedHome, 'identity.json'), 'utf8')) as { clientId: string })
      .clientId;
    await peer.finished;
    job = await waitForJob(server, created.body.id);
  }, 600_000);

  afterAll(async () => {
    for (const run of [firstRun, secondRun]) if (run?.process.exitCode === null) run.process.kill('SIGKILL');
    await peer?.stop();
    await server?.close();
    await rm(dir, { recursive: true, force: true });
  });

  it('was killed before its update reached the server', () => {
    expect(acceptedWhenKilled).toBeLessThan(2);
  });

  it('rejoins under the identity it kept, without enrolling again', async () => {
    expect(clientIdAfter).toBe(clientIdBefore);
    const clients = await server.admin<{ id: string }[]>('GET', '/v1/clients');
    expect(clients.body.map((c) => c.id).sort()).toEqual([clientIdBefore, peer.clientId].sort());
  });

  it('takes the open round up again, and the job completes with both devices in every round', () => {
    expect(secondRun.output.join('\n')).toMatch(/round 0: training/);
    expect(secondExit).toBe(0);
    expect(job.status).toBe('completed');
    expect(job.rounds.map((r) => [r.round, r.status, r.accepted])).toEqual([
      [0, 'aggregated', 2],
      [1, 'aggregated', 2],
    ]);
  });
});
