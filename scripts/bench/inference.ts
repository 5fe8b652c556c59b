/**
 * Device-cloud inference on the held-out speech of personalized clients (one LoRA adapter per
 * president, trained on that president's addresses by the edge client's LocalTrainer and cached under
 * bench/.cache/):
 * - quality: bits per byte of the edge alone (personalized), the cloud alone (its own token
 *   log-likelihoods over the bytes), and each fusion mode, teacher-forced on windows of each client's
 *   test addresses; the uncertainty gate's curve (bits per byte against the share of positions that
 *   consult the cloud);
 * - speed: greedy generation bytes/s and per-byte latency of the edge alone (the decode engine with
 *   the client's adapter merged, speculative with an n-gram drafter) and fused, with the cloud stand-in
 *   as a separate process (pinned to its own core where `taskset` exists, as it would be its own
 *   machine) at simulated round trips of 0, 20 and 80 ms: with streamed lookahead (48 tokens per call)
 *   and without (1), with no speed floor (the default: every byte waits up to the deadline) and with a
 *   floor at half the edge's speed, the share of bytes that fell back to the edge, and at 20 ms the
 *   floor's whole curve;
 * - real-time quality: bits per byte of each client's held-out text read through the fused source
 *   under those round trips (teacher-forced: every byte waits for the cloud as in generation), against
 *   the edge alone and offline fusion on the same bytes.
 *
 * FLOE_BENCH_WINDOWS (default 12) windows of 255 bytes per client; FLOE_BENCH_ADAPTER_STEPS (default 150).
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {
  type ByteDistribution,
  type ByteSource,
  type LoadedCheckpoint,
  ModelByteSource,
  NgramDrafter,
  OrtDecoder,
  OrtLlama,
  SpeculativeByteSource,
  generateBytes,
  loadAdapter,
  loadCheckpoint,
  saveAdapter,
} from '@floe/model';
import type { LoraAdapter } from '@floe/shared';
import { taskPartition } from '@floe/tasks';
import {
  CloudClient,
  ContinuationDrafter,
  FUSION_MODES,
  FusedByteSource,
  type FusionMode,
  LocalTrainer,
  alignScoredText,
  entropyBits,
  fuse,
  initialAdapter,
} from '@floe/edge-client';
import type { BenchResult } from '../lib/bench-report.js';

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
const LOOKAHEAD = 48;
/** The fused source's default (no speed floor), a floor of half the edge's speed, and the floors of the curve at 20 ms. */
const DEFAULT_FLOOR = 0;
const HALF_SPEED = 0.5;
const FLOORS = [0, 0.25, 0.5, 0.75];
/** Bytes of each held-out window given as the prompt before real-time scoring. */
const REALTIME_PROMPT = 64;
const GATES = [0, 0.5, 1, 1.5, 2, 2.5, 3, 4];

interface CloudProcess {
  url: string;
  stop(): Promise<void>;
}

const taskset = ['/usr/bin/taskset', '/bin/taskset'].find((p) => existsSync(p));

