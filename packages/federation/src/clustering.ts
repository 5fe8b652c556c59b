/**
 * Task-aware clustering: clients whose updates differ in kind train different tasks and should not be
 * averaged together. An update (what a client changed in a round) is looked at two ways:
 *
 * - its direction: a fixed random projection of its products dW, normalized, so that k-means groups by
 *   cosine similarity (k by silhouette, a split needs silhouette >= 0.25 and no cluster of one);
 * - its profile: where in the network it acts (profile-clustering.ts), split only when significant.
 *   Measured on real LoRA updates (decision 0013), directions after a few dozen Adam steps are close
 *   to orthogonal even within a task, while profiles separate tasks.
 *
 * The previous memberships compete too: a client keeps its cluster unless a new split fits this round's
 * updates clearly better, so one noisy round does not reshuffle the federation, and a cluster split in
 * two by a confirmed sub-split (refinement.ts) stays split while new splits only merge it back. Cluster ids stay
 * stable (membership first, then centroids for clients new to the job).
 */
import { kmeans } from 'ml-kmeans';
import {
  distanceMatrix,
  euclidean,
  hasOutlierCluster,
  MIN_CLUSTER_SIZE,
  silhouette,
  silhouetteOfDistances,
} from './cluster-quality.js';
import { clusterProfiles, PROFILE_SIGNIFICANCE } from './profile-clustering.js';
import { refines } from './refinement.js';
import type { UpdateSignature } from './sketch.js';

function normalized(x: Float64Array): number[] {
  const norm = Math.hypot(...x) || 1;
  return Array.from(x, (v) => v / norm);
}

const distance = euclidean;

export interface Clustering {
  /** Stable cluster id per update, in input order. */
  ids: number[];
  /** Centroid (in the chosen view's space) per cluster id, to place clients new to the job next round. */
  centroids: Map<number, number[]>;
  silhouette: number;
  /** Which view separated the updates; `none` when one cluster was kept. */
  view: 'direction' | 'profile' | 'none';
}

export interface ClusterOptions {
  maxClusters: number;
  /** The cluster id each sketch's client had before (undefined for a client new to the job). */
  previousIds?: readonly (number | undefined)[];
  /** Below this silhouette, one cluster is kept: the updates do not separate. */
  minSilhouette?: number;
  seed?: number;
  previous?: Map<number, number[]>;
}

/**
 * An id for each new cluster: first the previous id most of its clients had (the largest overlaps are
 * matched first), then, for a cluster of clients new to the job, the closest unclaimed previous
 * centroid within chord distance 1 (cosine > 0.5), else a fresh id. Membership comes first because
 * centroids of deltas drift between rounds, and two tasks that share much of their update have
 * centroids closer than that drift.
 */
function stableIds(labels: readonly number[], centroids: readonly number[][], options: ClusterOptions): number[] {
  const previous = [...(options.previous ?? new Map<number, number[]>())];
  const idOf = new Array<number | undefined>(centroids.length).fill(undefined);
  const taken = new Set<number>();
  const overlap = new Map<string, { cluster: number; id: number; count: number }>();
  labels.forEach((cluster, i) => {
    const id = options.previousIds?.[i];
    if (id === undefined) return;
    const entry = overlap.get(`${cluster}:${id}`) ?? { cluster, id, count: 0 };
    entry.count++;
    overlap.set(`${cluster}:${id}`, entry);
  });
  const overlaps = [...overlap.values()];
  overlaps.sort((a, b) => b.count - a.count || a.id - b.id || a.cluster - b.cluster);
  for (const { cluster, id } of overlaps) {
    if (idOf[cluster] !== undefined || taken.has(id)) continue;
    idOf[cluster] = id;
    taken.add(id);
  }
  const known = [...previous.map(([id]) => id), ...(options.previousIds ?? []).filter((id) => id !== undefined)];
  let nextId = Math.max(-1, ...known) + 1;
  return centroids.map((centroid, cluster) => {
    const matched = idOf[cluster];
    if (matched !== undefined) return matched;
    const candidates = previous
      .filter(([id, c]) => !taken.has(id) && c.length === centroid.length)
      .sort(([, a], [, b]) => distance(centroid, a) - distance(centroid, b));
    const match = candidates[0];
    if (match && distance(centroid, match[1]) < 1) {
      taken.add(match[0]);
      return match[0];
    }
    return nextId++;
  });
}

/** Clusters sketches by direction; k in 1..maxClusters by silhouette; ids matched to `previous`. */
export function clusterSketches(sketches: readonly Float64Array[], options: ClusterOptions): Clustering {
  const points = sketches.map(normalized);
  const single = { labels: points.map(() => 0), centroids: [meanOf(points)], score: 0 };
  let best = single;
  for (let k = 2; k <= Math.min(options.maxClusters, Math.floor(points.length / MIN_CLUSTER_SIZE)); k++) {
    const result = kmeans(points, k, { seed: options.seed ?? 0, initialization: 'kmeans++' });
    if (hasOutlierCluster(result.clusters)) continue;
    const score = silhouette(points, result.clusters);
    if (score > best.score) best = { labels: result.clusters, centroids: result.centroids, score };
  }
  if (best.score < (options.minSilhouette ?? 0.25)) best = single;
  return finish(best, best === single ? 'none' : 'direction', options);
}

