/**
 * The rank planner as a pure function, on a training cost of the kind calibration measures (figures of
 * the order this repository's hosts measure for edge-small): every plan fits its budgets, none larger
 * would, weaker devices get smaller plans, and the binding budget is named.
 */
import { describe, expect, it } from 'vitest';
import { MODEL_PRESETS, architectureOf } from '@floe/model';
import type { DeviceProfile } from '@floe/shared';
import {
  PlanError,
  type TrainingCost,
  type Workload,
  TIERS,
  deviceProfile,
  estimatePlan,
  planRound,
} from '../src/index.js';

const ARCHITECTURE = architectureOf(MODEL_PRESETS['edge-small']);
const LAYERS = ARCHITECTURE.numHiddenLayers;
const COST: TrainingCost = {
  seqLen: 128,
  threads: 2,
  secondsPerRow: { base: 0.0032, perLayer: 0.00125 },
  microBatchFactor: { 1: 1.95, 2: 1.25, 4: 1.3, 8: 1 },
  memoryMiB: { fixed: 41, perLayer: 6.3, perRow: 2.1, perRowLayer: 4 },
  buildSeconds: 0.2,
  warmupSeconds: 0.05,
  hostGflops: 60,
};
const WORKLOAD: Workload = {
  targetModules: ['q_proj', 'v_proj', 'up_proj', 'down_proj'],
  maxRank: 8,
  localSteps: 20,
  batchSize: 8,
};

function profile(overrides: Partial<DeviceProfile> = {}): DeviceProfile {
  return deviceProfile(COST.hostGflops, undefined, overrides);
}

/** Every candidate the planner may choose among. */
function candidates(workload: Workload) {
  const out: { rank: number; layers: number; microBatch: number }[] = [];
  for (let layers = 1; layers <= LAYERS; layers++)
    for (let rank = 1; rank <= workload.maxRank; rank++)
      for (const microBatch of [1, 2, 4, 8])
        if (workload.batchSize % microBatch === 0) out.push({ rank, layers, microBatch });
  return out;
}

const layersOf = (plan: ReturnType<typeof planRound>) => plan.plan.layers?.length ?? LAYERS;

describe('planRound', () => {
  it('gives each tier a plan within its budgets, and no plan with more adapter parameters fits', () => {
    for (const tier of Object.keys(TIERS)) {
      const p = deviceProfile(COST.hostGflops, tier);
      const plan = planRound(p, ARCHITECTURE, WORKLOAD, COST);
      expect(plan.estimates.peakMemoryMiB).toBeLessThanOrEqual(p.memoryMiB);
      expect(plan.estimates.roundSeconds).toBeLessThanOrEqual(p.roundBudgetSec);
      // the plan is the top layers, contiguous
      const layers = plan.plan.layers ?? [...Array(LAYERS).keys()];
      expect(layers).toEqual(Array.from({ length: layers.length }, (_, i) => LAYERS - layers.length + i));
      for (const c of candidates(WORKLOAD)) {
        const e = estimatePlan(p, ARCHITECTURE, WORKLOAD, COST, c);
        const fits = e.peakMemoryMiB <= p.memoryMiB && e.roundSeconds <= 0.8 * p.roundBudgetSec;
        if (fits) expect(e.adapterParameters).toBeLessThanOrEqual(plan.adapterParameters);
      }
    }
  });

  it('gives a weaker profile a smaller plan', () => {
    const plans = ['phone-low', 'phone-high', 'laptop'].map((tier) =>
      planRound(deviceProfile(COST.hostGflops, tier), ARCHITECTURE, WORKLOAD, COST),
    );
    const params = plans.map((p) => p.adapterParameters);
    expect(params[0]).toBeLessThan(params[2] as number);
    expect(params[0]).toBeLessThanOrEqual(params[1] as number);
    expect(params[1]).toBeLessThanOrEqual(params[2] as number);
    // and along every single budget, less never plans more
    for (const key of ['memoryMiB', 'computeGflops', 'uplinkMbps', 'roundBudgetSec'] as const) {
      let last = Infinity;
      for (const scale of [1, 0.5, 0.25, 0.1, 0.05]) {
        const base = profile({ memoryMiB: 96, uplinkMbps: 4, roundBudgetSec: 4 });
        try {
          const plan = planRound({ ...base, [key]: base[key] * scale }, ARCHITECTURE, WORKLOAD, COST);
          expect(plan.adapterParameters).toBeLessThanOrEqual(last);
          last = plan.adapterParameters;
        } catch (error) {
          expect(error).toBeInstanceOf(PlanError);
          last = 0;
        }
      }
    }
  });

  it('names memory when memory binds, and trades micro-batch before layers', () => {
    const tight = planRound(profile({ memoryMiB: 70 }), ARCHITECTURE, WORKLOAD, COST);
    expect(tight.limitedBy).toBe('memory');
    expect(tight.microBatch).toBe(1);
    expect(layersOf(tight)).toBeLessThan(LAYERS);
    const roomy = planRound(profile({ memoryMiB: 4096 }), ARCHITECTURE, WORKLOAD, COST);
    expect(roomy.limitedBy).toBe('none');
    expect(roomy.plan.rank).toBe(WORKLOAD.maxRank);
    expect(layersOf(roomy)).toBe(LAYERS);
  });

  it('names time when the round budget or the job deadline binds', () => {
    const slow = planRound(profile({ computeGflops: 4, memoryMiB: 4096 }), ARCHITECTURE, WORKLOAD, COST);
    expect(slow.limitedBy).toBe('time');
    expect(layersOf(slow)).toBeLessThan(LAYERS);
    const deadline = planRound(
      profile({ memoryMiB: 4096, computeGflops: 15 }),
      ARCHITECTURE,
      { ...WORKLOAD, roundDeadlineSec: 4 },
      COST,
    );
    expect(deadline.estimates.roundSeconds).toBeLessThanOrEqual(0.8 * 4);
    expect(deadline.limitedBy).toBe('time');
  });

  it('sends fewer adapter parameters over a narrow uplink, down to a lower rank when one layer is too much', () => {
    const wide = planRound(profile({ memoryMiB: 4096, roundBudgetSec: 30 }), ARCHITECTURE, WORKLOAD, COST);
    const narrow = planRound(
      profile({ uplinkMbps: 0.05, memoryMiB: 4096, roundBudgetSec: 30 }),
      ARCHITECTURE,
      WORKLOAD,
      COST,
    );
    expect(narrow.adapterParameters).toBeLessThan(wide.adapterParameters);
    expect(narrow.estimates.uploadSeconds).toBeGreaterThan(narrow.estimates.trainSeconds);
    const thin = planRound(
      profile({ uplinkMbps: 0.01, memoryMiB: 4096, roundBudgetSec: 30 }),
      ARCHITECTURE,
      WORKLOAD,
      COST,
    );
    expect(layersOf(thin)).toBe(1);
    expect(thin.plan.rank).toBeLessThan(WORKLOAD.maxRank);
    expect(thin.limitedBy).toBe('time');
  });

  it('refuses with PlanError when not even one layer at rank 1 fits', () => {
    expect(() => planRound(profile({ memoryMiB: 10 }), ARCHITECTURE, WORKLOAD, COST)).toThrow(PlanError);
    expect(() => planRound(profile({ computeGflops: 0 }), ARCHITECTURE, WORKLOAD, COST)).toThrow(PlanError);
    expect(() => planRound(profile(), ARCHITECTURE, { ...WORKLOAD, targetModules: ['not_a_module'] }, COST)).toThrow(
      PlanError,
    );
  });
});
