/**
 * `report.json` of the offload scenario: its schema, the claims it is checked against (issue 19's
 * orderings at the budget, GAPG's call ratio near the budget, a GRPO trace), its markdown and its charts.
 */
import type { TopLevelSpec } from 'vega-lite';
import Type, { type Static } from 'typebox';
import { markdownTable } from 'markdown-table';
import { type Claim, Machine } from '../report/schema.js';

const Share = Type.Number({ minimum: 0, maximum: 1 });
const Interval = Type.Object({ mean: Type.Number(), low: Type.Number(), high: Type.Number() });
const Step = Type.Object({
  step: Type.Integer({ minimum: 1 }),
  reward: Type.Number(),
  callRatio: Share,
  accuracy: Share,
  kept: Type.Integer({ minimum: 0 }),
  drawn: Type.Integer({ minimum: 0 }),
  unanswered: Type.Integer({ minimum: 0 }),
  seconds: Type.Number({ minimum: 0 }),
});

const PerMethod = Type.Record(Type.String(), Share);
const Kind = Type.Object({
  /** Operation and digits, e.g. `+3`. */
  kind: Type.String(),
  problems: Type.Integer({ minimum: 1 }),
  /** Exact match of the task-tuned edge and of the cloud on this kind. */
  taskTuned: Share,
  cloud: Share,
  /** Share of this kind sent to the cloud at the budget, per budgeted method. */
  offloaded: PerMethod,
  /** Share the RL policies ask about on their own (greedy), and their mean probability of opening the tag. */
  asks: PerMethod,
  askProbability: PerMethod,
});

export const OffloadReport = Type.Object(
  {
    scenario: Type.Literal('offload'),
    /** Per kind of held-out problem (optional: reports before it validate). */
    byKind: Type.Optional(Type.Array(Kind)),
    config: Type.Record(Type.String(), Type.Unknown()),
    machine: Machine,
    problems: Type.Object({
      train: Type.Integer({ minimum: 1 }),
      heldOut: Type.Integer({ minimum: 1 }),
      /** Held-out problems that are also training problems (must be 0). */
      overlap: Type.Literal(0),
    }),
    budget30: Type.Object({
      budget: Share,
      systemAccuracy: Type.Object({
        gapg: Share,
        router: Share,
        random: Share,
        grpo: Share,
        taskTuned: Share,
        local: Share,
        cloud: Share,
      }),
      callRatio: Type.Object({ gapg: Share, router: Share, random: Share, grpo: Share }),
      askRatio: Type.Object({ gapg: Share, grpo: Share }),
      intervals: Type.Object({
        accuracy: Type.Record(Type.String(), Interval),
        difference: Type.Record(Type.String(), Interval),
      }),
    }),
    curve: Type.Array(Type.Object({ budget: Share, method: Type.String(), accuracy: Share, callRatio: Share }), {
      minItems: 1,
    }),
    grpoCallRatioTrace: Type.Array(Share, { minItems: 1 }),
    gapgTrace: Type.Array(Step),
    grpoTrace: Type.Array(Step),
    cloudCalls: Type.Object({
      calls: Type.Integer({ minimum: 0 }),
      failures: Type.Integer({ minimum: 0 }),
      cached: Type.Integer({ minimum: 0 }),
      prompts: Type.Integer({ minimum: 0 }),
    }),
    wallSeconds: Type.Record(Type.String(), Type.Number({ minimum: 0 })),
  },
  { additionalProperties: false },
);
export type OffloadReport = Static<typeof OffloadReport>;

const pct = (x: number) => `${(100 * x).toFixed(1)}%`;

/** Issue 19's claims on a report: each ordering's difference interval above 0, and the call ratio. */
export function offloadClaims(report: OffloadReport): Claim[] {
  const { budget30 } = report;
  const { difference } = budget30.intervals;
  const order = (a: string, b: string, name: string): Claim => {
    const d = difference[`${a}-${b}`];
    return {
      id: `offload:${a}>${b}`,
      claim: `${name}: ${a} beats ${b} at a ${pct(budget30.budget)} budget, outside the bootstrap interval`,
      holds: d !== undefined && d.low > 0,
      detail: d
        ? `difference ${pct(d.mean)} [${pct(d.low)}, ${pct(d.high)}]`
        : `no interval for ${a}-${b} in the report`,
    };
  };
  // judged on what the policy asks for on its own: the budget fills or cuts the rest by construction
  const calls = budget30.askRatio.gapg;
  return [
    order('gapg', 'router', 'GAPG over the router'),
    order('router', 'random', 'the router over random offloading'),
    order('random', 'taskTuned', 'random offloading over task tuning alone'),
    {
      id: 'offload:call-ratio',
      claim: `GAPG asks for the cloud on its own within 5 points of the ${pct(budget30.budget)} budget`,
      holds: Math.abs(calls - budget30.budget) <= 0.05 + 1e-9,
      detail: `asks on ${pct(calls)} of held-out problems; call ratio ${pct(budget30.callRatio.gapg)} after the budget filled or cut it`,
    },
    {
      id: 'offload:grpo-trace',
      claim: "GRPO's call ratio during training is traced",
      holds: report.grpoCallRatioTrace.length === report.grpoTrace.length && report.grpoTrace.length > 0,
      detail: `${report.grpoCallRatioTrace.length} steps, from ${pct(report.grpoCallRatioTrace[0] ?? 0)} to ${pct(report.grpoCallRatioTrace.at(-1) ?? 0)}`,
    },
  ];
}

