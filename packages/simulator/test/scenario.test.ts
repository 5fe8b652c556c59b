import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { mkdtempSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import {
  DEFAULT_OFFLOAD,
  DEFAULT_SCENARIO,
  OffloadUsageError,
  QUICK_SCENARIO,
  ScenarioError,
  checkScenario,
  offloadScenarioOf,
} from '../src/index.js';

const ROOT = path.join(import.meta.dirname, '..', '..', '..');
const simulate = (...args: string[]) =>
  spawnSync(
    process.execPath,
    ['--import', 'tsx', '--conditions=floe-source', 'packages/simulator/src/cli.ts', ...args],
    { cwd: ROOT, encoding: 'utf8', timeout: 60_000 },
  );

describe('scenarios', () => {
  it('accepts the default and quick scenarios, and refuses what the schema cannot say', () => {
    expect(() => checkScenario(DEFAULT_SCENARIO)).not.toThrow();
    expect(() => checkScenario(QUICK_SCENARIO)).not.toThrow();
    expect(() => checkScenario({ ...DEFAULT_SCENARIO, dropouts: 0.25, rounds: 1 })).toThrow(/at least 2 rounds/);
    expect(() => checkScenario({ ...DEFAULT_SCENARIO, tiers: ['laptop', 'watch'] })).toThrow(ScenarioError);
  });

  it("takes the offload scenario's reward from a config file only when it ranks local above help above a wrong answer", () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'floe-offload-config-'));
    const models = {
      edgeModel: path.join(ROOT, 'models', 'edge-small'),
      cloudModel: path.join(ROOT, 'models', 'cloud'),
    };
    const withReward = (reward: unknown) => {
      const file = path.join(dir, `${Math.random()}.json`);
      writeFileSync(file, JSON.stringify({ reward, ...models }));
      return () => offloadScenarioOf({}, false, file);
    };
    expect(withReward({ correct: 2, cloud: 1, format: 0.2 })().reward).toEqual({ correct: 2, cloud: 1, format: 0.2 });
    expect(offloadScenarioOf(models, false, undefined).reward).toEqual(DEFAULT_OFFLOAD.reward);
    expect(withReward({ cloud: 1 })().reward).toEqual({ ...DEFAULT_OFFLOAD.reward, cloud: 1 });
    expect(withReward({ correct: 2, cloud: 3, format: 0.2 })).toThrow(OffloadUsageError);
    expect(withReward({ correct: 2, cloud: 0.1, format: 0.2 })).toThrow(/must pay more than a well-formed answer/);
    expect(withReward({ correct: 2, cloud: 0.5, format: -0.1 })).toThrow(/at least 0/);
    expect(withReward({ cloud: 1, bonus: 3 })).toThrow(/additional properties/);
    expect(withReward(7)).toThrow(/reward/);
  });

  it('pnpm simulate answers a wrong flag with exit 2 and one line of reason, before starting anything', () => {
    const cases: [string[], RegExp][] = [
      [['--tiers', 'laptop,watch'], /unknown tier watch/],
      [['--rounds', 'x'], /--rounds.*expected an integer/],
      [['--participation', '0'], /--participation/],
      [['--calibration', 'no/such/file.json'], /calibration no\/such\/file.json does not exist/],
      [['--frobnicate'], /unknown option/],
      [['--scenario', 'chess'], /--scenario.*chess/],
      [['--scenario', 'offload', '--rounds', '3'], /--scenario offload does not take --rounds/],
      [['--scenario', 'offload', '--rl-steps', '0'], /--rl-steps/],
      [['--scenario', 'offload', '--edge-model', 'no/such/dir'], /no\/such\/dir is not a checkpoint directory/],
      [['--rl-steps', '5'], /--rl-steps and --budget belong to --scenario offload/],
    ];
    for (const [args, reason] of cases) {
      const run = simulate(...args);
      expect({ args, status: run.status }).toEqual({ args, status: 2 });
      expect(run.stderr).toMatch(reason);
      expect(run.stdout).not.toMatch(/simulating|offloading/);
    }
  });
});
