/**
 * The main job end to end on a small scenario: the cloud stand-in and the coordination server as real
 * processes on loopback, four clients in worker threads (one a straggler, one that dies mid-round and
 * restarts), every method scored on every client, and the report checked for what the run must show.
 */
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  COMPARED,
  DEFAULT_SCENARIO,
  METHODS,
  type Scenario,
  type SimulationResult,
  runSimulation,
} from '../src/index.js';

const ROOT = path.join(import.meta.dirname, '..', '..', '..');

const SCENARIO: Scenario = {
  ...DEFAULT_SCENARIO,
  tasks: ['email', 'arithmetic'],
  clientsPerTask: 2,
  rounds: 2,
  localSteps: 4,
  stragglers: 0.25,
  stragglerSlowdown: 2,
  dropouts: 0.25,
  mix: 0.5,
  roundDeadlineSec: 120,
  heldOutExamples: 10,
  edgeModel: path.join(ROOT, 'models', 'edge-small'),
  cloudModel: path.join(ROOT, 'models', 'cloud'),
};

describe('runSimulation on a small scenario', () => {
  let workDir: string;
  let result: SimulationResult;
  const lines: string[] = [];

  beforeAll(async () => {
    workDir = await mkdtemp(path.join(os.tmpdir(), 'floe-simulation-'));
    result = await runSimulation(SCENARIO, {
      workDir,
      observer: { phase: () => undefined, step: () => undefined, line: (text) => lines.push(text) },
    });
  }, 600_000);
  afterAll(async () => rm(workDir, { recursive: true, force: true }));

  it('scores every method on every client of every task', () => {
    const { report } = result;
    expect(Object.keys(report.tasks)).toEqual(['email', 'arithmetic']);
    for (const task of SCENARIO.tasks) {
      const methods = report.tasks[task]!.methods;
      expect(Object.keys(methods).sort()).toEqual([...METHODS].sort());
      for (const method of METHODS) {
        expect(Object.keys(methods[method].perClient).sort(), `${task} ${method}`).toEqual([`${task}-0`, `${task}-1`]);
        // accuracies and exact matches over 10 examples: multiples of a tenth
        for (const value of Object.values(methods[method].perClient))
          expect(Math.round(value * 10)).toBeCloseTo(value * 10, 9);
      }
    }
  });

  it('gives each compared pair the difference of its means, inside an interval from the same items', () => {
    for (const task of SCENARIO.tasks) {
      const { methods, differences = {} } = result.report.tasks[task]!;
      for (const [a, b] of COMPARED) {
        const d = differences[`${a}-${b}`]!;
        // each figure is a client's share of 10 examples: the bootstrap draws can only move it in tenths
        expect(d.mean, `${task} ${a}-${b}`).toBeCloseTo(methods[a].mean - methods[b].mean, 9);
        expect(d.low).toBeLessThanOrEqual(d.mean + 1e-9);
        expect(d.high).toBeGreaterThanOrEqual(d.mean - 1e-9);
        expect(Math.round(d.low * 20)).toBeCloseTo(d.low * 20, 9);
      }
    }
  });

  it('runs every round of every federated job with every device, the dropout and the straggler included', () => {
    const { jobs } = result.report;
    expect(Object.keys(jobs)).toEqual(['fedavg', 'hetlora', 'floe']);
    for (const rounds of Object.values(jobs)) {
      expect(rounds.map((r) => [r.status, r.accepted])).toEqual([
        ['aggregated', 4],
        ['aggregated', 4],
      ]);
    }
    expect(result.report.roundSeconds['floe']).toHaveLength(2);
    // the server's clustering figures of each Floe round, and none of the clients' claims
    for (const r of jobs['floe']!)
      expect(Object.keys(r.metrics)).toEqual(expect.arrayContaining(['silhouette', 'subsplits']));
    for (const r of jobs['floe']!) expect(Object.keys(r.metrics).some((m) => m.startsWith('client.'))).toBe(false);
    const { clients } = result.report;
    expect(Object.values(clients).filter((c) => c.straggler)).toHaveLength(1);
    expect(Object.values(clients).filter((c) => c.diesInRound === 0)).toHaveLength(1);
  });

  it('finds no raw data in any frame the devices sent, and counts their traffic', () => {
    const { report } = result;
    const { inspection } = report;
    // each job: a hello and two updates per device, and the dropout's second hello
    expect(inspection.frames).toBeGreaterThanOrEqual(3 * (4 * 3 + 1));
    expect(report.rawBytesAtServer).toBe(0);
    for (const bytes of Object.values(report.bytesPerClient)) {
      expect(bytes.sent).toBeGreaterThan(1000);
      expect(bytes.received).toBeGreaterThan(1000);
    }
    expect(report.heldOutCheck).toEqual({ checked: 2 * 40 + 2 * 100, leaks: 0 });
  });

  it('draws every chart from the run', () => {
    expect(Object.keys(result.charts).sort()).toEqual([
      'bytes-per-client',
      'cluster-assignment',
      'differences',
      'metric-per-round',
      'per-client',
      'round-times',
    ]);
    expect(lines.some((l) => /^floe round 2\/2: aggregated, 4\/4 updates/.test(l))).toBe(true);
    expect(result.claims.map((c) => c.claim)).toContain('no raw data reached the server');
  });
});

describe('runSimulation when a child process dies', () => {
  it('ends with the reason as soon as the coordination server is killed, and leaves no process behind', async () => {
    const workDir = await mkdtemp(path.join(os.tmpdir(), 'floe-simulation-'));
    const children = () =>
      spawnSync('pgrep', ['-P', String(process.pid), '-f', 'src/main.ts'], { encoding: 'utf8' })
        .stdout.split('\n')
        .filter(Boolean)
        .map(Number);
    const serverPid = () =>
      children().find((pid) => readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes('server/src/main.ts'));
    let killedAt = 0;
    try {
      const run = runSimulation(
        { ...SCENARIO, stragglers: 0, dropouts: 0, localSteps: 40, roundDeadlineSec: 600 },
        {
          workDir,
          observer: {
            phase: () => undefined,
            step: () => undefined,
            // in the middle of the job's second round (40 steps each): the devices are training
            line: (text) => {
              if (!text.startsWith('fedavg round 1/') || killedAt > 0) return;
              const pid = serverPid();
              if (pid === undefined) throw new Error('no server child found');
              killedAt = performance.now();
              process.kill(pid, 'SIGKILL');
            },
          },
        },
      );
      await expect(run).rejects.toThrow(/coordination server exited \(SIGKILL\) during the run/);
      // not at the round deadline (600 s), where a job waited for devices that could no longer report
      expect(killedAt).toBeGreaterThan(0);
      expect((performance.now() - killedAt) / 1000).toBeLessThan(60);
      expect(children()).toEqual([]);
    } finally {
      await rm(workDir, { recursive: true, force: true });
    }
  }, 600_000);
});
