/** `report.md`: what a simulation showed, for a person: the claims first, then a table per task and the charts. */
import { markdownTable } from 'markdown-table';
import { type Claim, METHODS, type Method, type SimulationReport, signed, verdict } from './schema.js';

const METHOD_NAMES: Record<(typeof METHODS)[number], string> = {
  base: 'base checkpoint',
  local: 'local-only LoRA',
  fedavg: 'FedAvg',
  hetlora: 'HetLoRA',
  floe: 'Floe',
  cloud: 'cloud only',
  fused: 'fused (edge base + cloud)',
  floe_fused: 'Floe + fusion',
};

const figure = (x: number) => (Math.abs(x) >= 10 ? x.toFixed(1) : x.toFixed(3));

/** The report as markdown; `charts` are file names (relative to report.md) by chart title. */
export function reportMarkdown(
  report: SimulationReport,
  claims: readonly Claim[],
  charts: Record<string, string>,
): string {
  const lines = ['# Simulation report', ''];
  const config = Object.entries(report.config)
    .map(([k, v]) => `${k} ${JSON.stringify(v)}`)
    .join(', ');
  lines.push(
    `${report.machine.cpu}, ${report.machine.cores} cores, ${report.machine.memoryGiB} GiB, node ${report.machine.node}. Scenario: ${config}.`,
    '',
    '## Claims',
    '',
    ...claims.map((c) => `- ${c.holds ? 'holds' : `**${verdict(c).toLowerCase()}**`}: ${c.claim} (${c.detail})`),
    '',
  );
  for (const [task, result] of Object.entries(report.tasks)) {
    const clients = [...new Set(Object.values(result.methods).flatMap((m) => Object.keys(m.perClient)))].sort();
    const best = Object.values(result.methods).reduce(
      (b, m) => (result.higherIsBetter ? Math.max(b, m.mean) : Math.min(b, m.mean)),
      result.higherIsBetter ? -Infinity : Infinity,
    );
    lines.push(
      `## ${task}: ${result.metric} (${result.higherIsBetter ? 'higher' : 'lower'} is better)`,
      '',
      markdownTable([
        ['method', 'mean', ...clients],
        ...METHODS.map((m) => {
          const r = result.methods[m];
          const mean = figure(r.mean);
          return [
            METHOD_NAMES[m],
            r.mean === best ? `**${mean}**` : mean,
            ...clients.map((c) => (c in r.perClient ? figure(r.perClient[c]!) : '')),
          ];
        }),
      ]),
      '',
      'Differences of the mean client figure, with 95% paired bootstrap intervals over the held-out items ' +
        '(an interval that holds 0 does not tell the two methods apart):',
      '',
      markdownTable([
        ['difference', 'mean', '95% interval'],
        ...Object.entries(result.differences ?? {}).map(([pair, d]) => [
          pair
            .split('-')
            .map((m) => METHOD_NAMES[m as Method] ?? m)
            .join(' - '),
          signed(d.mean),
          `[${signed(d.low)}, ${signed(d.high)}]`,
        ]),
      ]),
      '',
    );
  }
  lines.push(
    '## Traffic and time',
    '',
    `Clustering agreement with the true tasks (adjusted Rand index): ${report.clusteringAri.toFixed(3)}. Raw data bytes found at the server: ${report.rawBytesAtServer}.`,
    '',
    markdownTable([
      ['client', 'sent (bytes)', 'received (bytes)'],
      ...Object.entries(report.bytesPerClient).map(([client, b]) => [client, String(b.sent), String(b.received)]),
    ]),
    '',
  );
  for (const [title, file] of Object.entries(charts)) lines.push(`![${title}](${file})`, '');
  return lines.join('\n');
}
