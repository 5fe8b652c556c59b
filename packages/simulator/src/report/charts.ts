/**
 * The charts of a simulation report as standalone SVG: Vega-Lite specifications compiled by vega-lite and
 * rendered by Vega's SVG string renderer (no browser and no node-canvas; text extents are estimated).
 * Each builder takes plain rows, so the same charts serve any scenario.
 */
import { View, parse } from 'vega';
import { type TopLevelSpec, compile } from 'vega-lite';

/** A method's held-out metric on one task after a round (round 0: before any training). */
export interface RoundPoint {
  task: string;
  method: string;
  round: number;
  value: number;
}

/** One client's final held-out metric under one method. */
export interface ClientPoint {
  task: string;
  client: string;
  method: string;
  value: number;
}

/** Bytes a client sent or received over a whole job. */
export interface ClientBytes {
  client: string;
  direction: 'sent' | 'received';
  bytes: number;
}

export interface RoundTime {
  method: string;
  round: number;
  seconds: number;
}

/** The cluster the server put a client in at a round. */
export interface ClusterCell {
  client: string;
  task: string;
  round: number;
  cluster: string;
}

/** A difference between two methods' mean client figures on a task, with its interval. */
export interface DifferenceRow {
  task: string;
  /** e.g. `floe - local` */
  pair: string;
  mean: number;
  low: number;
  high: number;
}

const WIDTH = 260;
const HEIGHT = 160;

/** Renders a Vega-Lite specification to an SVG document. */
export async function renderSvg(spec: TopLevelSpec): Promise<string> {
  const view = new View(parse(compile(spec).spec), { renderer: 'none' });
  try {
    return await view.toSVG();
  } finally {
    view.finalize();
  }
}

/** Rows with the panel title of their task: the task and its metric's name. */
function withMetric<T extends { task: string }>(rows: readonly T[], metrics: Record<string, string>) {
  return rows.map((r) => ({ ...r, metric: `${r.task}: ${metrics[r.task] ?? 'metric'}` }));
}

/** Metric per round, one line per method, one panel per task (each task its own scale and metric). */
export function metricPerRound(points: readonly RoundPoint[], metrics: Record<string, string>): TopLevelSpec {
  return {
    title: 'Held-out metric per round',
    data: { values: withMetric(points, metrics) },
    facet: { column: { field: 'metric', type: 'nominal', title: null } },
    spec: {
      width: WIDTH,
      height: HEIGHT,
      mark: { type: 'line', point: true },
      encoding: {
        x: { field: 'round', type: 'ordinal', title: 'round' },
        y: { field: 'value', type: 'quantitative', scale: { zero: false }, title: null },
        color: { field: 'method', type: 'nominal' },
      },
    },
    resolve: { scale: { y: 'independent' } },
  };
}

/** Each client's final metric, bars grouped by client, one panel per task. */
export function perClient(points: readonly ClientPoint[], metrics: Record<string, string>): TopLevelSpec {
  return {
    title: 'Held-out metric per client',
    data: { values: withMetric(points, metrics) },
    facet: { row: { field: 'metric', type: 'nominal', title: null } },
    spec: {
      width: { step: 9 },
      height: HEIGHT,
      mark: 'bar',
      encoding: {
        x: { field: 'client', type: 'nominal', title: null },
        xOffset: { field: 'method', type: 'nominal' },
        y: { field: 'value', type: 'quantitative', scale: { zero: false }, title: null },
        color: { field: 'method', type: 'nominal' },
      },
    },
    resolve: { scale: { y: 'independent', x: 'independent' } },
  };
}

/**
 * Each compared pair's difference as a point on its 95% interval, against a line at 0: an interval
 * crossing the line does not tell the two methods apart. One panel per task, in the task's units.
 */
export function differences(rows: readonly DifferenceRow[], metrics: Record<string, string>): TopLevelSpec {
  return {
    title: {
      text: 'Differences of the mean client figure, 95% paired bootstrap intervals',
      subtitle: 'left of the dashed line favours a where lower is better (bits per byte), b where higher is better',
    },
    data: { values: withMetric(rows, metrics) },
    facet: { row: { field: 'metric', type: 'nominal', title: null } },
    spec: {
      width: WIDTH * 1.5,
      height: { step: 22 },
      layer: [
        {
          // one line per panel, not one per row of the panel's data
          data: { values: [{}] },
          mark: { type: 'rule', color: '#999', strokeDash: [4, 3] },
          encoding: { x: { datum: 0, type: 'quantitative' } },
        },
        {
          mark: { type: 'rule', strokeWidth: 2 },
          encoding: {
            y: { field: 'pair', type: 'nominal', title: null, sort: null },
            x: { field: 'low', type: 'quantitative', title: 'difference (a - b)' },
            x2: { field: 'high' },
          },
        },
        {
          mark: { type: 'point', filled: true, size: 50 },
          encoding: {
            y: { field: 'pair', type: 'nominal', sort: null },
            x: { field: 'mean', type: 'quantitative' },
          },
        },
      ],
    },
    resolve: { scale: { x: 'independent' } },
  };
}

/** Bytes sent and received per client. */
export function bytesPerClient(rows: readonly ClientBytes[]): TopLevelSpec {
  return {
    title: 'Bytes per client',
    width: { step: 14 },
    height: HEIGHT,
    data: { values: rows.map((r) => ({ ...r, MiB: r.bytes / 2 ** 20 })) },
    mark: 'bar',
    encoding: {
      x: { field: 'client', type: 'nominal', title: null },
      xOffset: { field: 'direction', type: 'nominal' },
      y: { field: 'MiB', type: 'quantitative', title: 'MiB' },
      color: { field: 'direction', type: 'nominal' },
    },
  };
}

/** Wall time of each round, one line per method. */
export function roundTimes(rows: readonly RoundTime[]): TopLevelSpec {
  return {
    title: 'Round time',
    width: WIDTH,
    height: HEIGHT,
    data: { values: [...rows] },
    mark: { type: 'line', point: true },
    encoding: {
      x: { field: 'round', type: 'ordinal', title: 'round' },
      y: { field: 'seconds', type: 'quantitative', title: 'seconds' },
      color: { field: 'method', type: 'nominal' },
    },
  };
}

/** The cluster of each client at each round, clients ordered by their true task. */
export function clusterAssignment(cells: readonly ClusterCell[]): TopLevelSpec {
  return {
    title: 'Cluster per client and round',
    width: { step: 22 },
    height: { step: 14 },
    data: { values: cells.map((c) => ({ ...c, label: `${c.client} (${c.task})` })) },
    mark: 'rect',
    encoding: {
      x: { field: 'round', type: 'ordinal', title: 'round' },
      y: { field: 'label', type: 'nominal', title: null, sort: { field: 'task' } },
      color: { field: 'cluster', type: 'nominal' },
    },
  };
}
