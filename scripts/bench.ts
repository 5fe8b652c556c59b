/**
 * pnpm bench [NAME ...] [--json FILE] [--md FILE]: runs benchmark suites (all of them when none is
 * named), prints each one's table, and writes the figures as JSON and the tables as markdown.
 * Each suite lives in scripts/bench/<name>.ts and exports `run(): Promise<BenchResult>`.
 *
 * One suite: `--json` writes its figures as before (`bench`, `date`, `machine`, then its data).
 * Several: one JSON with every suite's figures under `suites`, and one markdown file with a table per
 * suite (by default bench/all.json and bench/all.md).
 */
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { type BenchResult, type Machine, benchMarkdown, machine } from './lib/bench-report.js';

export type { BenchResult } from './lib/bench-report.js';

const BENCHES: Record<string, () => Promise<{ run: () => Promise<BenchResult> }>> = {
  shared: () => import('./bench/shared.js'),
  model: () => import('./bench/model.js'),
  decode: () => import('./bench/decode.js'),
  train: () => import('./bench/train.js'),
  server: () => import('./bench/server.js'),
  planner: () => import('./bench/planner.js'),
  inference: () => import('./bench/inference.js'),
  attacks: () => import('./bench/attacks.js'),
  privacy: () => import('./bench/privacy.js'),
  scale: () => import('./bench/scale.js'),
};
const NAMES = Object.keys(BENCHES);
const USAGE = `usage: pnpm bench [${NAMES.join('|')} ...] [--json FILE] [--md FILE]   (no name: every suite)`;

let parsed;
try {
  parsed = parseArgs({
    allowPositionals: true,
    options: { json: { type: 'string' }, md: { type: 'string' }, help: { type: 'boolean', short: 'h' } },
  });
} catch (error) {
  console.error(`${(error as Error).message}\n${USAGE}`);
  process.exit(2);
}
const { positionals, values } = parsed;
if (values.help) {
  console.log(USAGE);
  process.exit(0);
}
const unknown = positionals.filter((name) => !(name in BENCHES));
if (unknown.length > 0) {
  console.error(`unknown suite ${unknown.join(', ')}\n${USAGE}`);
  process.exit(2);
}
const names = positionals.length > 0 ? [...new Set(positionals)] : NAMES;
const host: Machine = machine();
console.log(`bench ${names.join(', ')} on ${host.cpu}, ${host.cores} cores, ${host.memoryGiB} GiB, node ${host.node}`);

const date = new Date().toISOString();
const results: Record<string, BenchResult & { seconds: number }> = {};
for (const [i, name] of names.entries()) {
  if (names.length > 1) console.log(`\n[${i + 1}/${names.length}] ${name}`);
  const started = performance.now();
  const result = await (await BENCHES[name]!()).run();
  results[name] = { ...result, seconds: (performance.now() - started) / 1000 };
  console.table(result.rows);
}

async function write(file: string, text: string): Promise<void> {
  await mkdir(path.dirname(file), { recursive: true });
  await writeFile(file, text);
  console.log(`wrote ${file}`);
}

if (names.length === 1) {
  const [name] = names as [string];
  if (values.json) {
    await write(
      values.json,
      `${JSON.stringify({ bench: name, date, machine: host, ...results[name]!.data }, null, 2)}\n`,
    );
  }
  if (values.md) await write(values.md, benchMarkdown(date, host, results));
} else {
  const suites = Object.fromEntries(
    Object.entries(results).map(([name, r]) => [name, { seconds: r.seconds, rows: r.rows, ...r.data }]),
  );
  await write(values.json ?? 'bench/all.json', `${JSON.stringify({ date, machine: host, suites }, null, 2)}\n`);
  await write(values.md ?? 'bench/all.md', benchMarkdown(date, host, results));
}
