import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import Database from 'better-sqlite3';
import { afterEach, describe, expect, it } from 'vitest';
import { Store, sha256Hex } from '../src/store/store.js';
import { configFromEnv } from '../src/config.js';

const dirs: string[] = [];
afterEach(async () => {
  for (const dir of dirs.splice(0)) await rm(dir, { recursive: true, force: true });
});

async function tempStore(): Promise<{ store: Store; dir: string }> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'floe-store-'));
  dirs.push(dir);
  return { store: new Store(dir), dir };
}

const round = {
  jobId: 'job-1',
  round: 0,
  status: 'open' as const,
  startedAt: new Date().toISOString(),
  deadline: Date.now() + 1000,
  endedAt: null,
  sampled: [{ clientId: 'c-1', rank: 4, clusterId: 0 }],
  accepted: 0,
  rejected: 0,
  dropped: 0,
  clusters: 0,
  metrics: {},
};

describe('Store', () => {
  it('keeps accepted updates across reopening and counts them with the round', async () => {
    const { store, dir } = await tempStore();
    store.addRound(round);
    const frame = Uint8Array.from({ length: 1000 }, (_, i) => i % 256);
    const stored = store.addUpdate({
      jobId: 'job-1',
      round: 0,
      clientId: 'c-1',
      numSamples: 7,
      rank: 4,
      metrics: { loss: 1.5 },
      frame,
    });
    expect(stored.sha256).toBe(sha256Hex(frame));
    store.close();
    const reopened = new Store(dir);
    const [update] = reopened.updates('job-1', 0);
    expect(update?.frame).toEqual(frame);
    expect(update).toMatchObject({ clientId: 'c-1', numSamples: 7, rank: 4, metrics: { loss: 1.5 } });
    expect(reopened.round('job-1', 0)?.accepted).toBe(1);
    expect(reopened.openRounds()).toHaveLength(1);
    // a second update of the same client in the same round is refused by the store itself
    expect(() =>
      reopened.addUpdate({ jobId: 'job-1', round: 0, clientId: 'c-1', numSamples: 1, rank: 4, metrics: {}, frame }),
    ).toThrow();
    expect(reopened.round('job-1', 0)?.accepted).toBe(1);
    reopened.close();
  });

  it('detects a stored update or adapter whose bytes no longer match their checksum', async () => {
    const { store, dir } = await tempStore();
    store.addRound(round);
    store.addUpdate({
      jobId: 'job-1',
      round: 0,
      clientId: 'c-1',
      numSamples: 1,
      rank: 4,
      metrics: {},
      frame: new Uint8Array(64),
    });
    store.putAdapter({ jobId: 'job-1', clusterId: 0, round: 0, rank: 4, safetensors: new Uint8Array(128) });
    store.close();
    const db = new Database(path.join(dir, 'floe.db'));
    db.prepare('UPDATE updates SET frame = ?').run(Buffer.alloc(64, 1));
    db.prepare('UPDATE adapters SET safetensors = ?').run(Buffer.alloc(128, 2));
    db.close();
    const reopened = new Store(dir);
    expect(() => reopened.updates('job-1', 0)).toThrow(expect.objectContaining({ code: 'checksum_mismatch' }));
    expect(() => reopened.adapter('job-1', 0)).toThrow(expect.objectContaining({ code: 'checksum_mismatch' }));
    reopened.close();
  });
});

describe('configFromEnv', () => {
  it('reads FLOE_* variables and refuses non-numbers where numbers go', () => {
    const config = configFromEnv({ FLOE_PORT: '9000', FLOE_JOIN_TOKEN: 'j', FLOE_DATA_DIR: '/var/floe' });
    expect(config).toMatchObject({ port: 9000, joinToken: 'j', dataDir: '/var/floe', host: '127.0.0.1' });
    expect(() => configFromEnv({ FLOE_PORT: 'eighty' })).toThrow(/FLOE_PORT must be a non-negative number/);
  });
});
