/**
 * The profile view of clustering on signatures whose module-norm profiles are drawn from stated
 * distributions: tasks that act on different modules separate, one task does not, and a difference
 * that the clients' plans explain is not taken for a task.
 */
import { describe, expect, it } from 'vitest';
import { Random } from '@floe/shared';
import {
  PROFILE_SIGNIFICANCE,
  type UpdateSignature,
  adjustedRandIndex,
  clusterProfiles,
  clusterUpdates,
  profileDistance,
} from '../src/index.js';
import { attention, mlp, signature } from './signatures.js';

describe('profile clustering', () => {
  it('measures the shape of a profile, not its scale', () => {
    const random = new Random(1);
    const a = signature(attention(1), 0, random);
    const scaled = { ...a, moduleNorms: new Map([...a.moduleNorms].map(([m, n]) => [m, 10 * n])) };
    const profile = (s: UpdateSignature) => new Map([...s.moduleNorms].map(([m, n]) => [m, Math.log(n)]));
    expect(profileDistance(profile(a), profile(scaled))).toBeCloseTo(0, 12);
    expect(profileDistance(profile(a), profile(signature(mlp(1), 0, random)))).toBeCloseTo(1, 12);
  });

  it('separates two tasks that act on different modules, significantly, whatever the noise draw', () => {
    for (let seed = 0; seed < 5; seed++) {
      const random = new Random(100 + seed);
      const tasks = [0, 0, 0, 1, 1, 1];
      const signatures = tasks.map((t) => signature(t === 0 ? attention(0.6) : mlp(0.6), 0.15, random));
      const split = clusterProfiles(signatures, { maxClusters: 4, seed })!;
      expect(split.pValue).toBeLessThanOrEqual(PROFILE_SIGNIFICANCE);
      expect(adjustedRandIndex(split.labels, tasks)).toBe(1);
      // and the round's clustering takes the profile split when directions carry nothing
      const clustering = clusterUpdates(signatures, { maxClusters: 4, seed });
      expect(clustering.view).toBe('profile');
      expect(adjustedRandIndex(clustering.ids, tasks)).toBe(1);
    }
  });

  it('finds no significant split in clients of one task (at most the test level, over 40 draws)', () => {
    let significant = 0;
    let kept = 0;
    for (let seed = 0; seed < 40; seed++) {
      const random = new Random(500 + seed);
      const signatures = Array.from({ length: 6 }, () => signature(attention(0.6), 0.15, random));
      // undefined: no split of clusters of two or more was worth testing
      const split = clusterProfiles(signatures, { maxClusters: 4, seed });
      if (split && split.pValue <= PROFILE_SIGNIFICANCE) significant++;
      if (clusterUpdates(signatures, { maxClusters: 4, seed }).view === 'none') kept++;
    }
    // 0.01 x 40 = 0.4 expected false splits; 2 or more would happen with probability under 7%
    expect(significant).toBeLessThanOrEqual(1);
    expect(kept).toBeGreaterThanOrEqual(39);
  });

  it('does not take a difference explained by the plans for a task, unless told the plans are alike', () => {
    // one task; rank-2 clients spread their change differently from rank-8 ones
    const random = new Random(7);
    const plans = ['r2', 'r2', 'r2', 'r8', 'r8', 'r8'];
    const signatures = plans.map((plan) => signature(plan === 'r2' ? attention(0.6) : mlp(0.6), 0.15, random, plan));
    const withinPlans = clusterProfiles(signatures, { maxClusters: 4 })!;
    expect(withinPlans.pValue).toBeGreaterThan(PROFILE_SIGNIFICANCE);
    const ignoringPlans = clusterProfiles(signatures, { maxClusters: 4, strata: plans.map(() => '') })!;
    expect(ignoringPlans.pValue).toBeLessThanOrEqual(PROFILE_SIGNIFICANCE);
  });

  it('cannot compare updates that share fewer than two modules', () => {
    const random = new Random(3);
    const signatures = Array.from({ length: 4 }, (_, i) => {
      const s = signature(attention(0.6), 0.1, random);
      // each adapts one layer of its own
      s.moduleNorms = new Map([...s.moduleNorms].filter(([m]) => m.startsWith(`layers.${i}.`)));
      return s;
    });
    expect(clusterProfiles(signatures, { maxClusters: 4 })).toBeUndefined();
  });
});
