/**
 * Device-cloud inference on the held-out speech of personalized clients (one LoRA adapter per
 * president, trained on that president's addresses by the edge client's LocalTrainer and cached under
 * bench/.cache/):
 * - quality: bits per byte of the edge alone (personalized), the cloud alone (its own token
 *   log-likelihoods over the bytes), and each fusion mode, teacher-forced on windows of each client's
 *   test addresses; the uncertainty gate's curve (bits per byte against the share of positions that
 *   consult the cloud);
 * - speed: greedy generation bytes/s and per-byte latency of the edge alone and fused, with the cloud
 *   stand-in as a separate process at simulated round trips of 0, 20 and 80 ms, with lookahead (16
 *   tokens per call) and without (1), and the share of bytes that fell back to the edge.
 *
 * FLOE_BENCH_WINDOWS (default 12) windows of 255 bytes per client; FLOE_BENCH_ADAPTER_STEPS (default 150).
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import {
  type ByteDistribution,
  type LoadedCheckpoint,
  ModelByteSource,
  OrtLlama,
  generateBytes,
  loadAdapter,
  loadCheckpoint,
  saveAdapter,
} from '@floe/model';
import type { LoraAdapter } from '@floe/shared';
import { taskPartition } from '@floe/tasks';
import {
  CloudClient,
  FUSION_MODES,
  FusedByteSource,
  type FusionMode,
  LocalTrainer,
  alignScoredText,
  entropyBits,
  fuse,
  initialAdapter,
} from '@floe/edge-client';
import type { BenchResult } from '../bench.js';

const ROOT = path.join(import.meta.dirname, '..', '..');
const EDGE = path.join(ROOT, 'models', 'edge-small');
const CLOUD = path.join(ROOT, 'models', 'cloud');
const WINDOW = 255;
const WINDOWS = Number(process.env['FLOE_BENCH_WINDOWS'] ?? 12);
const ADAPTER_STEPS = Number(process.env['FLOE_BENCH_ADAPTER_STEPS'] ?? 150);
const ADAPTER = { rank: 8, alpha: 16, targetModules: ['q_proj', 'v_proj', 'up_proj', 'down_proj'] };
const ROUND_TRIPS = [0, 20, 80] as const;
const DEADLINE_MS = 25;
const GENERATED_BYTES = 128;
const GATES = [0, 0.5, 1, 1.5, 2, 2.5, 3, 4];

interface CloudProcess {
  url: string;
  stop(): Promise<void>;
}

/** The stand-in as its own process (`floe-cloud`), with a fixed added latency. */
async function startCloudProcess(latencyMs: number): Promise<CloudProcess> {
  const child: ChildProcess = spawn(
    process.execPath,
    [
      '--import',
      'tsx',
      '--conditions=floe-source',
      path.join(ROOT, 'packages', 'cloud-llm', 'src', 'main.ts'),
      '--model',
      CLOUD,
      '--port',
      '0',
      '--latency-ms',
      String(latencyMs),
    ],
    { cwd: ROOT, stdio: ['ignore', 'pipe', 'inherit'] },
  );
  const url = await new Promise<string>((resolve, reject) => {
    let out = '';
    child.stdout?.on('data', (chunk: Buffer) => {
      out += chunk.toString();
      const match = /listening on (http:\/\/\S+)/.exec(out);
      if (match) resolve(match[1]!);
    });
    child.on('exit', (code) => reject(new Error(`floe-cloud exited with ${code}`)));
  });
  return {
    url,
    stop: () =>
      new Promise((resolve) => {
        child.on('exit', () => resolve());
        child.kill('SIGTERM');
      }),
  };
}

