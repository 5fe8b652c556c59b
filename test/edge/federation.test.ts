/**
 * Real devices in a real federation: the coordination server on loopback and six edge clients of this
 * package (planner, ORT training on private data, socket.io, personalization), on two tasks and three
 * device tiers, for three rounds of FlexLoRA with task-aware clustering.
 *
 * Clients: four State of the Union speakers and two arithmetic clients that practise subtraction of one-
 * and two-digit numbers. The other arithmetic clients are left out on purpose: edge-small's two-digit
 * multiplication sits at 2-6% exact match and does not move in 60 local steps, and its one-digit
 * addition at 97% leaves no room, so their held-out figures move by noise (measured, decision 0013).
 */
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type Device, type DeviceOutcome, type TrainingCost, calibrate, startDevice } from '@floe/edge-client';
import { adjustedRandIndex } from '@floe/federation';
import { architectureOf, checkpointSha256, loadCheckpoint } from '@floe/model';
import { type JobSummary, decodeMessage } from '@floe/shared';
import { type ClientData, type TaskName, federationPartition, writeDataDir } from '@floe/tasks';
import { JOIN_TOKEN, type TestServer, jobSpec, startTestServer, waitForJob } from '../server/helpers.js';

const MODEL = path.join(import.meta.dirname, '..', '..', 'models', 'edge-small');
const TARGET_MODULES = ['q_proj', 'v_proj', 'up_proj', 'down_proj'];
const TIERS = ['phone-low', 'phone-high', 'laptop'];

interface Participant {
  data: ClientData;
  tier: string;
  device?: Device;
  outcome?: DeviceOutcome;
  /** Every frame the device sent: its event and bytes. */
  frames: { event: string; bytes: Uint8Array }[];
}

