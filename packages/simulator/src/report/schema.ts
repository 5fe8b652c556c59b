/**
 * `report.json` of `pnpm simulate`: its schema (checked before the report is written, and by CI on the
 * quick scenario), and the claims a report must show hold, each with the figures it rests on.
 */
import os from 'node:os';
import Type, { type Static } from 'typebox';

/** Every method compared on every task. */
export const METHODS = ['base', 'local', 'fedavg', 'hetlora', 'floe', 'cloud', 'fused', 'floe_fused'] as const;
export type Method = (typeof METHODS)[number];

const Figure = Type.Number({ description: 'a held-out metric (see the task for its direction)' });

const MethodResult = Type.Object(
  {
    mean: Figure,
    perClient: Type.Record(Type.String(), Figure, { description: 'client id -> held-out metric' }),
  },
  { additionalProperties: false },
);

const Interval = Type.Object(
  { mean: Type.Number(), low: Type.Number(), high: Type.Number() },
  { additionalProperties: false },
);

/** The method pairs the claims compare, `a-b`: the difference a - b of their mean client figures. */
export const COMPARED = [
  ['floe', 'fedavg'],
  ['floe', 'local'],
  ['floe_fused', 'floe'],
  ['floe_fused', 'cloud'],
] as const satisfies readonly (readonly [Method, Method])[];

const TaskResult = Type.Object(
  {
    metric: Type.String({ description: 'e.g. bits per byte, accuracy, exact match' }),
    higherIsBetter: Type.Boolean(),
    // optional: reports written before the intervals (2026-12-03) still validate and are checked on their means
    differences: Type.Optional(
      Type.Record(Type.String(), Interval, {
        description:
          "'a-b' -> a's mean client figure minus b's, with a 95% paired bootstrap interval over the held-out items (resampled within each client)",
      }),
    ),
    methods: Type.Object(
      Object.fromEntries(METHODS.map((m) => [m, MethodResult])) as Record<Method, typeof MethodResult>,
      {
        additionalProperties: false,
      },
    ),
  },
  { additionalProperties: false },
);

export const Machine = Type.Object({
  cpu: Type.String(),
  cores: Type.Number(),
  memoryGiB: Type.Number(),
  node: Type.String(),
});
export type Machine = Static<typeof Machine>;

/** The machine a report was measured on. */
export function thisMachine(): Machine {
  const cpus = os.cpus();
  return {
    cpu: cpus[0]?.model.trim() ?? 'unknown',
    cores: cpus.length,
    memoryGiB: Math.round(os.totalmem() / 2 ** 30),
    node: process.version,
  };
}

export const SimulationReport = Type.Object(
  {
    /** The scenario as run (flags or config file, defaults filled in). */
    config: Type.Record(Type.String(), Type.Unknown()),
    machine: Machine,
    tasks: Type.Record(Type.String(), TaskResult),
    /** Adjusted Rand index between the server's clusters (last round, Floe) and the clients' true tasks. */
    clusteringAri: Type.Number({ minimum: -1, maximum: 1 }),
    /** Bytes of clients' raw data found in the frames the server received (the frame inspector). */
    rawBytesAtServer: Type.Integer({ minimum: 0 }),
    bytesPerClient: Type.Record(
      Type.String(),
      Type.Object({ sent: Type.Integer({ minimum: 0 }), received: Type.Integer({ minimum: 0 }) }),
    ),
    /** Wall time of each round, per federated method. */
    roundSeconds: Type.Record(Type.String(), Type.Array(Type.Number({ minimum: 0 }))),
  },
  { additionalProperties: true },
);
export type SimulationReport = Static<typeof SimulationReport>;

export interface Claim {
  /** Stable name: `<task>:floe`, `speech:fusion`, `clustering`, `raw-data` (what `simulate check --require` takes). */
  id: string;
  claim: string;
  holds: boolean;
  /**
   * It does not hold, and the held-out items resolve it: a difference it rests on lies wholly on the
   * losing side of 0 (absent for claims without intervals). A claim that fails within noise is not refuted.
   */
  refuted?: boolean;
  /** The figures behind it. */
  detail: string;
}

/** A claim's state as printed: holds, fails within the noise of the held-out items, or is refuted by them. */
export const verdict = (c: Claim) => (c.holds ? 'holds' : c.refuted ? 'REFUTED' : 'DOES NOT HOLD');

