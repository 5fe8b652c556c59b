/**
 * One measured training workload in a process of its own, so that its memory is its own: loads the
 * checkpoint, builds the ORT trainer for a plan's shapes, runs `steps` steps on random rows and prints
 * one JSON line (build and step times, memory before and at its peak). Run by `calibrate` and by the
 * planner benchmark; the argument is the JSON of a ProbeRequest.
 */
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { OrtTrainer, loadCheckpoint } from '@floe/model';
import { Random } from '@floe/shared';
import { initialAdapter } from './local-trainer.js';

export interface ProbeRequest {
  model: string;
  seqLen: number;
  microBatch: number;
  batchSize: number;
  rank: number;
  alpha: number;
  targetModules: string[];
  layers: number[] | null;
  steps: number;
  /** >= 1: pause after each step for (slowdown - 1) times its duration, as a simulated slower device does. */
  slowdown: number;
  threads: number;
}

export interface ProbeResult {
  buildSeconds: number;
  /** Wall time of each step, pauses of a slowdown included. */
  stepSeconds: number[];
  /** The computing part of each step (its wall time without the pause). */
  computeSeconds: number[];
  /** Resident memory once the checkpoint is loaded, before any training session (MiB). */
  baselineMiB: number;
  /** Largest resident memory seen after the trainer was built and after every step (MiB). */
  peakMiB: number;
}

const MiB = 1024 * 1024;

export async function runProbe(request: ProbeRequest): Promise<ProbeResult> {
  const checkpoint = await loadCheckpoint(request.model);
  const { config, weights } = checkpoint;
  globalThis.gc?.();
  const baseline = process.memoryUsage().rss;
  let peak = baseline;
  const sample = () => (peak = Math.max(peak, process.memoryUsage().rss));
  const adapter = initialAdapter(
    config,
    {
      rank: request.rank,
      alpha: request.alpha,
      targetModules: request.targetModules,
      ...(request.layers ? { layers: request.layers } : {}),
    },
    1,
  );
  const built = performance.now();
  const trainer = await OrtTrainer.create(config, weights, {
    learningRate: 1e-4,
    maxGradNorm: 1,
    adapter,
    microBatch: request.microBatch,
    seqLen: request.seqLen,
    threads: request.threads,
  });
  const buildSeconds = (performance.now() - built) / 1000;
  sample();
  const random = new Random(7);
  const row = () => Array.from({ length: request.seqLen }, () => 32 + random.integer(90));
  const stepSeconds: number[] = [];
  const computeSeconds: number[] = [];
  for (let step = 0; step < request.steps; step++) {
    const rows = Array.from({ length: request.batchSize }, row);
    const started = performance.now();
    await trainer.step({ inputIds: rows, targets: rows, weights: rows.map((r) => r.map(() => 1)) });
    const spent = performance.now() - started;
    computeSeconds.push(spent / 1000);
    if (request.slowdown > 1) await new Promise((resolve) => setTimeout(resolve, (request.slowdown - 1) * spent));
    stepSeconds.push((performance.now() - started) / 1000);
    sample();
  }
  await trainer.dispose();
  return { buildSeconds, stepSeconds, computeSeconds, baselineMiB: baseline / MiB, peakMiB: peak / MiB };
}

/** Runs the probe in a fresh Node process (through tsx when running from source) and returns its result. */
export function probeInChild(request: ProbeRequest, timeoutMs = 300_000): Promise<ProbeResult> {
  const fromSource = import.meta.url.endsWith('.ts');
  const main = fileURLToPath(new URL(fromSource ? './probe-main.ts' : './probe-main.js', import.meta.url));
  const child = spawn(
    process.execPath,
    [...(fromSource ? ['--import', 'tsx', '--conditions=floe-source'] : []), main, JSON.stringify(request)],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let out = '';
  let err = '';
  child.stdout.on('data', (chunk: Buffer) => (out += chunk.toString()));
  child.stderr.on('data', (chunk: Buffer) => (err += chunk.toString()));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.once('error', reject);
    child.once('exit', (code) => {
      clearTimeout(timer);
      const line = out.trim().split('\n').at(-1) ?? '';
      if (code === 0 && line.startsWith('{')) resolve(JSON.parse(line) as ProbeResult);
      else reject(new Error(`training probe exited with ${code ?? 'a signal'}: ${err.trim().slice(-500)}`));
    });
  });
}