/** The client's personalized adapter: trained once by the edge client's LocalTrainer, then read from the cache. */
async function personalizedAdapter(
  checkpoint: LoadedCheckpoint,
  client: { id: string; train: { documents: string[] } },
): Promise<LoraAdapter> {
  const dir = path.join(ROOT, 'bench', '.cache', 'inference', `${client.id}-r${ADAPTER.rank}-s${ADAPTER_STEPS}`);
  if (existsSync(path.join(dir, 'adapter_model.safetensors'))) return (await loadAdapter(dir)).adapter;
  const trainer = new LocalTrainer({
    checkpoint,
    data: { manifest: { kind: 'text', metric: 'bits-per-byte' }, train: client.train, test: undefined },
  });
  const started = performance.now();
  const result = await trainer.train({
    start: initialAdapter(checkpoint.config, ADAPTER, 1),
    steps: ADAPTER_STEPS,
    batchSize: 8,
    learningRate: 2e-3,
    seed: 1,
  });
  await trainer.dispose();
  console.log(
    `  ${client.id}: adapter trained, loss ${result.loss.toFixed(3)}, ${((performance.now() - started) / 1000).toFixed(0)} s`,
  );
  await saveAdapter(dir, result.adapter);
  return result.adapter;
}

function windowsOf(documents: readonly string[]): string[] {
  const out: string[] = [];
  const decoder = new TextDecoder();
  for (const doc of documents) {
    const bytes = new TextEncoder().encode(doc);
    for (let at = 0; at + WINDOW <= bytes.length && out.length < WINDOWS; at += WINDOW) {
      // whole characters only: a window starts and ends where the text does
      const text = decoder.decode(bytes.subarray(at, at + WINDOW)).replace(/\uFFFD/g, '');
      out.push(text);
    }
  }
  return out;
}

const percentile = (values: readonly number[], q: number) => {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] ?? Number.NaN;
};

