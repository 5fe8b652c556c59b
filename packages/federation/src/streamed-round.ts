/**
 * `aggregateRound` over updates read one at a time, for rounds too large to hold: each update is folded
 * into its cluster's running sums. When the job clusters or clips, a first pass keeps what those need
 * of each update (its sketch, its module norms, its metrics: a few kilobytes) and the fold is a second
 * pass: the source must then give the same updates in the same order each time (the store's order by
 * client).
 * Robust combiners (median, trimmed mean) need every update at once: such rounds are read whole,
 * which the server bounds by a cap on the job's clients per round (`MAX_HELD_UPDATES`), as it bounds
 * clustered rounds (`MAX_CLUSTERED_UPDATES`) and the fold's sums (`MAX_FOLD_BYTES`).
 */
import { type Kernels, type LoraAdapter, loraProductNorm } from '@floe/shared';
import { strategyFold } from './fold.js';
import { type ModuleNorms, clipLimits, clipWith, moduleNorms, robustOptions, updateWeight } from './robust.js';
import {
  type FederationSpec,
  type FederationState,
  type RoundAggregate,
  type RoundUpdate,
  aggregateRound,
  clusterRound,
  roundResult,
  signer,
  unclustered,
} from './round.js';

/** A round's accepted updates, read anew on each call, in the same order every time. */
export type UpdateSource = () => AsyncIterable<RoundUpdate>;

/** Rounds whose aggregation needs every update at once are held whole up to this many updates. */
export const MAX_HELD_UPDATES = 2000;

/** Clustering compares every pair of a round's updates (n x n distances): at most this many per round. */
export const MAX_CLUSTERED_UPDATES = 4000;

/** A fold's running sums (every cluster of a round) may take at most this many bytes. */
export const MAX_FOLD_BYTES = 2 * 1024 ** 3;

/** Whether a job's rounds can be folded update by update (its combiner is the weighted mean). */
export function foldable(spec: FederationSpec): boolean {
  return robustOptions(spec).combiner === 'mean';
}

export async function aggregateRoundStreamed(
  spec: FederationSpec,
  state: FederationState,
  stored: (clusterId: number) => LoraAdapter | undefined,
  source: UpdateSource,
  round: number,
  kernels: Kernels = {},
): Promise<RoundAggregate> {
  if (!foldable(spec)) {
    const all: RoundUpdate[] = [];
    for await (const update of source()) all.push(update);
    return aggregateRound(spec, state, stored, all, round, kernels);
  }
  const space = spec.strategy === 'flexlora' ? 'product' : 'factors';
  const productNorm = (f: Parameters<typeof loraProductNorm>[0]) => loraProductNorm(f, spec.alpha);
  const clip = spec.clipUpdates === 'median';
  const signature = signer(spec, stored);

  // pass 1, when clustering or clipping needs to see the whole round first: each update without its factors
  const twoPasses = spec.clustering || clip;
  const seen: Pick<RoundUpdate, 'clientId' | 'numSamples' | 'metrics'>[] = [];
  const signatures: ReturnType<typeof signature>[] = [];
  const norms: ModuleNorms[] = [];
  if (twoPasses) {
    for await (const u of source()) {
      seen.push({ clientId: u.clientId, numSamples: u.numSamples, metrics: u.metrics });
      if (spec.clustering) signatures.push(signature(u));
      if (clip) norms.push(moduleNorms(u.adapter, space, productNorm));
    }
  }
  const decided = spec.clustering
    ? clusterRound(
        spec,
        state,
        signatures,
        seen.map((u) => u.clientId),
        round,
      )
    : undefined;
  const clusterIds = decided?.clusterIds;
  const limits = new Map<number, ReturnType<typeof clipLimits>>();
  if (clip) {
    for (const id of new Set(clusterIds ?? [0])) {
      limits.set(id, clipLimits(norms.filter((_, i) => (clusterIds?.[i] ?? 0) === id)));
    }
  }

  // the fold: each update into its cluster's sums
  const folds = new Map<number, ReturnType<typeof strategyFold>>();
  let index = 0;
  for await (const u of source()) {
    if (!twoPasses) seen.push({ clientId: u.clientId, numSamples: u.numSamples, metrics: u.metrics });
    else if (u.clientId !== seen[index]?.clientId) {
      throw new Error(`the round's updates changed between passes (${u.clientId} at ${index})`);
    }
    const clusterId = clusterIds?.[index] ?? 0;
    let fold = folds.get(clusterId);
    if (!fold)
      folds.set(clusterId, (fold = strategyFold(spec.strategy, spec.alpha, { maxRank: spec.maxRank, kernels })));
    const limit = limits.get(clusterId);
    await fold.add({
      clientId: u.clientId,
      numSamples: updateWeight(spec, u.numSamples),
      adapter: limit ? clipWith(u.adapter, limit, space, productNorm) : u.adapter,
    });
    index++;
  }
  if (index !== seen.length) throw new Error(`the round's updates changed between passes (${index} of ${seen.length})`);
  const clustered = decided ?? unclustered(state, seen.length);
  const adapters = new Map<number, LoraAdapter>();
  for (const [clusterId, fold] of folds) adapters.set(clusterId, (await fold.finish()).forRank(spec.maxRank));
  return roundResult(spec, state, seen, clustered, adapters);
}
