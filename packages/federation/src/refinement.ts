/**
 * Splitting a cluster into the tasks it still mixes, once two rounds agree (decision 0024).
 *
 * The round's clustering (clustering.ts) picks the split of all updates with the best silhouette, so two
 * tasks that sit close together beside a third far away stay in one cluster: the far split scores best.
 * Each cluster of at least 2 * MIN_SIDE updates is therefore tested on its own for a profile split
 * (profile-clustering.ts). Within one cluster the permutation test cannot reach the 1% level of a
 * top-level split: eight updates in two plan strata allow about 36 distinct relabellings, so p >= 0.03
 * however clear the split. A sub-split is instead taken when the same partition of the same clients is
 * the best one, at p <= SUBSPLIT_SIGNIFICANCE, in two consecutive rounds: under one task, two rounds'
 * best splits are independent draws among dozens of partitions and rarely coincide.
 */
import { clusterProfiles } from './profile-clustering.js';
import type { UpdateSignature } from './sketch.js';

export const SUBSPLIT_SIGNIFICANCE = 0.1;
/** Each side of a sub-split holds at least this many updates. */
export const MIN_SIDE = 3;

export interface Refinement {
  /** Cluster id per update, with the confirmed sub-splits applied. */
  clusterIds: number[];
  /** Per cluster id, the sub-split this round found (canonical partition of client ids), to confirm next round. */
  pending: Record<string, string>;
  /** Ids given to the clusters split off this round. */
  created: number[];
}

/** A partition of client ids written the same whatever the labels: sides sorted, ids sorted within. */
function canonical(sides: readonly (readonly string[])[]): string {
  return JSON.stringify(sides.map((s) => [...s].sort()).sort((a, b) => (a[0] ?? '').localeCompare(b[0] ?? '')));
}

export function refineClusters(input: {
  signatures: readonly UpdateSignature[];
  clientIds: readonly string[];
  clusterIds: readonly number[];
  /** Last round's pending sub-splits (see Refinement.pending). */
  pending: Readonly<Record<string, string>>;
  /** Every cluster id in use or used before: a new cluster takes the next. */
  usedIds: readonly number[];
  seed: number;
}): Refinement {
  const clusterIds = [...input.clusterIds];
  const pending: Record<string, string> = {};
  const created: number[] = [];
  let nextId = Math.max(-1, ...input.usedIds, ...input.clusterIds) + 1;
  for (const cluster of [...new Set(input.clusterIds)].sort((a, b) => a - b)) {
    const members = input.clusterIds.flatMap((id, i) => (id === cluster ? [i] : []));
    if (members.length < 2 * MIN_SIDE) continue;
    const split = clusterProfiles(
      members.map((i) => input.signatures[i] as UpdateSignature),
      { maxClusters: 2, seed: input.seed },
    );
    if (!split || split.pValue > SUBSPLIT_SIGNIFICANCE) continue;
    const sides = [0, 1].map((label) => members.filter((_, k) => split.labels[k] === label));
    if (sides.some((side) => side.length < MIN_SIDE)) continue;
    const partition = canonical(sides.map((side) => side.map((i) => input.clientIds[i] as string)));
    if (input.pending[String(cluster)] !== partition) {
      pending[String(cluster)] = partition;
      continue;
    }
    // confirmed: the side without the smallest client id leaves under a new id
    const smallest = [...members.map((i) => input.clientIds[i] as string)].sort()[0];
    const leaving = sides.find((side) => !side.some((i) => input.clientIds[i] === smallest)) ?? [];
    for (const i of leaving) clusterIds[i] = nextId;
    created.push(nextId++);
  }
  return { clusterIds, pending, created };
}

/** True when every cluster of `fine` lies inside one cluster of `coarse` (a refinement of it). */
export function refines(fine: readonly number[], coarse: readonly number[]): boolean {
  const inside = new Map<number, number>();
  return fine.every((f, i) => {
    const c = coarse[i] as number;
    const seen = inside.get(f);
    if (seen === undefined) inside.set(f, c);
    return seen === undefined || seen === c;
  });
}