export async function run(): Promise<BenchResult> {
  const edgeCheckpoint = await loadCheckpoint(EDGE);
  const clients = taskPartition('speech', { seed: 0 }).clients;
  console.log(
    `personalized adapters for ${clients.length} speech clients (${ADAPTER_STEPS} steps, rank ${ADAPTER.rank})`,
  );
  const adapters = [];
  for (const client of clients) adapters.push(await personalizedAdapter(edgeCheckpoint, client));

  const edgeModel = await OrtLlama.create(edgeCheckpoint.config, edgeCheckpoint.weights, {
    loraModules: [...adapters[0]!.modules.keys()],
  });
  const base = new ModelByteSource(edgeModel, 'edge-base');

  // ---- quality, teacher-forced, cloud at 0 ms
  const cloud = await startCloudProcess(0);
  const perClient: Record<string, Record<string, number>> = {};
  const gatePoints: { entropy: number; edge: number; fused: number }[] = [];
  try {
    const client = new CloudClient({
      baseURL: `${cloud.url}/v1`,
      apiKey: 'none',
      model: 'floe-cloud',
      timeoutMs: 30_000,
    });
    for (const [k, c] of clients.entries()) {
      const edge = new ModelByteSource(edgeModel, 'edge', adapters[k]);
      const bits: Record<string, number> = {
        edge: 0,
        edgeBase: 0,
        cloud: 0,
        ...Object.fromEntries(FUSION_MODES.map((m) => [m, 0])),
      };
      let bytes = 0;
      for (const text of windowsOf(c.test.documents)) {
        const e = await edge.score(text);
        const b = await base.score(text);
        const scored = await client.score(text);
        if (!scored) throw new Error('the cloud did not answer');
        const target = new TextEncoder().encode(text);
        const cloudDistributions = alignScoredText(scored.positions, target, (t) => e[t]!);
        bits['cloud']! -= scored.logprobs.reduce<number>((s, lp) => s + (lp ?? 0), 0) / Math.LN2;
        target.forEach((byte, t) => {
          const et = e[t] as ByteDistribution;
          // where the cloud carries no known mass its distribution is the edge's
          const ct = cloudDistributions[t] ?? et;
          bits['edge']! -= Math.log2(et[byte]!);
          bits['edgeBase']! -= Math.log2(b[t]![byte]!);
          const fusedBits = Object.fromEntries(
            FUSION_MODES.map((mode) => [mode, -Math.log2(fuse({ mode }, et, ct, b[t])[byte]!)]),
          ) as Record<FusionMode, number>;
          for (const mode of FUSION_MODES) bits[mode]! += fusedBits[mode];
          gatePoints.push({ entropy: entropyBits(et), edge: -Math.log2(et[byte]!), fused: fusedBits.entropy });
        });
        bytes += target.length;
      }
      perClient[c.id] = Object.fromEntries(Object.entries(bits).map(([key, v]) => [key, v / bytes]));
      perClient[c.id]!['bytes'] = bytes;
      const row = perClient[c.id]!;
      console.log(
        `  ${c.id} (${String(c.profile?.['president'] ?? '')}): edge ${row['edge']!.toFixed(3)} cloud ${row['cloud']!.toFixed(3)} fused ${row['entropy']!.toFixed(3)} bits/byte over ${bytes} bytes`,
      );
    }
  } finally {
    await cloud.stop();
  }
  const ids = Object.keys(perClient);
  const mean = (key: string) => ids.reduce((s, id) => s + perClient[id]![key]!, 0) / ids.length;
  const bitsPerByteByMode = Object.fromEntries(FUSION_MODES.map((m) => [m, mean(m)])) as Record<FusionMode, number>;
  const gateCurve = GATES.map((gate) => {
    const sent = gatePoints.filter((p) => p.entropy >= gate);
    const total = gatePoints.reduce((s, p) => s + (p.entropy >= gate ? p.fused : p.edge), 0);
    return {
      gateBits: gate,
      shareSentToCloud: sent.length / gatePoints.length,
      bitsPerByte: total / gatePoints.length,
    };
  });

  // ---- speed: greedy generation after the first 64 bytes of each client's first window
  const prompts = clients.map((c) => windowsOf(c.test.documents)[0]!.slice(0, 64));
  const edgeSpeed = await timeGeneration(new ModelByteSource(edgeModel, 'edge', adapters[0]), prompts);
  const fusedSpeed: Record<string, Awaited<ReturnType<typeof timeGeneration>>> = {};
  const noLookahead: Record<string, Awaited<ReturnType<typeof timeGeneration>>> = {};
  for (const rtt of ROUND_TRIPS) {
    const slow = await startCloudProcess(rtt);
    try {
      for (const [lookahead, into] of [
        [16, fusedSpeed],
        [1, noLookahead],
      ] as const) {
        const client = new CloudClient({
          baseURL: `${slow.url}/v1`,
          apiKey: 'none',
          model: 'floe-cloud',
          timeoutMs: 2000,
        });
        const source = new FusedByteSource(new ModelByteSource(edgeModel, 'edge', adapters[0]), client, {
          fusion: { mode: 'entropy' },
          lookahead,
          deadlineMs: DEADLINE_MS,
        });
        const timing = await timeGeneration(source, prompts);
        into[String(rtt)] = {
          ...timing,
          fallbackShare: source.stats.fellBack / source.stats.positions,
          calls: client.stats.calls,
        };
        console.log(
          `  fused, round trip ${rtt} ms, lookahead ${lookahead}: ${timing.bytesPerSec.toFixed(0)} bytes/s, p99 ${timing.p99.toFixed(1)} ms, fell back ${(100 * into[String(rtt)]!.fallbackShare!).toFixed(1)}%`,
        );
      }
    } finally {
      await slow.stop();
    }
  }
  await edgeModel.release();

  const meanBitsPerByte = { edge: mean('edge'), cloud: mean('cloud'), fused: bitsPerByteByMode.entropy };
  const beatsBoth = ids.filter((id) => {
    const r = perClient[id]!;
    return r['entropy']! < r['edge']! && r['entropy']! < r['cloud']!;
  }).length;
  const rows: BenchResult['rows'] = ids.map((id) => ({
    client: id,
    edge: perClient[id]!['edge']!.toFixed(3),
    cloud: perClient[id]!['cloud']!.toFixed(3),
    ...Object.fromEntries(FUSION_MODES.map((m) => [m, perClient[id]![m]!.toFixed(3)])),
  }));
  rows.push({
    client: 'mean',
    edge: meanBitsPerByte.edge.toFixed(3),
    cloud: meanBitsPerByte.cloud.toFixed(3),
    ...Object.fromEntries(FUSION_MODES.map((m) => [m, bitsPerByteByMode[m].toFixed(3)])),
  });
  return {
    rows,
    data: {
      units: 'bits per byte (lower is better); bytes/s; ms',
      setup: `edge ${path.relative(ROOT, EDGE)} with one LoRA adapter per client (rank ${ADAPTER.rank}, ${ADAPTER_STEPS} local steps), cloud ${path.relative(ROOT, CLOUD)} served by floe-cloud in its own process; quality teacher-forced on ${WINDOWS} windows of ${WINDOW} bytes of each client's held-out addresses, top-20 per cloud token; speed: greedy generation of ${GENERATED_BYTES} bytes after 64-byte prompts, deadline ${DEADLINE_MS} ms per byte`,
      meanBitsPerByte,
      bitsPerByteByMode,
      fusedBeatsBothOnClients: beatsBoth,
      perClient,
      gateCurve,
      tokensPerSec: {
        edgeOnly: edgeSpeed.bytesPerSec,
        fused: Object.fromEntries(Object.entries(fusedSpeed).map(([k, v]) => [k, v.bytesPerSec])),
      },
      tokensPerSecNoLookahead: Object.fromEntries(Object.entries(noLookahead).map(([k, v]) => [k, v.bytesPerSec])),
      latencyMs: {
        edgeOnly: { p50: edgeSpeed.p50, p95: edgeSpeed.p95, p99: edgeSpeed.p99 },
        fused: Object.fromEntries(
          Object.entries(fusedSpeed).map(([k, v]) => [k, { p50: v.p50, p95: v.p95, p99: v.p99 }]),
        ),
        noLookahead: Object.fromEntries(
          Object.entries(noLookahead).map(([k, v]) => [k, { p50: v.p50, p95: v.p95, p99: v.p99 }]),
        ),
      },
      deadlineMs: DEADLINE_MS,
      fallbackShare: Object.fromEntries(Object.entries(fusedSpeed).map(([k, v]) => [k, v.fallbackShare])),
      fallbackShareNoLookahead: Object.fromEntries(Object.entries(noLookahead).map(([k, v]) => [k, v.fallbackShare])),
      cloudCalls: Object.fromEntries(Object.entries(fusedSpeed).map(([k, v]) => [k, v.calls])),
      cloudCallsNoLookahead: Object.fromEntries(Object.entries(noLookahead).map(([k, v]) => [k, v.calls])),
    },
  };
}

/** Greedy generation of GENERATED_BYTES after each prompt: bytes/s overall and per-byte latency percentiles. */
async function timeGeneration(
  source: ModelByteSource<unknown> | FusedByteSource,
  prompts: readonly string[],
): Promise<{ bytesPerSec: number; p50: number; p95: number; p99: number; fallbackShare?: number; calls?: number }> {
  await generateBytes(source, prompts[0]!, { maxBytes: 8 }); // warm-up
  const gaps: number[] = [];
  let bytes = 0;
  const started = performance.now();
  for (const prompt of prompts) {
    let last = performance.now();
    await generateBytes(source, prompt, {
      maxBytes: GENERATED_BYTES,
      onByte: () => {
        const now = performance.now();
        gaps.push(now - last);
        last = now;
        bytes++;
      },
    });
  }
  const seconds = (performance.now() - started) / 1000;
  return {
    bytesPerSec: bytes / seconds,
    p50: percentile(gaps, 0.5),
    p95: percentile(gaps, 0.95),
    p99: percentile(gaps, 0.99),
  };
}
