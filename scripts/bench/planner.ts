/**
 * The rank planner against reality: calibrates this host (six short training runs), plans a round for
 * every device tier, runs each planned round three times in a fresh process (a slower tier is emulated
 * by pausing after each step) and compares the planner's estimated training time and memory with the
 * medians measured. Workload: edge-small, 20 local steps of 8 x 128-byte rows, q/v/up/down, rank <= 8.
 */
import { TIERS, calibrate, deviceProfile, median, planRound, probeInChild } from '@floe/edge-client';
import { architectureOf, loadCheckpoint } from '@floe/model';
import type { BenchResult } from '../lib/bench-report.js';

const MODEL = 'models/edge-small';
const SEQ = 128;
const TARGET_MODULES = ['q_proj', 'v_proj', 'up_proj', 'down_proj'];
const WORKLOAD = { targetModules: TARGET_MODULES, maxRank: 8, localSteps: 20, batchSize: 8 };
const REPEATS = 3;

const percent = (estimate: number, measured: number) => `${((100 * (estimate - measured)) / measured).toFixed(0)}%`;

export async function run(): Promise<BenchResult> {
  const { config } = await loadCheckpoint(MODEL);
  const started = performance.now();
  const cost = await calibrate({
    model: MODEL,
    config,
    seqLen: SEQ,
    targetModules: TARGET_MODULES,
    onProgress: (done, total, what) => console.log(`calibration ${done}/${total}: ${what}`),
  });
  const calibrationSeconds = (performance.now() - started) / 1000;
  console.log(`calibrated in ${calibrationSeconds.toFixed(1)} s: ${cost.hostGflops.toFixed(1)} effective GFLOP/s`);
  const rows: BenchResult['rows'] = [];
  const tiers: Record<string, unknown> = {};
  for (const tier of Object.keys(TIERS)) {
    const profile = deviceProfile(cost.hostGflops, tier);
    const plan = planRound(profile, architectureOf(config), WORKLOAD, cost);
    const runs = [];
    for (let i = 0; i < REPEATS; i++) {
      console.log(`${tier}: measuring the planned round (${i + 1}/${REPEATS})`);
      runs.push(
        await probeInChild({
          model: MODEL,
          seqLen: SEQ,
          microBatch: plan.microBatch,
          batchSize: WORKLOAD.batchSize,
          rank: plan.plan.rank,
          alpha: 16,
          targetModules: TARGET_MODULES,
          layers: plan.plan.layers ?? null,
          steps: WORKLOAD.localSteps,
          slowdown: plan.estimates.slowdown,
          threads: cost.threads,
        }),
      );
    }
    const trainSeconds = median(runs.map((r) => r.stepSeconds.reduce((a, b) => a + b, 0)));
    const memoryMiB = median(runs.map((r) => r.peakMiB - r.baselineMiB));
    const e = plan.estimates;
    rows.push({
      tier,
      layers: plan.plan.layers ? plan.plan.layers.join(',') : 'all',
      rank: plan.plan.rank,
      microBatch: plan.microBatch,
      'limited by': plan.limitedBy,
      'train s est': +e.trainSeconds.toFixed(2),
      'train s meas': +trainSeconds.toFixed(2),
      'time err': percent(e.trainSeconds, trainSeconds),
      'MiB est': +e.peakMemoryMiB.toFixed(1),
      'MiB meas': +memoryMiB.toFixed(1),
      'mem err': percent(e.peakMemoryMiB, memoryMiB),
      'round s est': +e.roundSeconds.toFixed(2),
    });
    tiers[tier] = { profile, plan, measured: { trainSeconds, memoryMiB, runs } };
  }
  return { rows, data: { workload: { model: MODEL, seqLen: SEQ, ...WORKLOAD }, calibrationSeconds, cost, tiers } };
}
