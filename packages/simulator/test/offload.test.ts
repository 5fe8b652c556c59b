/**
 * The offload scenario end to end at a small size (the real edge model, the cloud stand-in as a process
 * on loopback, real RL steps): the report validates, every budget is kept, and its figures agree with
 * each other. The orderings issue 19 asks for are the scenario's claims, not this test's.
 */
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { parse } from '@floe/shared';
import { DEFAULT_OFFLOAD, OffloadReport, offloadClaims, runOffload } from '../src/index.js';

const ROOT = path.join(import.meta.dirname, '..', '..', '..');

describe('the offload scenario', () => {
  it(
    'writes a valid report whose methods keep every budget and whose figures agree',
    { timeout: 300_000 },
    async () => {
      const lines: string[] = [];
      const scenario = {
        ...DEFAULT_OFFLOAD,
        trainProblems: 120,
        evalProblems: 60,
        taskTuningSteps: 20,
        rlSteps: 3,
        promptsPerStep: 8,
        edgeModel: path.join(ROOT, 'models', 'edge-small'),
        cloudModel: path.join(ROOT, 'models', 'cloud'),
      };
      const report = parse(OffloadReport, await runOffload(scenario, { line: (l) => lines.push(l) }), 'report');
      expect(report.problems).toEqual({ train: 120, heldOut: 60, overlap: 0 });
      expect(lines.some((l) => /gapg step 3\/3: reward/.test(l))).toBe(true);
      expect(report.gapgTrace).toHaveLength(3);
      expect(report.grpoCallRatioTrace).toEqual(report.grpoTrace.map((s) => s.callRatio));

      const n = report.problems.heldOut;
      for (const point of report.curve) {
        if (point.method === 'cloud') expect(point.callRatio).toBe(1);
        else expect(point.callRatio).toBeLessThanOrEqual(Math.floor(point.budget * n + 1e-9) / n);
        if (point.method === 'random') expect(point.callRatio).toBe(Math.floor(point.budget * n + 1e-9) / n);
      }
      expect(new Set(report.curve.map((p) => p.budget))).toEqual(new Set(scenario.curve));
      // the 30% figures are the curve's figures at 30%
      for (const method of ['gapg', 'router', 'random', 'grpo'] as const) {
        const point = report.curve.find((p) => p.budget === 0.3 && p.method === method)!;
        expect(report.budget30.systemAccuracy[method]).toBe(point.accuracy);
        expect(report.budget30.callRatio[method]).toBe(point.callRatio);
        expect(report.budget30.intervals.accuracy[method]!.mean).toBe(point.accuracy);
      }
      // offloading can only help where the cloud is right: no method beats local answers plus every cloud answer
      const { systemAccuracy } = report.budget30;
      expect(systemAccuracy.random).toBeLessThanOrEqual(systemAccuracy.taskTuned + systemAccuracy.cloud);
      expect(report.cloudCalls.failures).toBe(0);
      expect(report.cloudCalls.prompts).toBeGreaterThanOrEqual(n);
      // each difference is the difference of the two accuracies, inside its interval
      const { difference } = report.budget30.intervals;
      expect(Object.keys(difference).sort()).toEqual(
        ['gapg-grpo', 'gapg-random', 'gapg-router', 'random-taskTuned', 'router-random'].sort(),
      );
      for (const [pair, d] of Object.entries(difference)) {
        const [a, b] = pair.split('-') as [keyof typeof systemAccuracy, keyof typeof systemAccuracy];
        expect(d.mean).toBeCloseTo(systemAccuracy[a] - systemAccuracy[b], 9);
        expect(d.low).toBeLessThanOrEqual(d.mean);
        expect(d.high).toBeGreaterThanOrEqual(d.mean);
      }
      // the per-kind table adds up to the report's own figures
      const kinds = report.byKind!;
      const weighted = (pick: (k: (typeof kinds)[number]) => number) =>
        kinds.reduce((sum, k) => sum + pick(k) * k.problems, 0) / n;
      expect(kinds.reduce((sum, k) => sum + k.problems, 0)).toBe(n);
      expect(kinds.every((k) => /^[+*-][123]$/.test(k.kind))).toBe(true);
      expect(weighted((k) => k.taskTuned)).toBeCloseTo(systemAccuracy.taskTuned, 9);
      expect(weighted((k) => k.cloud)).toBeCloseTo(systemAccuracy.cloud, 9);
      for (const method of ['gapg', 'router', 'random', 'grpo'] as const) {
        expect(weighted((k) => k.offloaded[method]!)).toBeCloseTo(report.budget30.callRatio[method], 9);
      }
      for (const policy of ['gapg', 'grpo'] as const) {
        expect(weighted((k) => k.asks[policy]!)).toBeCloseTo(report.budget30.askRatio[policy], 9);
      }
      expect(offloadClaims(report).map((c) => c.id)).toEqual([
        'offload:gapg>router',
        'offload:router>random',
        'offload:random>taskTuned',
        'offload:call-ratio',
        'offload:grpo-trace',
      ]);
    },
  );
});
