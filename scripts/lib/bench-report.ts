/** What a benchmark suite returns, the machine it ran on, and the markdown report of several suites. */
import os from 'node:os';
import { markdownTable } from 'markdown-table';

export interface BenchResult {
  rows: Record<string, string | number>[];
  data: Record<string, unknown>;
}

export interface Machine {
  cpu: string;
  cores: number;
  memoryGiB: number;
  node: string;
  platform: string;
}

export function machine(): Machine {
  return {
    cpu: os.cpus()[0]?.model ?? 'unknown',
    cores: os.cpus().length,
    memoryGiB: Math.round(os.totalmem() / 2 ** 30),
    node: process.version,
    platform: `${os.platform()}-${os.arch()}`,
  };
}

/** A suite's rows as one markdown table: the union of their columns, in order of first appearance. */
export function rowsTable(rows: readonly Record<string, string | number>[]): string {
  if (rows.length === 0) return '_no rows_';
  const columns = [...new Set(rows.flatMap((row) => Object.keys(row)))];
  // a pipe inside a cell would end it
  const cell = (value: string | number | undefined) => (value === undefined ? '' : String(value).replace(/\|/g, '\\|'));
  return markdownTable([columns, ...rows.map((row) => columns.map((c) => cell(row[c])))]);
}

/** Every suite's table under its name, with the date, the machine and each suite's wall time. */
export function benchMarkdown(
  date: string,
  host: Machine,
  results: Record<string, BenchResult & { seconds: number }>,
): string {
  const sections = Object.entries(results).map(
    ([name, r]) => `## ${name}\n\n${rowsTable(r.rows)}\n\n_${r.seconds.toFixed(0)} s_\n`,
  );
  return [
    `# Benchmarks`,
    '',
    `${date} on ${host.cpu} (${host.cores} cores, ${host.memoryGiB} GiB), node ${host.node}, ${host.platform}. ` +
      'Every figure is also in the JSON written beside this file.',
    '',
    ...sections,
  ].join('\n');
}
