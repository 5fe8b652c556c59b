import { describe, expect, it } from 'vitest';
import type { LoraAdapter, LoraFactors } from '@floe/shared';
import { UpdateSketch, adjustedRandIndex, clusterSketches, silhouette } from '../src/index.js';

let state = 99;
function noise(): number {
  state = (Math.imul(state, 1103515245) + 12345) >>> 0;
  return state / 2 ** 32 - 0.5;
}

const PATHS = ['model.layers.0.self_attn.q_proj', 'model.layers.1.mlp.down_proj'];
const [OUT, IN] = [24, 32];
const vector = (n: number) => Float32Array.from({ length: n }, noise);

/** Per module, a rank-one direction u v^T. */
type Direction = Map<string, { u: Float32Array; v: Float32Array }>;
const direction = (): Direction => new Map(PATHS.map((p) => [p, { u: vector(OUT), v: vector(IN) }]));

/**
 * A client update of rank 2 whose product is `common + task` per module (B = [u_c, u_t], A = [v_c; v_t]),
 * scaled per client, plus noise on every factor entry. Real updates share a component (the format, the
 * language) beside what their task adds, so tasks are not orthogonal: `commonWeight` sets how much.
 */
function clientUpdate(common: Direction, task: Direction, commonWeight: number, noiseLevel: number): LoraAdapter {
  const scale = 1 + noise();
  const modules = new Map<string, LoraFactors>();
  for (const path of PATHS) {
    const [c, t] = [common.get(path)!, task.get(path)!];
    const A = new Float32Array(2 * IN);
    const B = new Float32Array(OUT * 2);
    for (let i = 0; i < IN; i++) {
      A[i] = scale * commonWeight * c.v[i]! + noiseLevel * noise();
      A[IN + i] = scale * t.v[i]! + noiseLevel * noise();
    }
    for (let o = 0; o < OUT; o++) {
      B[o * 2] = c.u[o]! + noiseLevel * noise();
      B[o * 2 + 1] = t.u[o]! + noiseLevel * noise();
    }
    modules.set(path, { rank: 2, inFeatures: IN, outFeatures: OUT, A, B });
  }
  return { alpha: 8, modules };
}

const cosine = (a: Float64Array, b: Float64Array) => {
  let [ab, aa, bb] = [0, 0, 0];
  a.forEach((x, i) => {
    ab += x * b[i]!;
    aa += x * x;
    bb += b[i]! * b[i]!;
  });
  return ab / Math.sqrt(aa * bb);
};
const mean = (xs: Float64Array[]) => xs[0]!.map((_, k) => xs.reduce((s, x) => s + x[k]!, 0) / xs.length);