describe('six edge clients, two tasks, three tiers, three rounds of clustered FlexLoRA', () => {
  let server: TestServer;
  let dir: string;
  let job: JobSummary;
  const participants: Participant[] = [];

  beforeAll(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'floe-edge-'));
    server = await startTestServer({ gatherMs: 60_000 });
    const pick = (task: TaskName, indices: number[]) =>
      federationPartition(task, { seed: 0, clients: 8, pretrainSeed: 0 }).clients.filter((_, i) => indices.includes(i));
    const clients = [...pick('speech', [0, 1, 2, 3]), ...pick('arithmetic', [1, 7])];
    clients.forEach((data, i) => participants.push({ data, tier: TIERS[i % 3] as string, frames: [] }));

    const { config } = await loadCheckpoint(MODEL);
    // one calibration for all six: they share this host (a real device measures itself)
    const cost: TrainingCost = await calibrate({
      model: MODEL,
      config,
      seqLen: 128,
      targetModules: TARGET_MODULES,
      passes: 1,
      steps: 8,
    });
    const created = await server.admin<JobSummary>(
      'POST',
      '/v1/jobs',
      jobSpec({
        name: 'speech-and-arithmetic',
        baseModel: { id: 'edge-small', sha256: await checkpointSha256(MODEL), architecture: architectureOf(config) },
        targetModules: TARGET_MODULES,
        strategy: 'flexlora',
        clustering: true,
        rounds: 3,
        clientsPerRound: 6,
        quorum: 6,
        roundDeadlineSec: 300,
        localSteps: 20,
        learningRate: 5e-4,
        batchSize: 8,
        maxRank: 8,
        alpha: 16,
      }),
    );
    expect(created.status).toBe(201);
    for (const p of participants) {
      const data = path.join(dir, p.data.id, 'data');
      writeDataDir(data, p.data);
      p.device = await startDevice({
        serverUrl: server.url,
        joinToken: JOIN_TOKEN,
        home: path.join(dir, p.data.id, 'home'),
        model: MODEL,
        data,
        tier: p.tier,
        job: created.body.id,
        calibration: cost,
        threads: 1,
        onFrameSent: (event, bytes) => p.frames.push({ event, bytes: bytes.slice() }),
      });
    }
    const outcomes = await Promise.all(participants.map((p) => p.device!.finished));
    outcomes.forEach((outcome, i) => (participants[i]!.outcome = outcome));
    job = await waitForJob(server, created.body.id);
    // what the federation did, for a person reading the log
    console.table(
      participants.map((p) => ({
        client: p.data.id,
        tier: p.tier,
        plan: `r${p.device!.plan.plan.rank} layers ${p.device!.plan.plan.layers?.join(',') ?? 'all'} m${p.device!.plan.microBatch}`,
        metric: p.outcome?.base?.metric,
        base: p.outcome?.base?.value.toFixed(4),
        personalized: p.outcome?.personalized?.value.toFixed(4),
        rule: p.outcome?.personalization?.rule,
        cluster: p.outcome?.rounds.at(-1)?.start.clusterId,
      })),
    );
  }, 900_000);

  afterAll(async () => {
    await Promise.all(participants.map(async (p) => p.device && (await p.device.stop())));
    await server?.close();
    await rm(dir, { recursive: true, force: true });
  });

  it('completes every round with every device', () => {
    expect(job.status).toBe('completed');
    expect(job.rounds.map((r) => [r.status, r.accepted])).toEqual([
      ['aggregated', 6],
      ['aggregated', 6],
      ['aggregated', 6],
    ]);
    for (const p of participants) expect(p.outcome?.rounds.map((r) => r.start.round)).toEqual([0, 1, 2]);
  });

  it('plans a smaller adapter for a weaker device', () => {
    const size = (tier: string) => participants.find((p) => p.tier === tier)!.device!.plan.adapterParameters;
    expect(size('phone-low')).toBeLessThan(size('laptop'));
    expect(size('phone-low')).toBeLessThanOrEqual(size('phone-high'));
    // the plan the device reported is the one it trained: its updates carry its layers
    for (const p of participants) {
      const layers = p.device!.plan.plan.layers;
      for (const round of p.outcome!.rounds) expect(round.update.plan.layers).toEqual(layers);
    }
  });

  it("beats the base checkpoint on every client's own test split with its personalized adapter", () => {
    for (const p of participants) {
      const { base, personalized } = p.outcome!;
      expect(base, p.data.id).toBeDefined();
      if (base!.higherIsBetter) expect(personalized!.value, p.data.id).toBeGreaterThan(base!.value);
      else expect(personalized!.value, p.data.id).toBeLessThan(base!.value);
    }
  });

  it('clusters the trained updates by task (adjusted Rand index >= 0.8)', async () => {
    const clusters = await server.admin<{ clusterId: number; clients: string[] }[]>(
      'GET',
      `/v1/jobs/${job.id}/clusters`,
    );
    const clusterOf = new Map(clusters.body.flatMap((c) => c.clients.map((id) => [id, c.clusterId] as const)));
    const found = participants.map((p) => clusterOf.get(p.device!.clientId) ?? -1);
    expect(
      adjustedRandIndex(
        found,
        participants.map((p) => p.data.task),
      ),
    ).toBeGreaterThanOrEqual(0.8);
  });

  it('sends no 16-byte piece of its private data and nothing outside the protocol', () => {
    for (const p of participants) {
      const text = [...p.data.train.documents, ...p.data.test.documents].join('\n');
      const bytes = Buffer.from(text, 'utf8').toString('latin1');
      const pieces = new Set<string>();
      for (let i = 0; i + 16 <= bytes.length; i++) pieces.add(bytes.slice(i, i + 16));
      expect(p.frames.length).toBeGreaterThanOrEqual(4); // a hello and three updates at least
      for (const frame of p.frames) {
        expect(['hello', 'update']).toContain(frame.event);
        // decoding validates against the schemas, which forbid any property they do not name
        expect(decodeMessage(frame.bytes).type).toBe(frame.event);
        const seen = Buffer.from(frame.bytes).toString('latin1');
        for (let i = 0; i + 16 <= seen.length; i++) {
          if (pieces.has(seen.slice(i, i + 16))) throw new Error(`${p.data.id} sent private bytes at ${i}`);
        }
      }
    }
  });
});
