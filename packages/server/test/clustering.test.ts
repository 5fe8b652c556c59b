import { describe, expect, it } from 'vitest';
import type { LoraAdapter, LoraFactors } from '@floe/shared';
import { UpdateSketch, adjustedRandIndex, clusterSketches, silhouette } from '../src/index.js';

let state = 99;
function noise(): number {
  state = (Math.imul(state, 1103515245) + 12345) >>> 0;
  return state / 2 ** 32 - 0.5;
}

const PATHS = ['model.layers.0.self_attn.q_proj', 'model.layers.1.mlp.down_proj'];

/** A task's update direction: fixed factors per module. */
function direction(): Map<string, LoraFactors> {
  return new Map(
    PATHS.map((p) => [
      p,
      {
        rank: 4,
        inFeatures: 32,
        outFeatures: 24,
        A: Float32Array.from({ length: 128 }, noise),
        B: Float32Array.from({ length: 96 }, noise),
      },
    ]),
  );
}

/** A client update: its task's direction, scaled, plus client noise. */
function clientUpdate(task: Map<string, LoraFactors>, noiseLevel: number): LoraAdapter {
  const scale = 1 + noise();
  const modules = new Map<string, LoraFactors>();
  for (const [p, f] of task) {
    modules.set(p, {
      ...f,
      A: f.A.map((x) => scale * x + noiseLevel * noise()),
      B: f.B.map((x) => x + noiseLevel * noise()),
    });
  }
  return { alpha: 8, modules };
}

describe('task-aware clustering', () => {
  const sketch = new UpdateSketch(64, 1);
  const tasks = [direction(), direction()];
  const truth = Array.from({ length: 12 }, (_, i) => i % 2);
  const updates = truth.map((t) => clientUpdate(tasks[t]!, 0.15));

  it('puts two groups of clients whose updates come from two distributions into two clusters (ARI 1.0)', () => {
    const result = clusterSketches(
      updates.map((u) => sketch.sketch(u)),
      { maxClusters: 4 },
    );
    expect(new Set(result.ids).size).toBe(2);
    expect(adjustedRandIndex(result.ids, truth)).toBe(1);
  });

  it('keeps one cluster when all updates come from one distribution', () => {
    const same = Array.from({ length: 10 }, () => clientUpdate(tasks[0]!, 0.15));
    const result = clusterSketches(
      same.map((u) => sketch.sketch(u)),
      { maxClusters: 4 },
    );
    expect(new Set(result.ids)).toEqual(new Set([0]));
  });

  it('keeps cluster ids stable across rounds whatever the client order', () => {
    const first = clusterSketches(
      updates.map((u) => sketch.sketch(u)),
      { maxClusters: 4 },
    );
    const nextRound = truth.map((t) => clientUpdate(tasks[t]!, 0.15));
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