/** `a` beats `b` in the metric's direction by more than float noise (a tie is not a win). */
const better = (higherIsBetter: boolean, a: number, b: number) =>
  (higherIsBetter ? a - b : b - a) > 1e-9 * Math.max(1, Math.abs(a), Math.abs(b));
const show = (x: number) => (Math.abs(x) >= 10 ? x.toFixed(1) : x.toFixed(4));

/** Whether `a-b`'s interval lies wholly where a loses to b, in the task's direction (false without one). */
function resolvedAgainst(result: SimulationReport['tasks'][string], key: string): boolean {
  const d = result.differences?.[key];
  if (!d) return false;
  return result.higherIsBetter ? d.high < 0 : d.low > 0;
}

/**
 * A difference with its interval, and whether the held-out items resolve it: an interval that holds 0
 * says the two methods are not told apart on this many items, whichever mean is ahead.
 */
function differenceNote(result: SimulationReport['tasks'][string], key: string, name: string): string {
  const d = result.differences?.[key];
  if (!d) return `${name}: no interval`;
  const resolved = d.low > 0 || d.high < 0 ? 'resolved' : 'within noise';
  return `${name} ${signed(d.mean)} [${signed(d.low)}, ${signed(d.high)}] (${resolved})`;
}

/** A difference with its sign, to four places (a float a hair below zero shows as +0.0000). */
export function signed(x: number): string {
  const shown = x.toFixed(4);
  return Number(shown) < 0 ? shown : `+${shown.replace('-', '')}`;
}

/**
 * The claims on a report: Floe beats FedAvg and local-only on every task's mean; Floe with
 * fusion beats Floe and the cloud alone on speech; clustering agreement at least `minAri`; no raw data
 * at the server.
 */
export function checkClaims(report: SimulationReport, minAri = 0.8): Claim[] {
  const claims: Claim[] = [];
  for (const [task, result] of Object.entries(report.tasks)) {
    const { floe, fedavg, local } = result.methods;
    const holds =
      better(result.higherIsBetter, floe.mean, fedavg.mean) && better(result.higherIsBetter, floe.mean, local.mean);
    claims.push({
      id: `${task}:floe`,
      claim: `${task}: Floe beats FedAvg and local-only on the mean ${result.metric}`,
      holds,
      refuted: !holds && (resolvedAgainst(result, 'floe-fedavg') || resolvedAgainst(result, 'floe-local')),
      detail:
        `Floe ${show(floe.mean)}, FedAvg ${show(fedavg.mean)}, local ${show(local.mean)}; ` +
        `${differenceNote(result, 'floe-fedavg', 'Floe - FedAvg')}, ${differenceNote(result, 'floe-local', 'Floe - local')}`,
    });
  }
  const speech = report.tasks['speech'];
  if (speech) {
    const { floe_fused: fusedFloe, floe, cloud } = speech.methods;
    const holds =
      better(speech.higherIsBetter, fusedFloe.mean, floe.mean) &&
      better(speech.higherIsBetter, fusedFloe.mean, cloud.mean);
    claims.push({
      id: 'speech:fusion',
      claim: `speech: Floe with fusion beats Floe and cloud-only on ${speech.metric}`,
      holds,
      refuted: !holds && (resolvedAgainst(speech, 'floe_fused-floe') || resolvedAgainst(speech, 'floe_fused-cloud')),
      detail:
        `Floe + fusion ${show(fusedFloe.mean)}, Floe ${show(floe.mean)}, cloud ${show(cloud.mean)}; ` +
        `${differenceNote(speech, 'floe_fused-floe', 'Floe + fusion - Floe')}, ` +
        differenceNote(speech, 'floe_fused-cloud', 'Floe + fusion - cloud'),
    });
  }
  claims.push({
    id: 'clustering',
    claim: `clustering agrees with the true tasks (adjusted Rand index >= ${minAri})`,
    holds: report.clusteringAri >= minAri,
    detail: `ARI ${report.clusteringAri.toFixed(3)}`,
  });
  claims.push({
    id: 'raw-data',
    claim: 'no raw data reached the server',
    holds: report.rawBytesAtServer === 0,
    detail: `${report.rawBytesAtServer} bytes found`,
  });
  return claims;
}
