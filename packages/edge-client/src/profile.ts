/**
 * Device profiles. A real device declares its memory budget, link and round time budget and measures
 * its compute (calibration.ts); a simulated device names a tier, whose compute is a share of the host it
 * runs on (the simulated device is slowed to it, see LocalTrainer's `slowdown`). Every figure can be
 * overridden. Tier budgets are sized for this project's small checkpoints, not for phones running
 * billion-parameter models: what matters is that they bind differently, so the planner gives each a
 * different plan.
 */
import type { DeviceProfile } from '@floe/shared';

export interface Tier {
  /** Training memory the device allows a round, MiB (beyond the loaded model). */
  memoryMiB: number;
  /** Compute as a share of the host the simulation runs on. */
  computeShare: number;
  uplinkMbps: number;
  downlinkMbps: number;
  roundBudgetSec: number;
}

export const TIERS: Readonly<Record<string, Tier>> = {
  'phone-low': { memoryMiB: 64, computeShare: 0.25, uplinkMbps: 2, downlinkMbps: 10, roundBudgetSec: 20 },
  'phone-high': { memoryMiB: 128, computeShare: 0.5, uplinkMbps: 10, downlinkMbps: 40, roundBudgetSec: 20 },
  laptop: { memoryMiB: 1024, computeShare: 1, uplinkMbps: 50, downlinkMbps: 200, roundBudgetSec: 20 },
};

export class ProfileError extends Error {}

export type ProfileOverrides = Partial<Omit<DeviceProfile, 'tier'>>;

/**
 * The profile of a device of `tier` (a simulated class of device) or, without one, of this host as
 * measured: compute from the calibration (`hostGflops`), memory and links as declared (defaults: the
 * laptop tier's).
 */
export function deviceProfile(hostGflops: number, tier?: string, overrides: ProfileOverrides = {}): DeviceProfile {
  const spec = tier === undefined ? TIERS['laptop'] : TIERS[tier];
  if (!spec) throw new ProfileError(`unknown tier ${tier}; known: ${Object.keys(TIERS).join(', ')}`);
  const profile: DeviceProfile = {
    ...(tier === undefined ? {} : { tier }),
    memoryMiB: spec.memoryMiB,
    computeGflops: hostGflops * (tier === undefined ? 1 : spec.computeShare),
    uplinkMbps: spec.uplinkMbps,
    downlinkMbps: spec.downlinkMbps,
    roundBudgetSec: spec.roundBudgetSec,
    ...overrides,
  };
  for (const [name, value] of Object.entries(profile)) {
    if (name !== 'tier' && !(typeof value === 'number' && Number.isFinite(value) && value >= 0)) {
      throw new ProfileError(`profile ${name} must be a non-negative number, got ${String(value)}`);
    }
  }
  return profile;
}