/** The stand-in as its own process (`floe-cloud`), with a fixed added latency, on the last core if it can be pinned. */
async function startCloudProcess(latencyMs: number): Promise<CloudProcess> {
  const pin = taskset ? [taskset, '-c', String(os.cpus().length - 1)] : [];
  const [command, ...prefix] = [...pin, process.execPath];
  const child: ChildProcess = spawn(
    command,
    [
      ...prefix,
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

  await edgeModel.release();

  // ---- speed and real-time quality, on the decode engine with each client's adapter merged
  const engines: { decoder: OrtDecoder; ngram: NgramDrafter }[] = [];
  for (const [k, c] of clients.entries()) {
    const decoder = await OrtDecoder.create(edgeCheckpoint.config, edgeCheckpoint.weights, {
      mergedAdapter: adapters[k]!,
    });
    engines.push({ decoder, ngram: NgramDrafter.fromTexts(c.train.documents) });
  }
  const edgeOnlySource = (k: number) =>
    new SpeculativeByteSource(engines[k]!.decoder, { drafter: engines[k]!.ngram, name: 'edge' });
  const fusedSource = (k: number, url: string, options: { lookahead: number; minSpeedShare: number }) => {
    const drafter = new ContinuationDrafter(engines[k]!.ngram);
    const client = new CloudClient({ baseURL: `${url}/v1`, apiKey: 'none', model: 'floe-cloud', timeoutMs: 2000 });
    const edge = new SpeculativeByteSource(engines[k]!.decoder, { drafter, name: 'edge' });
    const source = new FusedByteSource(edge, client, {
      fusion: { mode: 'entropy' },
      deadlineMs: DEADLINE_MS,
      drafter,
      ...options,
    });
    return { source, client };
  };
  // greedy generation after the first 64 bytes of client 0's held-out windows, with its adapter
  const prompts = windowsOf(clients[0]!.test.documents)
    .slice(0, 8)
    .map((w) => w.slice(0, 64));
  type Timing = Awaited<ReturnType<typeof timeGeneration>> & {
    fusedShare: number;
    fallbackShare: number;
    calls: number;
  };
  const edgeSpeed: Record<string, Awaited<ReturnType<typeof timeGeneration>>> = {};
  const fusedSpeed: Record<string, Timing> = {};
  const noLookahead: Record<string, Timing> = {};
  const halfSpeed: Record<string, Timing> = {};
  const floorCurve: (Timing & { minSpeedShare: number; shareOfEdgeSpeed: number })[] = [];
  const realtime: Record<string, { fused: number; edge: number; offline: number; fusedShare: number }> = {};
  for (const rtt of ROUND_TRIPS) {
    const slow = await startCloudProcess(rtt);
    try {
      const timed = async (options: { lookahead: number; minSpeedShare: number }): Promise<Timing> => {
        const { source, client } = fusedSource(0, slow.url, options);
        const timing = await timeGeneration(source, prompts);
        const { positions, fused, fellBack } = source.stats;
        return {
          ...timing,
          fusedShare: fused / positions,
          fallbackShare: fellBack / positions,
          calls: client.stats.calls,
        };
      };
      // the edge alone beside the idle cloud, then each fused setting, then the edge again: speeds drift here
      const before = await timeGeneration(edgeOnlySource(0), prompts);
      fusedSpeed[rtt] = await timed({ lookahead: LOOKAHEAD, minSpeedShare: DEFAULT_FLOOR });
      noLookahead[rtt] = await timed({ lookahead: 1, minSpeedShare: DEFAULT_FLOOR });
      halfSpeed[rtt] = await timed({ lookahead: LOOKAHEAD, minSpeedShare: HALF_SPEED });
      if (rtt === 20) {
        // the default and the half-speed floor were just measured: the curve takes those runs
        const measured = new Map([
          [DEFAULT_FLOOR, fusedSpeed[rtt]],
          [HALF_SPEED, halfSpeed[rtt]],
        ]);
        for (const floor of FLOORS) {
          const t = measured.get(floor) ?? (await timed({ lookahead: LOOKAHEAD, minSpeedShare: floor }));
          floorCurve.push({ ...t, minSpeedShare: floor, shareOfEdgeSpeed: 0 });
        }
      }
      const after = await timeGeneration(edgeOnlySource(0), prompts);
      edgeSpeed[rtt] = { ...before, bytesPerSec: (before.bytesPerSec + after.bytesPerSec) / 2 };
      for (const [label, t] of [
        ['lookahead', fusedSpeed[rtt]],
        ['no lookahead', noLookahead[rtt]],
        ['floor at half the edge speed', halfSpeed[rtt]],
      ] as const) {
        console.log(
          `  round trip ${rtt} ms, ${label}: ${t.bytesPerSec.toFixed(0)} bytes/s (${(t.bytesPerSec / edgeSpeed[rtt].bytesPerSec).toFixed(2)} of the edge's ${edgeSpeed[rtt].bytesPerSec.toFixed(0)}), p99 ${t.p99.toFixed(1)} ms, fused ${(100 * t.fusedShare).toFixed(1)}%, ${t.calls} calls`,
        );
      }
      for (const point of rtt === 20 ? floorCurve : [])
        point.shareOfEdgeSpeed = point.bytesPerSec / edgeSpeed[rtt].bytesPerSec;
      realtime[rtt] = await realtimeQuality(
        clients,
        (k) => fusedSource(k, slow.url, { lookahead: LOOKAHEAD, minSpeedShare: DEFAULT_FLOOR }).source,
        edgeOnlySource,
      );
      console.log(
        `  round trip ${rtt} ms, real time: ${realtime[rtt].fused.toFixed(3)} bits/byte (edge ${realtime[rtt].edge.toFixed(3)}, offline fusion ${realtime[rtt].offline.toFixed(3)}), fused ${(100 * realtime[rtt].fusedShare).toFixed(1)}%`,
      );
    } finally {
      await slow.stop();
    }
  }
  for (const { decoder } of engines) await decoder.release();

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
      // bytes/s of greedy generation; the edge alone measured beside each round trip's idle cloud
      tokensPerSec: {
        edgeOnly: Object.values(edgeSpeed).reduce((sum, v) => sum + v.bytesPerSec, 0) / ROUND_TRIPS.length,
        fused: byRtt(fusedSpeed, (v) => v.bytesPerSec),
      },
      tokensPerSecNoLookahead: byRtt(noLookahead, (v) => v.bytesPerSec),
      edgeOnlyByRoundTrip: byRtt(edgeSpeed, (v) => v.bytesPerSec),
      shareOfEdgeSpeed: Object.fromEntries(
        Object.entries(fusedSpeed).map(([k, v]) => [k, v.bytesPerSec / edgeSpeed[k]!.bytesPerSec]),
      ),
      speedFloor: DEFAULT_FLOOR,
      lookaheadTokens: LOOKAHEAD,
      latencyMs: {
        edgeOnly: byRtt(edgeSpeed, (v) => ({ p50: v.p50, p95: v.p95, p99: v.p99 })),
        fused: byRtt(fusedSpeed, (v) => ({ p50: v.p50, p95: v.p95, p99: v.p99 })),
        noLookahead: byRtt(noLookahead, (v) => ({ p50: v.p50, p95: v.p95, p99: v.p99 })),
      },
      deadlineMs: DEADLINE_MS,
      fallbackShare: byRtt(fusedSpeed, (v) => v.fallbackShare),
      fusedShare: byRtt(fusedSpeed, (v) => v.fusedShare),
      fallbackShareNoLookahead: byRtt(noLookahead, (v) => v.fallbackShare),
      cloudCalls: byRtt(fusedSpeed, (v) => v.calls),
      cloudCallsNoLookahead: byRtt(noLookahead, (v) => v.calls),
      halfSpeedFloor: byRtt(halfSpeed, (v) => ({
        bytesPerSec: v.bytesPerSec,
        fusedShare: v.fusedShare,
        p99: v.p99,
        calls: v.calls,
      })),
      speedFloorCurve: floorCurve.map((v) => ({
        minSpeedShare: v.minSpeedShare,
        bytesPerSec: v.bytesPerSec,
        shareOfEdgeSpeed: v.shareOfEdgeSpeed,
        fusedShare: v.fusedShare,
        p99: v.p99,
      })),
      realtimeBitsPerByte: realtime,
    },
  };
}