interface Partition {
  labels: number[];
  centroids: number[][];
  score: number;
}

function finish(best: Partition, view: Clustering['view'], options: ClusterOptions): Clustering {
  const idOf = stableIds(best.labels, best.centroids, options);
  return {
    ids: best.labels.map((l) => idOf[l] as number),
    centroids: new Map(best.centroids.map((c, i) => [idOf[i] as number, c])),
    silhouette: best.score,
    view,
  };
}

/** A new split must beat the previous memberships' silhouette by this much to replace them. */
const SWITCH_MARGIN = 0.1;

/** The previous memberships as a labelling of this round's updates; newcomers join the nearest cluster. */
function incumbentLabels(
  dist: readonly (readonly number[])[],
  previousIds: readonly (number | undefined)[],
): number[] | undefined {
  const known = [...new Set(previousIds.filter((id) => id !== undefined))];
  if (known.length < 2) return undefined;
  return previousIds.map((id, i) => {
    if (id !== undefined) return id;
    let best = known[0] as number;
    let bestDistance = Infinity;
    for (const c of known) {
      const members = previousIds.flatMap((other, j) => (other === c ? [dist[i]?.[j] as number] : []));
      const mean = members.reduce((a, b) => a + b, 0) / members.length;
      if (mean < bestDistance) [best, bestDistance] = [c, mean];
    }
    return best;
  });
}

/**
 * Clusters a round's updates: the best of the direction split, a significant profile split and the
 * previous memberships (see the file comment); one cluster when none holds.
 */
export function clusterUpdates(signatures: readonly UpdateSignature[], options: ClusterOptions): Clustering {
  // a function of the set of updates, not of the order they arrived in: cluster them in a canonical order
  const order = canonicalOrder(signatures);
  const result = clusterInOrder(
    order.map((i) => signatures[i]!),
    { ...options, ...(options.previousIds ? { previousIds: order.map((i) => options.previousIds![i]) } : {}) },
  );
  const ids = new Array<number>(signatures.length);
  order.forEach((original, position) => (ids[original] = result.ids[position]!));
  return { ...result, ids };
}

/**
 * Positions of `signatures` sorted by their sketches: an order that depends on the updates alone, not on
 * the order they arrived or were stored in (client ids are random).
 */
export function canonicalOrder(signatures: readonly UpdateSignature[]): number[] {
  return [...signatures.keys()].sort((a, b) => compareSketches(signatures[a]!.sketch, signatures[b]!.sketch));
}

function compareSketches(a: Float64Array, b: Float64Array): number {
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return (a[i] as number) - (b[i] as number);
  return 0;
}

function clusterInOrder(signatures: readonly UpdateSignature[], options: ClusterOptions): Clustering {
  const direction = clusterSketches(
    signatures.map((s) => s.sketch),
    options,
  );
  // the null of the profile test keeps what is already explained: each update's plan and its cluster
  const strata = signatures.map((s, i) => `${s.stratum}|${options.previousIds?.[i] ?? 'new'}`);
  const profile = clusterProfiles(signatures, { maxClusters: options.maxClusters, seed: options.seed ?? 0, strata });
  const significant = profile && profile.pValue <= PROFILE_SIGNIFICANCE ? profile : undefined;
  let best: { labels: number[]; score: number; view: Clustering['view'] } | undefined =
    direction.view === 'direction'
      ? { labels: direction.ids, score: direction.silhouette, view: 'direction' }
      : undefined;
  if (significant && significant.silhouette > (best?.score ?? 0)) {
    best = { labels: significant.labels, score: significant.silhouette, view: 'profile' };
  }
  // the previous memberships stand unless a split fits this round clearly better
  const directionDistances = distanceMatrix(signatures.map((s) => normalized(s.sketch)));
  const incumbent =
    options.previousIds && incumbentLabels(profile?.distances ?? directionDistances, options.previousIds);
  if (incumbent) {
    const inProfile = profile ? silhouetteOfDistances(profile.distances, incumbent) : -1;
    const inDirection = silhouetteOfDistances(directionDistances, incumbent);
    const score = Math.max(inProfile, inDirection);
    // a confirmed sub-split (refinement.ts) stands while this round's split only merges what it separated
    const finer =
      best !== undefined && new Set(incumbent).size > new Set(best.labels).size && refines(incumbent, best.labels);
    if (finer || (score > 0 && (!best || score + SWITCH_MARGIN >= best.score))) {
      return {
        ids: incumbent,
        centroids: new Map(),
        silhouette: score,
        view: inProfile >= inDirection ? 'profile' : 'direction',
      };
    }
  }
  if (best?.view === 'direction') return direction;
  const labels = best?.labels ?? signatures.map(() => 0);
  const points = signatures.map((s) => normalized(s.sketch));
  const clusters = [...new Set(labels)].sort((a, b) => a - b);
  const centroids = clusters.map((c) => meanOf(points.filter((_, i) => labels[i] === c)));
  const dense = labels.map((l) => clusters.indexOf(l));
  return finish({ labels: dense, centroids, score: best?.score ?? 0 }, best?.view ?? 'none', options);
}

function meanOf(points: readonly number[][]): number[] {
  const out = new Array<number>(points[0]?.length ?? 0).fill(0);
  for (const p of points) p.forEach((x, i) => (out[i] = (out[i] as number) + x / points.length));
  return out;
}
