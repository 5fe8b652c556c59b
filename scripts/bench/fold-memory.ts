/**
 * One measurement of `pnpm bench scale`, in a process of its own so that its peak RSS is its own:
 * aggregating COUNT rank-8 edge-small flexlora updates (all seven projections of every layer) either
 * folded one at a time as the server's workers do (`fold`) or held together (`batch`, the path of
 * median/trimmed-mean jobs). Prints one JSON line. Usage: fold-memory.ts COUNT fold|batch
 */
import { type FederationSpec, type RoundUpdate, aggregateRound, aggregateRoundStreamed } from '@floe/federation';
import { LORA_MODULES, MODEL_PRESETS, architectureOf } from '@floe/model';
import { ortKernels } from '@floe/server';
import type { RoundStart } from '@floe/shared';
import { sampleAdapter } from '@floe/simulator';
import { peakRssMiB } from '../lib/process-memory.js';

const [countArg, mode] = process.argv.slice(2);
const count = Number(countArg);
if (!Number.isInteger(count) || count < 1 || (mode !== 'fold' && mode !== 'batch')) {
  console.error('usage: fold-memory.ts COUNT fold|batch');
  process.exit(2);
}
const ARCH = architectureOf(MODEL_PRESETS['edge-small']);
const MODULES = [...LORA_MODULES];
const spec: FederationSpec = {
  strategy: 'flexlora',
  clustering: false,
  maxRank: 8,
  alpha: 16,
  targetModules: MODULES,
  baseModel: { id: 'edge-small', sha256: '0'.repeat(64), architecture: ARCH },
  clientsPerRound: count,
};
const start: RoundStart = {
  type: 'round_start',
  jobId: 'bench',
  round: 0,
  clusterId: 0,
  deadline: 0,
  config: {
    baseModel: spec.baseModel,
    targetModules: MODULES,
    rank: 8,
    alpha: 16,
    localSteps: 1,
    learningRate: 1e-3,
    batchSize: 1,
  },
  adapter: null,
};
const update = (i: number): RoundUpdate => ({
  clientId: `c${String(i).padStart(6, '0')}`,
  numSamples: 50 + (i % 7) * 10,
  adapter: sampleAdapter(start, undefined, { seed: i % 2, scale: 0.02, noise: 0.5 }, i),
  metrics: { loss: 1 },
  assignment: { clientId: `c${i}`, rank: 8, clusterId: 0 },
});
const kernels = await ortKernels(1);
const baseline = await peakRssMiB('self');
const started = performance.now();
const state = { centroids: [], clusterOf: {} };
if (mode === 'fold') {
  await aggregateRoundStreamed(
    spec,
    state,
    () => undefined,
    async function* () {
      for (let i = 0; i < count; i++) yield await Promise.resolve(update(i));
    },
    0,
    kernels,
  );
} else {
  const all = Array.from({ length: count }, (_, i) => update(i));
  await aggregateRound(spec, state, () => undefined, all, 0, kernels);
}
console.log(
  JSON.stringify({
    count,
    mode,
    seconds: (performance.now() - started) / 1000,
    peakRssMiB: await peakRssMiB('self'),
    baselineRssMiB: baseline,
  }),
);
