/** The markdown report `pnpm bench` writes: one table per suite, whatever columns its rows have. */
import { describe, expect, it } from 'vitest';
import { benchMarkdown, machine, rowsTable } from '../scripts/lib/bench-report.js';

describe('bench markdown', () => {
  it('puts rows with different columns in one table, blank where a row has no value', () => {
    const table = rowsTable([
      { measure: 'decode', 'bytes/s': 2385 },
      { measure: 'speculative', 'x baseline': 3.58, 'bytes/s': 4029 },
    ]);
    const lines = table.split('\n');
    expect(lines).toHaveLength(4);
    const cells = (line: string) =>
      line
        .split(/(?<!\\)\|/)
        .slice(1, -1)
        .map((c) => c.trim());
    expect(cells(lines[0]!)).toEqual(['measure', 'bytes/s', 'x baseline']);
    expect(cells(lines[2]!)).toEqual(['decode', '2385', '']);
    expect(cells(lines[3]!)).toEqual(['speculative', '4029', '3.58']);
  });

  it('escapes a pipe inside a cell so the row keeps its columns', () => {
    const lines = rowsTable([{ mode: 'a|b', value: 1 }]).split('\n');
    expect(lines[2]!.split(/(?<!\\)\|/)).toHaveLength(4);
    expect(lines[2]).toContain('a\\|b');
  });

  it('writes a section per suite with the machine and each wall time', () => {
    const host = machine();
    const md = benchMarkdown('2026-12-02T00:00:00Z', host, {
      shared: { rows: [{ codec: 'msgpack', 'MB/s': 900 }], data: {}, seconds: 12.4 },
      planner: { rows: [], data: {}, seconds: 3 },
    });
    expect(md).toContain(`${host.cores} cores`);
    expect(md.indexOf('## shared')).toBeLessThan(md.indexOf('## planner'));
    expect(md).toContain('| msgpack | 900  |');
    expect(md).toContain('_12 s_');
    expect(md).toContain('_no rows_');
  });
});
