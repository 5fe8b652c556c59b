/**
 * Sub-splits confirmed over two rounds: two tasks that sit close together beside a far third are
 * separated once two rounds find the same split of their cluster, one task is not split by chance, and a
 * confirmed split survives a round whose top-level split merges it back.
 */
import { describe, expect, it } from 'vitest';
import { Random } from '@floe/shared';
import {
  type FederationSpec,
  type FederationState,
  type UpdateSignature,
  adjustedRandIndex,
  clusterRound,
  clusterUpdates,
  refineClusters,
  refines,
} from '../src/index.js';
import { MODULES, attention, mlp, signature } from './signatures.js';

const upper = (lift: number) => MODULES.map((m) => (/layers\.[23]\./.test(m) ? lift : 0));

interface State {
  clusterOf: Record<string, number>;
  pending: Record<string, string>;
}

/** One round's clustering as aggregateRound runs it: the round's split, then the sub-splits. */
function round(signatures: UpdateSignature[], clients: string[], state: State, seed: number): number[] {
  const clustering = clusterUpdates(signatures, {
    maxClusters: 8,
    previousIds: clients.map((c) => state.clusterOf[c]),
    seed,
  });
  const refined = refineClusters({
    signatures,
    clientIds: clients,
    clusterIds: clustering.ids,
    pending: state.pending,
    usedIds: Object.values(state.clusterOf),
    seed,
  });
  clients.forEach((c, i) => (state.clusterOf[c] = refined.clusterIds[i] as number));
  state.pending = refined.pending;
  return refined.clusterIds;
}

// twelve clients, four per task, in two plan strata as the simulation's tiers make them
const TASKS = [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2];
const CLIENTS = TASKS.map((t, i) => `client-${String(i).padStart(2, '0')}`);
const STRATA = TASKS.map((_, i) => (i % 4 === 0 || i % 4 === 3 ? 'low' : 'high'));
const PATTERNS = [attention(0.3), mlp(0.3), upper(2)];

describe('refineClusters', () => {
  it('separates two close tasks once two rounds agree, keeping the far one apart', () => {
    for (let seed = 0; seed < 3; seed++) {
      const random = new Random(500 + seed);
      const draw = () => TASKS.map((t, i) => signature(PATTERNS[t]!, 0.08, random, STRATA[i]));
      const state: State = { clusterOf: {}, pending: {} };
      const first = round(draw(), CLIENTS, state, 0);
      // the round's split takes the far task apart; the close two wait for a second round
      expect(adjustedRandIndex(first, [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1])).toBe(1);
      expect(Object.keys(state.pending)).toHaveLength(1);
      const second = round(draw(), CLIENTS, state, 1);
      expect(adjustedRandIndex(second, TASKS)).toBe(1);
      // and a third round keeps the three clusters with their ids
      const third = round(draw(), CLIENTS, state, 2);
      expect(third).toEqual(second);
    }
  });

  it('does not split one task by chance (at most one false split in 20 two-round draws)', () => {
    let splits = 0;
    for (let seed = 0; seed < 20; seed++) {
      const random = new Random(900 + seed);
      const draw = () => TASKS.map((_, i) => signature(attention(0.3), 0.08, random, STRATA[i]));
      const state: State = { clusterOf: {}, pending: {} };
      round(draw(), CLIENTS, state, 0);
      const second = round(draw(), CLIENTS, state, 1);
      if (new Set(second).size > 1) splits++;
    }
    expect(splits).toBeLessThanOrEqual(1);
  });

  it('reads a refinement as one partition inside another', () => {
    expect(refines([0, 0, 1, 1, 2, 2], [0, 0, 0, 0, 1, 1])).toBe(true);
    expect(refines([0, 0, 1, 1, 2, 2], [0, 0, 0, 1, 1, 1])).toBe(false);
    expect(refines([3, 3, 5], [7, 7, 7])).toBe(true);
  });
});

describe('clusterRound', () => {
  it("gives each client the same cluster whatever order its round's updates are stored in", () => {
    // the server reads a round's updates ordered by client id, and client ids are random: the clusters,
    // sub-splits included, must not depend on that order (a simulation replays from its seed)
    const spec = { maxClusters: 8 } as FederationSpec;
    const near = [attention(0.2), mlp(0.2), upper(2)];
    for (let seed = 0; seed < 12; seed++) {
      const random = new Random(700 + seed);
      const draws = [0, 1, 2].map(() => TASKS.map((t, i) => signature(near[t]!, 0.15, random, STRATA[i])));
      const run = (order: number[]) => {
        let state: FederationState = { centroids: [], clusterOf: {} };
        for (const [r, draw] of draws.entries()) {
          const result = clusterRound(
            spec,
            state,
            order.map((i) => draw[i]!),
            order.map((i) => CLIENTS[i]!),
            r,
          );
          const clusterOf = { ...state.clusterOf };
          order.forEach((i, k) => (clusterOf[CLIENTS[i]!] = result.clusterIds[k]!));
          state = { centroids: [...result.centroids], clusterOf, pendingSplits: result.pendingSplits };
        }
        return CLIENTS.map((c) => state.clusterOf[c]);
      };
      const identity = CLIENTS.map((_, i) => i);
      const keys = identity.map(() => random.next());
      const shuffled = [...identity].sort((a, b) => keys[a]! - keys[b]!);
      expect(run(shuffled), `seed ${seed}`).toEqual(run(identity));
    }
  });
});
