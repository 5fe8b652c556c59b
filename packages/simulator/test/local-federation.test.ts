import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { runLocalFederation, type LocalFederationOptions } from '../src/index.js';

const options: LocalFederationOptions = {
  model: path.join(import.meta.dirname, '..', '..', '..', 'models', 'edge-tiny'),
  task: 'email',
  strategy: 'flexlora',
  ranks: [2, 4],
  rounds: 1,
  localSteps: 3,
  learningRate: 1e-2,
  alpha: 8,
  targetModules: ['q_proj', 'v_proj'],
  batch: 2,
  seqLen: 256,
  seed: 0,
};

describe('local federation', () => {
  it('reports the base model, then every round, per client, at the client rank', async () => {
    const seen: number[] = [];
    const results = await runLocalFederation(options, (r) => seen.push(r.round));
    expect(seen).toEqual([0, 1]);
    expect(results[1]!.clients.map((c) => [c.clientId, c.rank])).toEqual([
      ['email-0', 2],
      ['email-1', 4],
    ]);
    for (const c of results[1]!.clients) {
      expect(Number.isFinite(c.trainLoss)).toBe(true);
      expect(c.metric).toBeGreaterThanOrEqual(0);
      expect(c.metric).toBeLessThanOrEqual(1);
    }
  });

  it('with a zero learning rate the adapters stay zero and reproduce the base figures; with training they move', async () => {
    const frozen = await runLocalFederation({ ...options, learningRate: 0 });
    expect(frozen[1]!.clients.map((c) => c.metric)).toEqual(frozen[0]!.clients.map((c) => c.metric));
    const trained = await runLocalFederation({ ...options, localSteps: 15, learningRate: 3e-2 });
    expect(trained[1]!.clients.map((c) => c.metric)).not.toEqual(trained[0]!.clients.map((c) => c.metric));
  });
});
