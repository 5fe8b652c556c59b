/** The simulation report's schema and the claims read from it, on reports built by hand. */
import { spawnSync } from 'node:child_process';
import { mkdtemp, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { isValid, parse } from '@floe/shared';
import { COMPARED, METHODS, type Method, SimulationReport, checkClaims, reportMarkdown } from '../src/index.js';

/**
 * A report where each method's mean is given; per-client figures equal the mean, and each compared
 * difference has an interval `halfWidth` either side of it.
 */
function report(
  means: Record<string, Partial<Record<Method, number>>>,
  extra: Partial<SimulationReport> = {},
  halfWidth = 0.01,
): SimulationReport {
  const tasks = Object.fromEntries(
    Object.entries(means).map(([task, given]) => {
      const meanOf = (m: Method) => given[m] ?? (task === 'speech' ? 2 : 0.5);
      return [
        task,
        {
          metric: task === 'speech' ? 'bits per byte' : 'accuracy',
          higherIsBetter: task !== 'speech',
          differences: Object.fromEntries(
            COMPARED.map(([a, b]) => {
              const d = meanOf(a) - meanOf(b);
              return [`${a}-${b}`, { mean: d, low: d - halfWidth, high: d + halfWidth }];
            }),
          ),
          methods: Object.fromEntries(
            METHODS.map((m) => [
              m,
              { mean: meanOf(m), perClient: { [`${task}-0`]: meanOf(m), [`${task}-1`]: meanOf(m) } },
            ]),
          ) as SimulationReport['tasks'][string]['methods'],
        },
      ];
    }),
  );
  return {
    config: { clientsPerTask: 2, rounds: 3 },
    machine: { cpu: 'test', cores: 2, memoryGiB: 24, node: 'v20' },
    tasks,
    clusteringAri: 1,
    rawBytesAtServer: 0,
    bytesPerClient: { 'email-0': { sent: 10, received: 20 } },
    roundSeconds: { floe: [1.5, 1.2] },
    ...extra,
  };
}

const good = {
  speech: { floe: 1.7, fedavg: 1.8, local: 1.75, cloud: 1.65, floe_fused: 1.6 },
  email: { floe: 0.93, fedavg: 0.9, local: 0.91 },
};

describe('simulation report', () => {
  it('validates a whole report and refuses one with a method missing or unknown', () => {
    const r = report(good);
    expect(isValid(SimulationReport, r)).toBe(true);
    const missing = structuredClone(r) as { tasks: Record<string, { methods: Record<string, unknown> }> };
    delete missing.tasks['email']!.methods['hetlora'];
    expect(() => parse(SimulationReport, missing, 'report')).toThrow(/hetlora/);
    const unknown = structuredClone(r) as { tasks: Record<string, { methods: Record<string, unknown> }> };
    unknown.tasks['email']!.methods['magic'] = { mean: 1, perClient: {} };
    expect(isValid(SimulationReport, unknown)).toBe(false);
    expect(isValid(SimulationReport, { ...r, rawBytesAtServer: -1 })).toBe(false);
  });

  it('holds every claim on a report that shows them, reading each metric in its direction', () => {
    const claims = checkClaims(report(good));
    expect(claims.map((c) => c.holds)).toEqual([true, true, true, true, true]);
    expect(claims[0]!.detail).toBe(
      'Floe 1.7000, FedAvg 1.8000, local 1.7500; Floe - FedAvg -0.1000 [-0.1100, -0.0900] (resolved), ' +
        'Floe - local -0.0500 [-0.0600, -0.0400] (resolved)',
    );
  });

  it('says when a difference is within the noise of the held-out items, whichever way the means go', () => {
    // Floe ahead of local by 0.005 on the mean, but the interval (+-0.02) holds 0
    const close = checkClaims(report({ ...good, email: { ...good.email, local: 0.925 } }, {}, 0.02));
    const email = close.find((c) => c.id === 'email:floe')!;
    expect(email.holds).toBe(true);
    expect(email.detail).toContain('Floe - local +0.0050 [-0.0150, +0.0250] (within noise)');
    expect(email.detail).toContain('Floe - FedAvg +0.0300 [+0.0100, +0.0500] (resolved)');
  });

  it('calls a failed claim refuted only when an interval it rests on lies wholly against it', () => {
    // local ahead of Floe by 0.02 on email accuracy; FedAvg ahead of Floe + fusion by 0.05 bits per byte
    const behind = { ...good, email: { ...good.email, local: 0.95 }, speech: { ...good.speech, fedavg: 1.65 } };
    const resolved = checkClaims(report(behind, {}, 0.01));
    expect(resolved.find((c) => c.id === 'email:floe')).toMatchObject({ holds: false, refuted: true });
    // lower is better: Floe's 1.7 against FedAvg's 1.65 is +0.05, resolved against Floe
    expect(resolved.find((c) => c.id === 'speech:floe')).toMatchObject({ holds: false, refuted: true });
    const noisy = checkClaims(report(behind, {}, 0.1));
    expect(noisy.find((c) => c.id === 'email:floe')).toMatchObject({ holds: false, refuted: false });
    expect(noisy.find((c) => c.id === 'speech:floe')).toMatchObject({ holds: false, refuted: false });
    // behind FedAvg within noise and ahead of local beyond it: it fails, and it is not refuted
    const close = checkClaims(report({ ...good, speech: { ...good.speech, fedavg: 1.695 } }, {}, 0.01));
    expect(close.find((c) => c.id === 'speech:floe')).toMatchObject({ holds: false, refuted: false });
    // a claim that holds on the means is never refuted, however wide its intervals
    expect(checkClaims(report(good, {}, 0.5)).every((c) => c.holds && !c.refuted)).toBe(true);
    const fusionBehind = checkClaims(report({ ...good, speech: { ...good.speech, cloud: 1.55 } }, {}, 0.01));
    expect(fusionBehind.find((c) => c.id === 'speech:fusion')).toMatchObject({ holds: false, refuted: true });
  });

  it('still validates and checks a report written before the intervals, on its means', () => {
    const old = report(good);
    for (const task of Object.values(old.tasks)) delete task.differences;
    expect(isValid(SimulationReport, old)).toBe(true);
    const claims = checkClaims(old);
    expect(claims.map((c) => c.holds)).toEqual([true, true, true, true, true]);
    expect(claims[0]!.detail).toContain('Floe - local: no interval');
    expect(reportMarkdown(old, claims, {})).toContain('## speech');
  });

  it('fails each claim the figures do not support', () => {
    // lower bits per byte is better: FedAvg at 1.65 beats Floe at 1.7
    const worse = checkClaims(report({ ...good, speech: { ...good.speech, fedavg: 1.65 } }));
    expect(worse.find((c) => c.claim.startsWith('speech: Floe beats'))!.holds).toBe(false);
    const noFusionGain = checkClaims(report({ ...good, speech: { ...good.speech, floe_fused: 1.66 } }));
    expect(noFusionGain.find((c) => c.claim.includes('fusion'))!.holds).toBe(false);
    const emailTie = checkClaims(report({ ...good, email: { ...good.email, local: 0.93 } }));
    expect(emailTie.find((c) => c.claim.startsWith('email'))!.holds).toBe(false);
    // the same four accuracies averaged in another order differ in the last bit: still a tie
    const accuracies = [0.9, 0.875, 0.85, 0.9];
    const [a, b] = [accuracies, [...accuracies].reverse()].map((xs) => xs.reduce((s, x) => s + x, 0) / xs.length);
    const floatTie = checkClaims(report({ ...good, email: { floe: a!, fedavg: 0.8, local: b! - 1e-15 } }));
    expect(floatTie.find((c) => c.claim.startsWith('email'))!.holds).toBe(false);
    const rest = checkClaims(report(good, { clusteringAri: 0.79, rawBytesAtServer: 16 }));
    expect(rest.filter((c) => !c.holds).map((c) => c.detail)).toEqual(['ARI 0.790', '16 bytes found']);
  });

  it('writes the claims first, a table per task with every method and client, and links the charts', () => {
    const r = report(good, { clusteringAri: 0.5 });
    const md = reportMarkdown(r, checkClaims(r), { 'Metric per round': 'charts/metric.svg' });
    expect(md.indexOf('## Claims')).toBeLessThan(md.indexOf('## speech'));
    expect(md).toContain('**does not hold**: clustering agrees with the true tasks');
    const speech = md.slice(md.indexOf('## speech'), md.indexOf('## email'));
    const [methodTable, differenceTable] = speech.split('Differences of the mean client figure') as [string, string];
    // Floe 1.7 against local 1.75, each difference with the interval the report holds
    expect(differenceTable).toMatch(/\| Floe - local-only LoRA +\| -0\.0500 \| \[-0\.0600, -0\.0400\] \|/);
    const rows = methodTable
      .split('\n')
      .filter((l) => l.startsWith('|'))
      .slice(2);
    expect(rows).toHaveLength(METHODS.length);
    // lower bits per byte is better: Floe + fusion's 1.600 is the one marked best
    expect(rows.find((l) => l.includes('Floe + fusion'))).toContain('**1.600**');
    expect(speech.split('\n')[2]).toContain('speech-1');
    expect(md).toContain('![Metric per round](charts/metric.svg)');
  });

  it('pnpm simulate check: exit 0 when the claims hold, 1 when one fails, and --require enforces only the named ones', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'floe-report-'));
    const write = async (name: string, r: SimulationReport) => {
      await writeFile(path.join(dir, name), JSON.stringify(r));
      return path.join(dir, name);
    };
    const check = (...args: string[]) =>
      spawnSync(
        process.execPath,
        ['--import', 'tsx', '--conditions=floe-source', 'packages/simulator/src/cli.ts', 'check', ...args],
        { cwd: path.join(import.meta.dirname, '..', '..', '..'), encoding: 'utf8', timeout: 60_000 },
      );
    const split = await write('split.json', report(good, { clusteringAri: 0.5 }));
    expect(checkClaims(report(good, { clusteringAri: 0.5 })).map((c) => c.id)).toEqual([
      'speech:floe',
      'email:floe',
      'speech:fusion',
      'clustering',
      'raw-data',
    ]);
    expect(check(await write('good.json', report(good))).status).toBe(0);
    const all = check(split);
    expect(all.status).toBe(1);
    expect(all.stdout).toMatch(/DOES NOT HOLD: \[clustering\]/);
    const some = check(split, '--require', 'raw-data,email:floe');
    expect(some.status).toBe(0);
    expect(some.stdout).toMatch(/DOES NOT HOLD: \[clustering\].*\(not required\)/);
    expect(
      check(await write('leak.json', report(good, { rawBytesAtServer: 16 })), '--require', 'raw-data').status,
    ).toBe(1);
    // a claim failing within noise passes --fail-refuted; a refuted one fails it, required or not
    const behind = { ...good, email: { ...good.email, local: 0.95 } };
    const noisy = await write('noisy.json', report(behind, {}, 0.1));
    expect(check(noisy, '--require', 'raw-data', '--fail-refuted').status).toBe(0);
    const refuted = check(
      await write('refuted.json', report(behind, {}, 0.01)),
      '--require',
      'raw-data',
      '--fail-refuted',
    );
    expect(refuted.status).toBe(1);
    expect(refuted.stdout).toMatch(/REFUTED: \[email:floe\]/);
    const wrong = check(split, '--require', 'raw-bytes');
    expect(wrong.status).toBe(2);
    expect(wrong.stderr).toMatch(/no claim raw-bytes.*raw-data/);
  });
});
