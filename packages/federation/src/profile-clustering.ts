/**
 * The profile view of task-aware clustering: where in the network an update acts. A client's profile is
 * the log of each module's change norm, centred, so only its shape counts (rank and learning rate move
 * all norms together). Two clients are compared on the modules both changed (devices may adapt
 * different layers): the root-mean-square gap of their profiles centred over those modules.
 *
 * Clusters come from k-medoids on those distances with k chosen by silhouette, and a split stands only
 * when it is significant: its silhouette must beat what the same search finds on profiles whose
 * module values were shuffled among clients of the same plan (a permutation test that keeps every
 * module's spread and whatever the plans explain, e.g. a rank-8 update spreading its change more
 * evenly than a rank-2 one, but removes any other grouping). Small samples of one task reach
 * silhouettes of 0.3-0.4 by chance; the test, not a fixed threshold, says when a split is real
 * (decision 0013).
 */
import { Random } from '@floe/shared';
import { hasOutlierCluster, MIN_CLUSTER_SIZE, silhouetteOfDistances } from './cluster-quality.js';
import type { UpdateSignature } from './sketch.js';

/** A split must be this unlikely under shuffled profiles. */
export const PROFILE_SIGNIFICANCE = 0.01;
const PERMUTATIONS = 199;
/** Above this many updates the permutation test runs on a seeded sample of them (its cost is quadratic). */
const MAX_TESTED = 64;

/** Per update, module path -> log of its change norm (modules it did not change are absent). */
export type Profile = Map<string, number>;

export function profileOf(signature: UpdateSignature): Profile {
  const out: Profile = new Map();
  for (const [path, norm] of signature.moduleNorms)
    if (norm > 0 && Number.isFinite(norm)) out.set(path, Math.log(norm));
  return out;
}

/** RMS gap of two profiles centred over the modules both hold; NaN with fewer than 2 such modules. */
export function profileDistance(a: Profile, b: Profile): number {
  const common: [number, number][] = [];
  for (const [path, x] of a) {
    const y = b.get(path);
    if (y !== undefined) common.push([x, y]);
  }
  if (common.length < 2) return Number.NaN;
  const meanA = common.reduce((s, [x]) => s + x, 0) / common.length;
  const meanB = common.reduce((s, [, y]) => s + y, 0) / common.length;
  let sum = 0;
  for (const [x, y] of common) sum += (x - meanA - (y - meanB)) ** 2;
  return Math.sqrt(sum / common.length);
}

function distances(profiles: readonly Profile[]): number[][] | undefined {
  const matrix = profiles.map((p) => profiles.map((q) => (p === q ? 0 : profileDistance(p, q))));
  return matrix.some((row) => row.some((d) => Number.isNaN(d))) ? undefined : matrix;
}

/** k-medoids (alternating assignment and medoid update) from a k-means++-style seeding; best of a few starts. */
export function kMedoids(dist: readonly (readonly number[])[], k: number, random: Random): number[] {
  const n = dist.length;
  let best: { labels: number[]; cost: number } | undefined;
  for (let start = 0; start < 4; start++) {
    const medoids = [random.integer(n)];
    while (medoids.length < k) {
      const weights = dist.map((row) => Math.min(...medoids.map((m) => row[m] as number)) ** 2);
      const total = weights.reduce((a, b) => a + b, 0);
      let r = random.next() * total;
      let pick = weights.findIndex((w) => (r -= w) < 0);
      if (pick < 0 || medoids.includes(pick)) pick = [...Array(n).keys()].find((i) => !medoids.includes(i)) as number;
      medoids.push(pick);
    }
    let labels: number[] = [];
    for (let iteration = 0; iteration < 30; iteration++) {
      labels = dist.map((row) => {
        let nearest = 0;
        medoids.forEach((m, c) => {
          if ((row[m] as number) < (row[medoids[nearest] as number] as number)) nearest = c;
        });
        return nearest;
      });
      let moved = false;
      medoids.forEach((m, c) => {
        const members = labels.flatMap((l, i) => (l === c ? [i] : []));
        let bestMember = m;
        let bestCost = Infinity;
        for (const candidate of members) {
          const cost = members.reduce((s, i) => s + (dist[candidate]?.[i] as number), 0);
          if (cost < bestCost) [bestMember, bestCost] = [candidate, cost];
        }
        if (bestMember !== m) {
          medoids[c] = bestMember;
          moved = true;
        }
      });
      if (!moved) break;
    }
    const cost = labels.reduce((s, l, i) => s + (dist[i]?.[medoids[l] as number] as number), 0);
    if (!best || cost < best.cost) best = { labels, cost };
  }
  return (best as { labels: number[] }).labels;
}

