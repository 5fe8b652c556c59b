/**
 * floe-edge as a user meets it: help on every command, and every wrong value (flag, environment
 * variable, config file, profile file) refused on one line with exit code 2 before any work starts.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ROOT, floeEdgeCommand, floeEdgeEnv } from './floe-edge.js';

const MODEL = path.join(ROOT, 'models', 'edge-small');
const COMMANDS = ['enroll', 'join', 'status', 'plan', 'train', 'eval', 'describe', 'scan', 'generate', 'serve'];
const home = mkdtempSync(path.join(os.tmpdir(), 'floe-cli-'));
afterAll(() => rmSync(home, { recursive: true, force: true }));

function floeEdge(args: string[], env: Record<string, string> = {}) {
  const result = spawnSync(...floeEdgeCommand(args), {
    cwd: ROOT,
    env: floeEdgeEnv({ FLOE_EDGE_HOME: home, ...env }),
    encoding: 'utf8',
    timeout: 60_000,
  });
  return { code: result.status, stdout: result.stdout, stderr: result.stderr };
}

function expectUsageError(result: ReturnType<typeof floeEdge>, pattern: RegExp) {
  expect(result.code).toBe(2);
  expect(result.stderr.trim().split('\n')).toHaveLength(1);
  expect(result.stderr).toMatch(pattern);
  expect(result.stdout).toBe('');
}

// every call starts Node and tsx on the sources (about 3 s here): generous timeouts for a loaded machine
describe('floe-edge', { timeout: 300_000 }, () => {
  it('prints help for the program and each command', () => {
    const top = floeEdge(['--help']);
    expect(top.code).toBe(0);
    for (const command of COMMANDS) expect(top.stdout).toContain(command);
    for (const command of COMMANDS) {
      const help = floeEdge([command, '--help']);
      expect(help.code).toBe(0);
      expect(help.stdout).toMatch(new RegExp(`^Usage: floe-edge ${command} \\[options\\]`));
    }
  });

  it('refuses wrong flags and values on one line with exit code 2', () => {
    expectUsageError(floeEdge(['frobnicate']), /unknown command 'frobnicate'/);
    expectUsageError(floeEdge(['train', '--bogus']), /unknown option '--bogus'/);
    expectUsageError(floeEdge(['train', '--model', MODEL, '--steps', '-3']), /--steps.*integer from 1/);
    expectUsageError(floeEdge(['train', '--model', MODEL, '--lr', 'fast']), /--lr.*positive number/);
    expectUsageError(floeEdge(['join', '--threads', '2.5']), /--threads.*integer/);
    expectUsageError(floeEdge(['plan', '--tier', 'phone-x', '--model', MODEL]), /Allowed choices are phone-low/);
    expectUsageError(floeEdge(['eval', '--model', path.join(home, 'nope')]), /is not a directory/);
    expectUsageError(floeEdge(['eval', '--model', ROOT]), /has no config\.json/);
    expectUsageError(floeEdge(['join', '--server', 'ftp://x']), /http\(s\) URL/);
    expectUsageError(floeEdge(['train', '--target-modules', 'q_proj,w_proj']), /unknown module w_proj/);
    expectUsageError(floeEdge(['plan', '--model', MODEL]), /give --tier NAME or --profile FILE/);
    expectUsageError(floeEdge(['join']), /--server is required/);
    expectUsageError(
      floeEdge(['rl-train', '--cloud-reward', '3']),
      /--cloud-reward: 3 must lie above alpha_f = 0\.2 and below alpha_a = 2/,
    );
    expectUsageError(floeEdge(['rl-train', '--cloud-reward', '0.1']), /--cloud-reward: 0\.1 must lie above/);
  });

  it('refuses wrong values from the environment, the config file and the profile file the same way', () => {
    expectUsageError(floeEdge(['join'], { FLOE_EDGE_THREADS: '0' }), /from env 'FLOE_EDGE_THREADS' is invalid/);
    const config = path.join(home, 'config.json');
    writeFileSync(config, JSON.stringify({ modle: MODEL }));
    expectUsageError(floeEdge(['describe']), /unknown option modle/);
    writeFileSync(config, JSON.stringify({ model: path.join(home, 'nope') }));
    expectUsageError(floeEdge(['describe']), /config .*model.*is not a directory/);
    writeFileSync(config, '{ not json');
    expectUsageError(floeEdge(['describe']), /config .*config\.json/);
    rmSync(config);
    const profile = path.join(home, 'profile.json');
    writeFileSync(profile, JSON.stringify({ memoryMiB: -1 }));
    expectUsageError(floeEdge(['plan', '--profile', profile, '--model', MODEL]), /memoryMiB must be >= 0/);
    writeFileSync(profile, JSON.stringify({ memoryMiB: 64, cores: 4 }));
    expectUsageError(floeEdge(['plan', '--profile', profile, '--model', MODEL]), /invalid profile/);
  });

  it('takes options from the config file, and flags over it', () => {
    writeFileSync(path.join(home, 'config.json'), JSON.stringify({ model: MODEL, id: 'from-config' }));
    const fromFile = floeEdge(['describe']);
    expect(fromFile.code).toBe(0);
    expect(JSON.parse(fromFile.stdout)).toMatchObject({ id: 'from-config', architecture: { numHiddenLayers: 4 } });
    const fromFlag = floeEdge(['describe', '--id', 'from-flag']);
    expect(JSON.parse(fromFlag.stdout)).toMatchObject({ id: 'from-flag' });
    rmSync(path.join(home, 'config.json'));
  });
});
