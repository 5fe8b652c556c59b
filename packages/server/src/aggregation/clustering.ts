/**
 * Task-aware clustering: clients whose updates point in different directions train different tasks
 * and should not be averaged together. Each update is sketched by a fixed random projection of its
 * products dW, the sketches are normalized (so Euclidean k-means on them clusters by cosine
 * similarity), the number of clusters is chosen by the silhouette score, and cluster ids are matched
 * to the previous round's centroids so that they stay stable across rounds.
 */
import { kmeans } from 'ml-kmeans';
import { type LoraAdapter, hashString } from '@floe/shared';

/**
 * A d-dimensional sketch of the concatenated products (alpha / r) B A of an adapter: coordinate k is
 * sum over modules of <u_k v_k^T, dW> = (u_k^T B)(A v_k) * alpha / r, with fixed Gaussian u_k, v_k per
 * module. Costs d * r * (out + in) per module instead of forming dW.
 */
export class UpdateSketch {
  private readonly projections = new Map<string, { u: Float32Array[]; v: Float32Array[] }>();

  constructor(
    readonly dimensions = 128,
    readonly seed = 0,
  ) {}

  private projection(path: string, out: number, inn: number): { u: Float32Array[]; v: Float32Array[] } {
    const key = `${path}:${out}x${inn}`;
    let p = this.projections.get(key);
    if (!p) {
      let state = (this.seed ^ hashString(key)) >>> 0;
      const gaussian = () => {
        // Box-Muller over a small LCG: reproducible for the same (seed, module)
        state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
        const a = (state + 1) / 4294967297;
        state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
        const b = state / 4294967296;
        return Math.sqrt(-2 * Math.log(a)) * Math.cos(2 * Math.PI * b);
      };
      const vector = (n: number) => Float32Array.from({ length: n }, gaussian);
      p = {
        u: Array.from({ length: this.dimensions }, () => vector(out)),
        v: Array.from({ length: this.dimensions }, () => vector(inn)),
      };
      this.projections.set(key, p);
    }
    return p;
  }

  sketch(adapter: LoraAdapter): Float64Array {
    const out = new Float64Array(this.dimensions);
    for (const [path, f] of [...adapter.modules].sort(([a], [b]) => (a < b ? -1 : 1))) {
      const { u, v } = this.projection(path, f.outFeatures, f.inFeatures);
      const scale = adapter.alpha / f.rank;
      for (let k = 0; k < this.dimensions; k++) {
        const uk = u[k] as Float32Array;
        const vk = v[k] as Float32Array;
        let dot = 0;
        for (let j = 0; j < f.rank; j++) {
          let uB = 0;
          for (let i = 0; i < f.outFeatures; i++) uB += (uk[i] as number) * (f.B[i * f.rank + j] as number);
          let Av = 0;
          const row = j * f.inFeatures;
          for (let i = 0; i < f.inFeatures; i++) Av += (f.A[row + i] as number) * (vk[i] as number);
          dot += uB * Av;
        }
        out[k] = (out[k] as number) + dot * scale;
      }
    }
    return out;
  }
}

function normalized(x: Float64Array): number[] {
  const norm = Math.hypot(...x) || 1;
  return Array.from(x, (v) => v / norm);
}

function distance(a: readonly number[], b: readonly number[]): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += ((a[i] as number) - (b[i] as number)) ** 2;
  return Math.sqrt(s);
}

/** Mean silhouette of a labelling (Rousseeuw 1987); 0 when there is a single cluster. */
export function silhouette(points: readonly number[][], labels: readonly number[]): number {
  const clusters = [...new Set(labels)];
  if (clusters.length < 2) return 0;
  let total = 0;
  for (const [i, p] of points.entries()) {
    const meanTo = (c: number) => {
      let sum = 0;
      let n = 0;
      points.forEach((q, j) => {
        if (labels[j] === c && j !== i) {
          sum += distance(p, q);
          n++;
        }
      });
      return n === 0 ? 0 : sum / n;
    };
    const own = labels[i] as number;
    if (labels.filter((l) => l === own).length === 1) continue; // a singleton scores 0
    const a = meanTo(own);
    const b = Math.min(...clusters.filter((c) => c !== own).map(meanTo));
    total += (b - a) / Math.max(a, b);
  }
  return total / points.length;
}

/** Adjusted Rand index of two labellings (Hubert and Arabie 1985): 1 for identical partitions. */
export function adjustedRandIndex(a: readonly (number | string)[], b: readonly (number | string)[]): number {
  const pairs = (n: number) => (n * (n - 1)) / 2;
  const table = new Map<string, number>();
  const rows = new Map<number | string, number>();
  const cols = new Map<number | string, number>();
  a.forEach((x, i) => {
    const y = b[i] as number | string;
    table.set(`${String(x)}\u0000${String(y)}`, (table.get(`${String(x)}\u0000${String(y)}`) ?? 0) + 1);
    rows.set(x, (rows.get(x) ?? 0) + 1);
    cols.set(y, (cols.get(y) ?? 0) + 1);
  });
  const index = [...table.values()].reduce((s, n) => s + pairs(n), 0);
  const rowSum = [...rows.values()].reduce((s, n) => s + pairs(n), 0);
  const colSum = [...cols.values()].reduce((s, n) => s + pairs(n), 0);
  const expected = (rowSum * colSum) / pairs(a.length);
  const max = (rowSum + colSum) / 2;
  return max === expected ? 1 : (index - expected) / (max - expected);
}

export interface Clustering {
  /** Stable cluster id per update, in input order. */
  ids: number[];
  /** Centroid (in normalized sketch space) per cluster id, to keep ids stable next round. */
  centroids: Map<number, number[]>;
  silhouette: number;
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
      .filter(([id]) => !taken.has(id))
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
  for (let k = 2; k <= Math.min(options.maxClusters, points.length - 1); k++) {
    const result = kmeans(points, k, { seed: options.seed ?? 0, initialization: 'kmeans++' });
    const score = silhouette(points, result.clusters);
    if (score > best.score) best = { labels: result.clusters, centroids: result.centroids, score };
  }
  if (best.score < (options.minSilhouette ?? 0.25)) best = single;
  const idOf = stableIds(best.labels, best.centroids, options);
  return {
    ids: best.labels.map((l) => idOf[l] as number),
    centroids: new Map(best.centroids.map((c, i) => [idOf[i] as number, c])),
    silhouette: best.score,
  };
}

function meanOf(points: readonly number[][]): number[] {
  const out = new Array<number>(points[0]?.length ?? 0).fill(0);
  for (const p of points) p.forEach((x, i) => (out[i] = (out[i] as number) + x / points.length));
  return out;
}
