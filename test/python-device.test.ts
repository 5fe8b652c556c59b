/**
 * A device in another language: examples/python-device (Debian's python3-socketio and python3-msgpack,
 * written from docs/protocol.md) completes a three-round job beside two TypeScript edge clients that
 * train for real, against the real server on loopback. CI installs the Debian packages; without them
 * this test fails there (elsewhere it is skipped, as the Chromium tests are).
 */
import { spawn, spawnSync } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type Device, type DeviceOutcome, type TrainingCost, calibrate, startDevice } from '@floe/edge-client';
import { architectureOf, checkpointSha256, loadCheckpoint } from '@floe/model';
import type { JobSummary } from '@floe/shared';
import { federationPartition, writeDataDir } from '@floe/tasks';
import { JOIN_TOKEN, type TestServer, jobSpec, startTestServer, waitForJob } from './server/helpers.js';

const ROOT = path.join(import.meta.dirname, '..');
const MODEL = path.join(ROOT, 'models', 'edge-tiny');
const DEVICE = path.join(ROOT, 'examples', 'python-device', 'device.py');
/** Debian's interpreter, where apt puts python3-socketio (a pyenv or venv python would not see it). */
const PYTHON = '/usr/bin/python3';
const TARGET_MODULES = ['q_proj', 'v_proj'];

/** Whether Debian's python3 has the packages (CI installs them: .ci/run). */
const PYTHON_READY = spawnSync(PYTHON, ['-c', 'import socketio, websocket, msgpack'], { stdio: 'ignore' }).status === 0;

// in CI the test runs (and fails without the packages); elsewhere it needs
// `apt-get install -y python3-socketio python3-websocket python3-msgpack`
describe.skipIf(!PYTHON_READY && !process.env['CI'])(
  'a Python device beside TypeScript edge clients',
  { timeout: 600_000 },
  () => {
    let server: TestServer;
    let dir: string;
    let job: JobSummary;
    let python: { code: number | null; stdout: string; stderr: string };
    const devices: Device[] = [];
    let outcomes: DeviceOutcome[];

    beforeAll(async () => {
      dir = await mkdtemp(path.join(os.tmpdir(), 'floe-python-'));
      server = await startTestServer({ gatherMs: 60_000 });
      const { config } = await loadCheckpoint(MODEL);
      const created = await server.admin<JobSummary>(
        'POST',
        '/v1/jobs',
        jobSpec({
          name: 'three-languages-of-one-protocol',
          baseModel: { id: 'edge-tiny', sha256: await checkpointSha256(MODEL), architecture: architectureOf(config) },
          targetModules: TARGET_MODULES,
          strategy: 'flexlora',
          rounds: 3,
          clientsPerRound: 3,
          quorum: 3,
          roundDeadlineSec: 120,
          localSteps: 4,
          batchSize: 4,
          maxRank: 8,
          alpha: 16,
        }),
      );
      expect(created.status).toBe(201);

      const pythonRun = new Promise<typeof python>((resolve) => {
        const child = spawn(PYTHON, [DEVICE, '--server', server.url, '--join-token', JOIN_TOKEN, '--rank', '4'], {
          env: { ...process.env, PYTHONUNBUFFERED: '1' },
        });
        let stdout = '';
        let stderr = '';
        child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
        child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
        child.on('error', (error) => resolve({ code: -1, stdout, stderr: `${stderr}${error.message}` }));
        child.on('close', (code) => resolve({ code, stdout, stderr }));
      });

      const cost: TrainingCost = await calibrate({
        model: MODEL,
        config,
        seqLen: 64,
        targetModules: TARGET_MODULES,
        passes: 1,
        steps: 4,
      });
      const clients = federationPartition('speech', { seed: 0, clients: 8, pretrainSeed: 0 }).clients.slice(0, 2);
      for (const data of clients) {
        const dataDir = path.join(dir, data.id, 'data');
        writeDataDir(dataDir, data);
        devices.push(
          await startDevice({
            serverUrl: server.url,
            joinToken: JOIN_TOKEN,
            home: path.join(dir, data.id, 'home'),
            model: MODEL,
            data: dataDir,
            tier: 'laptop',
            job: created.body.id,
            calibration: cost,
            threads: 1,
            seqLen: 64,
            evaluateRounds: false,
            evaluateAtEnd: false,
            personalize: false,
          }),
        );
      }
      [outcomes, python] = await Promise.all([Promise.all(devices.map((d) => d.finished)), pythonRun]);
      job = await waitForJob(server, created.body.id);
      console.log(python.stdout);
    }, 600_000);

    afterAll(async () => {
      await Promise.all(devices.map((d) => d.stop()));
      await server?.close();
      await rm(dir, { recursive: true, force: true });
    });

    it('completes three aggregated rounds with every update of all three devices', () => {
      expect(python.stderr).toBe('');
      expect(python.code).toBe(0);
      expect(job.status).toBe('completed');
      expect(job.rounds.map((r) => [r.status, r.accepted, r.rejected])).toEqual([
        ['aggregated', 3, 0],
        ['aggregated', 3, 0],
        ['aggregated', 3, 0],
      ]);
      for (const outcome of outcomes) expect(outcome.status).toBe('completed');
      expect(python.stdout.match(/update accepted/g)).toHaveLength(3);
      expect(python.stdout).toMatch(/round 2 aggregated \(3 updates\); job completed/);
      expect(python.stdout).toMatch(/job completed: 3 updates accepted, 3 round ends/);
    });

    it('uses no code of this project: only the standard library, socketio and msgpack', async () => {
      const { readFile } = await import('node:fs/promises');
      const source = await readFile(DEVICE, 'utf8');
      const imports = [...source.matchAll(/^(?:import|from) (\S+)/gm)].map((m) => m[1]!.split('.')[0]);
      const standard = ['argparse', 'json', 'math', 'random', 'struct', 'sys', 'threading', 'urllib', 'zlib'];
      expect(imports.filter((name) => !standard.includes(name!))).toEqual(['msgpack', 'socketio']);
    });
  },
);