const byRtt = <T, U>(record: Record<string, T>, pick: (v: T) => U) =>
  Object.fromEntries(Object.entries(record).map(([k, v]) => [k, pick(v)]));

/** Greedy generation of GENERATED_BYTES after each prompt: bytes/s overall and per-byte latency percentiles. */
async function timeGeneration(
  source: ByteSource,
  prompts: readonly string[],
): Promise<{ bytesPerSec: number; p50: number; p95: number; p99: number }> {
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

/**
 * Each client's held-out windows read through a fused source under real time (each byte's
 * distribution is what generation would have had: the cloud's when it came within the deadline and
 * the floor, else the edge's), in bits per byte after a prompt of REALTIME_PROMPT bytes; beside the
 * edge alone and offline fusion (one echo call) on the same bytes. Two windows per client.
 */
async function realtimeQuality(
  clients: readonly { test: { documents: string[] } }[],
  fused: (k: number) => FusedByteSource,
  edgeOnly: (k: number) => SpeculativeByteSource,
): Promise<{ fused: number; edge: number; offline: number; fusedShare: number }> {
  const bits = { fused: 0, edge: 0, offline: 0 };
  let bytes = 0;
  let positions = 0;
  let fusedPositions = 0;
  for (const [k, c] of clients.entries()) {
    const source = fused(k);
    for (const window of windowsOf(c.test.documents).slice(0, 2)) {
      const prompt = window.slice(0, REALTIME_PROMPT);
      const all = new TextEncoder().encode(window);
      const from = new TextEncoder().encode(prompt).length;
      const edge = await edgeOnly(k).score(window);
      const offline = await fused(k).score(window);
      const session = await source.start(prompt);
      for (let t = from; t < all.length; t++) {
        const byte = all[t] as number;
        bits.fused -= Math.log2((await session.next())[byte] as number);
        session.push(byte);
        bits.edge -= Math.log2(edge[t]![byte] as number);
        bits.offline -= Math.log2(offline[t]![byte] as number);
        bytes++;
      }
      session.close();
    }
    positions += source.stats.positions;
    fusedPositions += source.stats.fused;
  }
  return {
    fused: bits.fused / bytes,
    edge: bits.edge / bytes,
    offline: bits.offline / bytes,
    fusedShare: fusedPositions / positions,
  };
}