interface Split {
  labels: number[];
  silhouette: number;
}

function bestSplit(dist: readonly (readonly number[])[], maxClusters: number, random: Random): Split | undefined {
  let best: Split | undefined;
  for (let k = 2; k <= Math.min(maxClusters, Math.floor(dist.length / MIN_CLUSTER_SIZE)); k++) {
    const labels = kMedoids(dist, k, random);
    if (hasOutlierCluster(labels)) continue;
    const score = silhouetteOfDistances(dist, labels);
    if (!best || score > best.silhouette) best = { labels, silhouette: score };
  }
  return best;
}

/** Profiles with each module's values shuffled across the clients of one stratum that hold it. */
function shuffledProfiles(profiles: readonly Profile[], strata: readonly string[], random: Random): Profile[] {
  const out = profiles.map(() => new Map<string, number>());
  const modules = new Set(profiles.flatMap((p) => [...p.keys()]));
  for (const path of modules)
    for (const stratum of new Set(strata)) {
      const holders = profiles.flatMap((p, i) => (p.has(path) && strata[i] === stratum ? [i] : []));
      const values = random.shuffled(holders.map((i) => profiles[i]?.get(path) as number));
      holders.forEach((i, k) => out[i]?.set(path, values[k] as number));
    }
  return out;
}

export interface ProfileClustering extends Split {
  /** Share of shuffled profiles whose best split scored at least as well (with the +1 correction). */
  pValue: number;
  /** The distances the split was found on, to score other labellings (the previous memberships). */
  distances: number[][];
}

/**
 * The best split of the updates by profile and its significance; undefined when profiles cannot be
 * compared (two updates share fewer than two modules) or there are fewer than 4 updates.
 */
export function clusterProfiles(
  signatures: readonly UpdateSignature[],
  options: {
    maxClusters: number;
    seed?: number;
    /** Shuffle only among updates of one stratum (default: each update's plan, `signature.stratum`). */
    strata?: readonly string[];
  },
): ProfileClustering | undefined {
  const profiles = signatures.map(profileOf);
  const dist = distances(profiles);
  if (!dist || profiles.length < 4) return undefined;
  const random = new Random(0x9e3779b9 ^ (options.seed ?? 0));
  const observed = bestSplit(dist, options.maxClusters, random);
  if (!observed) return undefined;
  // the null distribution: the same search on shuffled profiles (on a sample when there are many)
  const sample =
    profiles.length > MAX_TESTED
      ? [...profiles.keys()].sort(() => random.next() - 0.5).slice(0, MAX_TESTED)
      : [...profiles.keys()];
  const tested = sample.map((i) => profiles[i] as Profile);
  const strata = sample.map((i) => options.strata?.[i] ?? signatures[i]?.stratum ?? '');
  const reference =
    sample.length === profiles.length
      ? observed.silhouette
      : silhouetteOfDistances(
          sample.map((i) => sample.map((j) => dist[i]?.[j] as number)),
          sample.map((i) => observed.labels[i] as number),
        );
  let atLeast = 0;
  for (let t = 0; t < PERMUTATIONS; t++) {
    const shuffled = distances(shuffledProfiles(tested, strata, random));
    const split = shuffled && bestSplit(shuffled, options.maxClusters, random);
    if (split && split.silhouette >= reference) atLeast++;
  }
  return { ...observed, pValue: (atLeast + 1) / (PERMUTATIONS + 1), distances: dist };
}