describe('task-aware clustering', () => {
  const sketch = new UpdateSketch(64, 1);
  const common = direction();
  const tasks = [direction(), direction()];
  const truth = Array.from({ length: 12 }, (_, i) => i % 2);
  const COMMON_WEIGHT = 1.2;
  const updates = truth.map((t) => clientUpdate(common, tasks[t]!, COMMON_WEIGHT, 0.15));
  const sketches = updates.map((u) => sketch.sketch(u));

  it('separates two tasks that share most of their update (cosine > 0.5 between task means) with ARI 1.0', () => {
    // what the case shows: the tasks' mean updates are far from orthogonal, yet every client is closer to
    // its own task's mean than to the other's
    const means = [0, 1].map((t) => mean(sketches.filter((_, i) => truth[i] === t)));
    const between = cosine(means[0]!, means[1]!);
    expect(between).toBeGreaterThan(0.5);
    sketches.forEach((x, i) => expect(cosine(x, means[truth[i]!]!)).toBeGreaterThan(cosine(x, means[1 - truth[i]!]!)));
    const result = clusterSketches(sketches, { maxClusters: 4 });
    expect(new Set(result.ids).size).toBe(2);
    expect(adjustedRandIndex(result.ids, truth)).toBe(1);
  });

  it('keeps one cluster when all updates come from one task', () => {
    const same = Array.from({ length: 10 }, () => clientUpdate(common, tasks[0]!, COMMON_WEIGHT, 0.15));
    const result = clusterSketches(
      same.map((u) => sketch.sketch(u)),
      { maxClusters: 4 },
    );
    expect(new Set(result.ids)).toEqual(new Set([0]));
  });

  it('keeps one cluster when two tasks differ less than the clients of one task do', () => {
    // the task directions weigh 1/8 of the common one and the client noise is larger than that
    const blurred = truth.map((t) => clientUpdate(common, tasks[t]!, 8, 0.6));
    const result = clusterSketches(
      blurred.map((u) => sketch.sketch(u)),
      { maxClusters: 4 },
    );
    expect(new Set(result.ids)).toEqual(new Set([0]));
  });

  it('leaves a lone outlier in the cluster of the others, and splits off two of a kind', () => {
    const many = Array.from({ length: 10 }, () => clientUpdate(common, tasks[0]!, COMMON_WEIGHT, 0.15));
    const other = () => clientUpdate(common, tasks[1]!, COMMON_WEIGHT, 0.15);
    const lone = clusterSketches(
      [...many, other()].map((u) => sketch.sketch(u)),
      { maxClusters: 4 },
    );
    expect(lone.ids).toEqual(new Array(11).fill(0));
    expect(lone.view).toBe('none');
    const pair = clusterSketches(
      [...many, other(), other()].map((u) => sketch.sketch(u)),
      { maxClusters: 4 },
    );
    expect(adjustedRandIndex(pair.ids, [...new Array(10).fill(0), 1, 1])).toBe(1);
  });

  it('keeps cluster ids stable across rounds whatever the client order', () => {
    const first = clusterSketches(sketches, { maxClusters: 4 });
    const nextRound = truth.map((t) => clientUpdate(common, tasks[t]!, COMMON_WEIGHT, 0.15));
    const order = [...nextRound.keys()].reverse();
    const second = clusterSketches(
      order.map((i) => sketch.sketch(nextRound[i]!)),
      { maxClusters: 4, previous: first.centroids, seed: 7 },
    );
    order.forEach((client, position) => {
      const sameTaskInFirst = first.ids[truth.indexOf(truth[client]!)];
      expect(second.ids[position]).toBe(sameTaskInFirst);
    });
  });

  it('keeps each group of clients under its id when the directions drift between rounds', () => {
    const first = clusterSketches(sketches, { maxClusters: 4 });
    // next round every direction moves (centroids far from the old ones); the clients stay together
    const [driftedCommon, drifted] = [direction(), [direction(), direction()]];
    const next = truth.map((t) => sketch.sketch(clientUpdate(driftedCommon, drifted[t]!, COMMON_WEIGHT, 0.15)));
    const byCentroid = clusterSketches(next, { maxClusters: 4, previous: first.centroids });
    const byMembers = clusterSketches(next, { maxClusters: 4, previous: first.centroids, previousIds: first.ids });
    expect(byMembers.ids).toEqual(first.ids);
    // what membership adds: by centroids alone both groups look new and get fresh ids
    expect(new Set(byCentroid.ids)).toEqual(new Set([2, 3]));
    // clients new to the job (no previous id) take the id of the group they cluster with
    const newcomers = clusterSketches(next, {
      maxClusters: 4,
      previous: first.centroids,
      previousIds: first.ids.map((id, i) => (i < 2 ? undefined : id)),
    });
    expect(newcomers.ids).toEqual(first.ids);
  });

  it('computes the adjusted Rand index and silhouette as defined', () => {
    expect(adjustedRandIndex([0, 0, 1, 1], [5, 5, 9, 9])).toBe(1);
    expect(adjustedRandIndex([0, 0, 1, 1], [0, 1, 0, 1])).toBeCloseTo(-0.5, 10);
    expect(silhouette([[0], [0.1], [10], [10.1]], [0, 0, 1, 1])).toBeGreaterThan(0.98);
    expect(silhouette([[0], [1]], [0, 0])).toBe(0);
  });

  it('sketches are linear in the product: scaling B scales the sketch', () => {
    const u = updates[0]!;
    const doubled: LoraAdapter = {
      alpha: 8,
      modules: new Map([...u.modules].map(([p, f]) => [p, { ...f, B: f.B.map((x) => 2 * x) }])),
    };
    const a = sketch.sketch(u);
    const b = sketch.sketch(doubled);
    a.forEach((x, k) => expect(b[k]).toBeCloseTo(2 * x, 6));
  });
});
