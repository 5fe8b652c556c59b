import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type JobSummary, type StrategyName, fromWireAdapter, parseSafetensors } from '@floe/shared';
import { sha256Hex as sha256HexOf } from '@floe/server';
import type { SyntheticDevice } from '@floe/simulator';
import { type TestServer, jobSpec, startDevices, startTestServer, waitForJob } from './helpers.js';

const PLANNED_RANKS = [2, 4, 8, 16];

describe('50 clients with mixed ranks', () => {
  let test: TestServer;
  let devices: SyntheticDevice[];

  beforeAll(async () => {
    test = await startTestServer();
    devices = await startDevices(test.url, 50, (i) => ({
      plan: { rank: PLANNED_RANKS[i % PLANNED_RANKS.length] as number, targetModules: ['q_proj', 'v_proj'] },
      distribution: { seed: 1, scale: 0.05, noise: 0.5 },
      clientSeed: i,
    }));
  });

  afterAll(async () => {
    devices.forEach((d) => d.stop());
    await test.close();
  });

  it.each<StrategyName>(['fedavg', 'hetlora', 'flexlora'])('complete 3 rounds under %s', async (strategy) => {
    const created = await test.admin<JobSummary>(
      'POST',
      '/v1/jobs',
      jobSpec({ name: strategy, strategy, clientsPerRound: 50, quorum: 45 }),
    );
    expect(created.status).toBe(201);
    const job = await waitForJob(test, created.body.id);
    expect(job.status).toBe('completed');
    expect(job.rounds.map((r) => [r.status, r.sampled, r.accepted, r.rejected])).toEqual([
      ['aggregated', 50, 50, 0],
      ['aggregated', 50, 50, 0],
      ['aggregated', 50, 50, 0],
    ]);
    // every device was asked for min(planned rank, maxRank 8); fedavg needs one rank for all
    for (const [i, device] of devices.entries()) {
      const starts = device.rounds.filter((r) => r.jobId === job.id);
      expect(starts.map((s) => s.round)).toEqual([0, 1, 2]);
      const planned = PLANNED_RANKS[i % PLANNED_RANKS.length] as number;
      expect(starts.every((s) => s.config.rank === (strategy === 'fedavg' ? 8 : Math.min(planned, 8)))).toBe(true);
      // round 0 starts from the job's shared initialization (B = 0: the base model); later rounds from the
      // aggregate, cut to the device's rank
      const initial = fromWireAdapter(starts[0]!.adapter!);
      for (const f of initial.modules.values()) {
        expect(f.rank).toBe(starts[0]?.config.rank);
        expect(f.B.every((x) => x === 0)).toBe(true);
        expect(f.A.some((x) => x !== 0)).toBe(true);
      }
      const tensor = starts[1]?.adapter?.tensors.find((t) => t.name.endsWith('lora_A.weight'));
      expect(tensor?.shape[0]).toBe(starts[1]?.config.rank);
    }
    // the aggregate downloads in PEFT layout, checksummed
    const config = await fetch(`${test.url}/v1/jobs/${job.id}/clusters/0/adapter_config.json`, {
      headers: { authorization: 'Bearer admin-token-for-tests' },
    });
    expect(await config.json()).toMatchObject({
      peft_type: 'LORA',
      r: 8,
      lora_alpha: 16,
      target_modules: ['q_proj', 'v_proj'],
    });
    const weights = await fetch(`${test.url}/v1/jobs/${job.id}/clusters/0/adapter_model.safetensors`, {
      headers: { authorization: `Bearer ${devices[0]?.credential ?? ''}` },
    });
    const bytes = new Uint8Array(await weights.arrayBuffer());
    expect(weights.headers.get('etag')).toBe(`"${sha256HexOf(bytes)}"`);
    const { tensors } = parseSafetensors(bytes);
    expect(tensors.size).toBe(4 * 2 * 2);
    for (const t of tensors.values()) expect(t.data.every(Number.isFinite)).toBe(true);
  });

  it('counts what happened in Prometheus metrics and documents the API at /docs', async () => {
    const metrics = await (await fetch(`${test.url}/metrics`)).text();
    expect(metrics).toMatch(/^floe_updates_total\{outcome="accepted"\} 450$/m);
    expect(metrics).toMatch(/^floe_rounds_total\{status="aggregated"\} 9$/m);
    expect(metrics).toMatch(/^floe_connected_clients 50$/m);
    expect(metrics).toMatch(/^floe_aggregation_duration_seconds_count 9$/m);
    const openapi = (await (await fetch(`${test.url}/docs/json`)).json()) as { paths: Record<string, unknown> };
    expect(Object.keys(openapi.paths)).toEqual(
      expect.arrayContaining([
        '/v1/enroll',
        '/v1/jobs',
        '/v1/jobs/{id}',
        '/v1/jobs/{id}/stop',
        '/v1/jobs/{id}/rounds',
        '/v1/jobs/{id}/clusters/{cluster}/adapter_model.safetensors',
        '/healthz',
        '/metrics',
      ]),
    );
  });
});
