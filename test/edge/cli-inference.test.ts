/**
 * floe-edge's inference commands as processes: `scan` on JSON lines (a bad line is an error line, the
 * others are answered), `generate` against the real cloud stand-in with the call log read back by
 * `status`, and `serve` answering the openai client until SIGTERM ends it cleanly.
 */
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type CloudServer, startCloud } from '@floe/cloud-llm';
import { ROOT, floeEdgeCommand, floeEdgeEnv } from './floe-edge.js';

const MODEL = path.join(ROOT, 'models', 'edge-small');
const home = mkdtempSync(path.join(os.tmpdir(), 'floe-cli-inference-'));
let cloud: CloudServer;

beforeAll(async () => {
  cloud = await startCloud({ modelDir: path.join(ROOT, 'models', 'cloud'), port: 0 });
});
afterAll(async () => {
  await cloud?.close();
  rmSync(home, { recursive: true, force: true });
});

/** Runs floe-edge without blocking this process (the cloud stand-in answers from it). */
async function floeEdge(args: string[], input?: string) {
  const [command, argv] = floeEdgeCommand(args);
  const child = execFile(command, argv, { cwd: ROOT, env: floeEdgeEnv({ FLOE_EDGE_HOME: home }), timeout: 120_000 });
  if (input !== undefined) child.stdin!.end(input);
  else child.stdin!.end();
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const code = await new Promise<number | null>((resolve) => child.on('close', resolve));
  return { code, stdout, stderr };
}

describe('floe-edge inference commands', { timeout: 300_000 }, () => {
  it('scan answers each JSON line, and a bad line with an error line and exit code 1', async () => {
    const lines = [
      { text: 'Reach me at ada@example.com or +44 20 7946 0958.' },
      { text: 'Nothing to see here, version 1.2.3.' },
      'not json',
      { text: 'Project Bluebird ships Friday.' },
    ];
    const input = lines.map((l) => (typeof l === 'string' ? l : JSON.stringify(l))).join('\n') + '\n';
    const result = await floeEdge(['scan', '--private-terms', 'Project Bluebird'], input);
    expect(result.code).toBe(1);
    const out = result.stdout
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(out).toEqual([
      { pii: true, kinds: ['email', 'phone'], redacted: 'Reach me at <EMAIL_1> or <PHONE_1>.' },
      { pii: false, kinds: [], redacted: 'Nothing to see here, version 1.2.3.' },
      { error: expect.stringMatching(/^line 3: /) as unknown },
      { pii: true, kinds: ['term'], redacted: '<TERM_1> ships Friday.' },
    ]);
    expect(result.stderr).toMatch(/line 3/);
  });

  it('generate streams an answer, and every cloud call it made is in the log that status shows', async () => {
    const url = `${cloud.url}/v1`;
    const before = cloud.received.length;
    const clean = await floeEdge([
      'generate',
      '--model',
      MODEL,
      '--prompt',
      'The state of the union',
      '--max-tokens',
      '24',
      '--cloud-url',
      url,
    ]);
    expect(clean.code).toBe(0);
    expect(clean.stdout.trim().length).toBeGreaterThan(0);
    const sent = cloud.received.length - before;
    expect(sent).toBeGreaterThan(0);

    const blocked = await floeEdge([
      'generate',
      '--model',
      MODEL,
      '--prompt',
      'Write to ada@example.com: the state of the union',
      '--max-tokens',
      '24',
      '--cloud-url',
      url,
      '--privacy',
      'block',
      '--stats',
    ]);
    expect(blocked.code).toBe(0);
    expect(blocked.stderr).toMatch(/blocked by the privacy guard/);
    expect(cloud.received.length - before).toBe(sent);

    const status = await floeEdge(['status', '--json']);
    const calls = (JSON.parse(status.stdout) as { cloudCalls: { records: number; byVerdict: Record<string, number> } })
      .cloudCalls;
    expect(calls.byVerdict['clean']).toBe(sent);
    expect(calls.byVerdict['blocked']).toBeGreaterThanOrEqual(1);
    const text = await floeEdge(['status']);
    expect(text.stdout).toMatch(/cloud calls: \d+ \(\d+ clean, \d+ blocked\)/);
    expect(text.stdout).toMatch(/request blocked by block \[email\]: nothing sent/);

    const wrong = await floeEdge(['generate', '--model', MODEL, '--prompt', 'x', '--fusion', 'entropy']);
    expect(wrong.code).toBe(2);
    expect(wrong.stderr).toMatch(/needs a cloud: give --cloud-url/);
  });

  it('serve answers the openai client and leaves cleanly on SIGTERM', async () => {
    const [command, argv] = floeEdgeCommand(['serve', '--model', MODEL, '--port', '0']);
    const child: ChildProcess = spawn(command, argv, { cwd: ROOT, env: floeEdgeEnv({ FLOE_EDGE_HOME: home }) });
    try {
      const url = await new Promise<string>((resolve, reject) => {
        let out = '';
        child.stdout!.on('data', (d: Buffer) => {
          out += d.toString();
          const m = /on (http:\/\/\S+\/v1)/.exec(out);
          if (m) resolve(m[1]!);
        });
        child.on('exit', (code) => reject(new Error(`serve exited with ${code}`)));
      });
      const client = new OpenAI({ baseURL: url, apiKey: 'none', maxRetries: 0 });
      expect((await client.models.list()).data.map((m) => m.id)).toEqual(['edge-small']);
      const answer = await client.completions.create({ model: 'edge-small', prompt: 'The union', max_tokens: 8 });
      expect(answer.usage?.completion_tokens).toBe(8);
      const exited = new Promise<number | null>((resolve) => child.on('exit', resolve));
      child.kill('SIGTERM');
      expect(await exited).toBe(0);
    } finally {
      child.kill('SIGKILL');
    }
  });
});