export function offloadMarkdown(
  report: OffloadReport,
  claims: readonly Claim[],
  charts: Record<string, string>,
): string {
  const { budget30 } = report;
  const { accuracy } = budget30.intervals;
  const methods = Object.keys(budget30.systemAccuracy) as (keyof typeof budget30.systemAccuracy)[];
  const calls = budget30.callRatio as Record<string, number>;
  const lines = [
    '# Offloading: learning when to ask the cloud',
    '',
    `${report.problems.train} training problems, ${report.problems.heldOut} held-out problems (overlap ${report.problems.overlap}); ` +
      `machine ${report.machine.cpu}, ${report.machine.cores} cores, Node ${report.machine.node}; ` +
      `${report.wallSeconds['total']?.toFixed(0)} s in all.`,
    '',
    `## System accuracy at a ${pct(budget30.budget)} budget`,
    '',
    markdownTable([
      ['method', 'accuracy', '95% interval', 'call ratio'],
      ...methods.map((m) => [
        m,
        pct(budget30.systemAccuracy[m]),
        accuracy[m] ? `[${pct(accuracy[m].low)}, ${pct(accuracy[m].high)}]` : '',
        m in calls ? pct(calls[m] as number) : m === 'cloud' ? '100%' : '0%',
      ]),
    ]),
    '',
    '## Claims',
    '',
    ...claims.map((c) => `- ${c.holds ? 'holds' : '**does not hold**'}: ${c.claim} (${c.detail})`),
    '',
    '## Differences at the budget (95% bootstrap intervals)',
    '',
    markdownTable([
      ['difference', 'mean', 'interval'],
      ...Object.entries(budget30.intervals.difference).map(([pair, d]) => [
        pair.replace('-', ' - '),
        pct(d.mean),
        `[${pct(d.low)}, ${pct(d.high)}]`,
      ]),
    ]),
    '',
    ...kindsMarkdown(report),
    '## Charts',
    '',
    ...Object.entries(charts).map(([title, file]) => `![${title}](${file})`),
    '',
    '## Wall time',
    '',
    markdownTable([
      ['phase', 'seconds'],
      ...Object.entries(report.wallSeconds).map(([phase, s]) => [phase, s.toFixed(0)]),
    ]),
    '',
  ];
  return lines.join('\n');
}

/** Where each method spends its budget, per kind of problem: offloading pays where the edge fails and the cloud does not. */
function kindsMarkdown(report: OffloadReport): string[] {
  const kinds = report.byKind;
  if (!kinds || kinds.length === 0) return [];
  const methods = Object.keys(kinds[0]!.offloaded);
  const policies = Object.keys(kinds[0]!.asks);
  return [
    `## By kind of problem (sent to the cloud at a ${pct(report.budget30.budget)} budget)`,
    '',
    markdownTable([
      [
        'kind',
        'problems',
        'task-tuned right',
        'cloud right',
        ...methods.map((m) => `${m} sent`),
        ...policies.map((p) => `${p} asks (p)`),
      ],
      ...kinds.map((k) => [
        k.kind,
        String(k.problems),
        pct(k.taskTuned),
        pct(k.cloud),
        ...methods.map((m) => pct(k.offloaded[m] ?? 0)),
        ...policies.map((p) => `${pct(k.asks[p] ?? 0)} (${(k.askProbability[p] ?? 0).toFixed(3)})`),
      ]),
    ]),
    '',
  ];
}

export function offloadCharts(report: OffloadReport): Record<string, TopLevelSpec> {
  const trace = [
    ...report.gapgTrace.map((s) => ({ ...s, method: 'gapg' })),
    ...report.grpoTrace.map((s) => ({ ...s, method: 'grpo' })),
  ];
  return {
    'accuracy-by-budget': {
      title: 'System accuracy by cloud budget',
      width: 320,
      height: 200,
      data: { values: [...report.curve] },
      mark: { type: 'line', point: true },
      encoding: {
        x: { field: 'budget', type: 'quantitative', title: 'budget (share of queries)', axis: { format: '%' } },
        y: { field: 'accuracy', type: 'quantitative', title: 'system accuracy', scale: { zero: false } },
        color: { field: 'method', type: 'nominal' },
      },
    },
    'call-ratio-during-training': {
      title: 'Call ratio during RL training',
      width: 320,
      height: 200,
      data: { values: trace },
      mark: { type: 'line' },
      encoding: {
        x: { field: 'step', type: 'quantitative', title: 'step' },
        y: { field: 'callRatio', type: 'quantitative', title: 'share of samples asking', axis: { format: '%' } },
        color: { field: 'method', type: 'nominal' },
      },
    },
  };
}
