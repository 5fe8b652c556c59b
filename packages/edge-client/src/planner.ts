/**
 * Heterogeneity-aware LoRA planning: the largest adapter a device can train in a round within its time,
 * memory and link budgets. A pure function of the device profile, the model's shapes, the job's
 * workload and a calibration of this device's training cost (calibration.ts); the estimates it used
 * are returned beside the plan.
 *
 * What a plan can change and what it costs:
 * - layers: the top k layers. Backpropagation stops at the lowest adapted layer, so fewer layers
 *   save time and activation memory;
 * - micro-batch: rows per gradient run (a round's batch is accumulated), the main memory knob;
 * - rank: adapter bytes sent and received each round; compute and memory barely change with it.
 */
import Type, { type Static } from 'typebox';
import {
  type DeviceProfile,
  type ModelArchitecture,
  type RankPlan,
  isLoraModuleKind,
  linearShapeOf,
} from '@floe/shared';

const Measured = (description?: string) => Type.Number(description ? { description } : {});

/** How this device trains the job's model: fitted on measured workloads (calibration.ts). */
export const TrainingCost = Type.Object({
  seqLen: Type.Integer({ minimum: 1, description: 'sequence length the measurements used' }),
  threads: Type.Integer({ minimum: 1, description: 'ORT threads the measurements used' }),
  secondsPerRow: Type.Object(
    { base: Measured(), perLayer: Measured() },
    { description: 'seconds per row of a step at micro-batch 8: base + perLayer * (adapted top layers)' },
  ),
  microBatchFactor: Type.Record(Type.String({ pattern: '^[0-9]+$' }), Type.Number({ exclusiveMinimum: 0 }), {
    description: 'step time at micro-batch m relative to micro-batch 8 (1 at 8)',
  }),
  memoryMiB: Type.Object(
    { fixed: Measured(), perLayer: Measured(), perRow: Measured(), perRowLayer: Measured() },
    { description: 'training memory in MiB: fixed + perLayer * k + m * (perRow + perRowLayer * k)' },
  ),
  buildSeconds: Type.Number({ minimum: 0, description: 'seconds to build the training graphs (first round only)' }),
  warmupSeconds: Measured("extra seconds of a round's first step over a steady one (caches warming up)"),
  hostGflops: Type.Number({
    exclusiveMinimum: 0,
    description: 'effective GFLOP/s of this host on the all-layers workload at micro-batch 8',
  }),
});
export type TrainingCost = Static<typeof TrainingCost>;

export interface Workload {
  targetModules: readonly string[];
  maxRank: number;
  localSteps: number;
  batchSize: number;
  /** The job's round deadline, when known: the plan must also fit it. */
  roundDeadlineSec?: number | undefined;
}

export interface PlanEstimates {
  roundSeconds: number;
  trainSeconds: number;
  uploadSeconds: number;
  downloadSeconds: number;
  uploadBytes: number;
  peakMemoryMiB: number;
  /** Host time multiplier emulating this profile's compute (host GFLOP/s / profile GFLOP/s, at least 1). */
  slowdown: number;
}

export interface Plan {
  plan: RankPlan;
  microBatch: number;
  /** LoRA parameters trained (rank x (in + out) summed over the adapted modules). */
  adapterParameters: number;
  estimates: PlanEstimates;
  /** The budget that stopped a larger plan, or `none` when the largest plan fits. */
  limitedBy: 'none' | 'time' | 'memory';
}

export class PlanError extends Error {}

/** Share of the round budget a plan may fill: the rest absorbs the estimate's error. */
const BUDGET_SHARE = 0.8;
/** Frame overhead of an update beyond its tensors (names, metrics, header). */
const FRAME_OVERHEAD_BYTES = 4096;

function divisorsOf(batch: number): number[] {
  return [8, 4, 2, 1].filter((m) => m <= batch && batch % m === 0);
}

function ranksUpTo(maxRank: number): number[] {
  const ranks = [maxRank];
  for (let r = 2 ** Math.floor(Math.log2(maxRank)); r >= 1; r /= 2) if (r < maxRank) ranks.push(r);
  return ranks;
}

/** Estimates for one candidate plan. */
export function estimatePlan(
  profile: DeviceProfile,
  architecture: ModelArchitecture,
  workload: Workload,
  cost: TrainingCost,
  candidate: { rank: number; layers: number; microBatch: number },
): PlanEstimates & { adapterParameters: number } {
  const widths = workload.targetModules.map((kind) => {
    if (!isLoraModuleKind(kind)) throw new PlanError(`unknown LoRA module ${kind}`);
    const [out, inn] = linearShapeOf(architecture, kind);
    return out + inn;
  });
  const adapterParameters = candidate.rank * candidate.layers * widths.reduce((a, b) => a + b, 0);
  const uploadBytes = 4 * adapterParameters + FRAME_OVERHEAD_BYTES;
  const slowdown = profile.computeGflops > 0 ? Math.max(1, cost.hostGflops / profile.computeGflops) : Infinity;
  const factor = cost.microBatchFactor[candidate.microBatch] ?? 1;
  const stepSeconds =
    workload.batchSize * factor * (cost.secondsPerRow.base + cost.secondsPerRow.perLayer * candidate.layers);
  const trainSeconds = (workload.localSteps * stepSeconds + cost.warmupSeconds) * slowdown;
  const seconds = (bytes: number, mbps: number) => (mbps > 0 ? (8 * bytes) / (mbps * 1e6) : Infinity);
  const uploadSeconds = seconds(uploadBytes, profile.uplinkMbps);
  const downloadSeconds = seconds(uploadBytes, profile.downlinkMbps);
  const m = cost.memoryMiB;
  const peakMemoryMiB =
    m.fixed + m.perLayer * candidate.layers + candidate.microBatch * (m.perRow + m.perRowLayer * candidate.layers);
  return {
    adapterParameters,
    roundSeconds: downloadSeconds + trainSeconds + uploadSeconds,
    trainSeconds,
    uploadSeconds,
    downloadSeconds,
    uploadBytes,
    peakMemoryMiB,
    slowdown,
  };
}

/**
 * The plan with the most adapter parameters whose estimated round time fits the profile's budget (and
 * the job's deadline) and whose training memory fits the profile's memory; among equals, the fastest.
 * Throws PlanError when not even one layer at rank 1 fits.
 */
export function planRound(
  profile: DeviceProfile,
  architecture: ModelArchitecture,
  workload: Workload,
  cost: TrainingCost,
): Plan {
  const layers = architecture.numHiddenLayers;
  const budget = BUDGET_SHARE * Math.min(profile.roundBudgetSec || Infinity, workload.roundDeadlineSec ?? Infinity);
  let best: Plan | undefined;
  for (let k = layers; k >= 1; k--) {
    for (const rank of ranksUpTo(workload.maxRank)) {
      for (const microBatch of divisorsOf(workload.batchSize)) {
        const e = estimatePlan(profile, architecture, workload, cost, { rank, layers: k, microBatch });
        if (e.roundSeconds > budget || e.peakMemoryMiB > profile.memoryMiB) continue;
        const better =
          !best ||
          e.adapterParameters > best.adapterParameters ||
          (e.adapterParameters === best.adapterParameters && e.roundSeconds < best.estimates.roundSeconds);
        if (better) {
          const { adapterParameters, ...estimates } = e;
          best = {
            plan: {
              rank,
              targetModules: [...workload.targetModules],
              ...(k < layers ? { layers: Array.from({ length: k }, (_, i) => layers - k + i) } : {}),
            },
            microBatch,
            adapterParameters,
            estimates,
            limitedBy: 'none',
          };
        }
      }
    }
  }
  if (!best) {
    throw new PlanError(
      `no plan fits: even one layer at rank 1 needs more than ${budget.toFixed(1)} s or ${profile.memoryMiB} MiB on this profile`,
    );
  }
  if (best.plan.layers !== undefined || best.plan.rank !== workload.maxRank) {
    // what the largest plan runs into: memory at every micro-batch, or else time
    const largest = divisorsOf(workload.batchSize).map((microBatch) =>
      estimatePlan(profile, architecture, workload, cost, { rank: workload.maxRank, layers, microBatch }),
    );
    best.limitedBy = largest.every((e) => e.peakMemoryMiB > profile.memoryMiB) ? 'memory' : 'time';
  }
  return best;
}
