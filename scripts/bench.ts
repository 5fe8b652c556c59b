/**
 * pnpm bench <name> [--json FILE]: runs one benchmark, prints a table, optionally writes JSON.
 * Each benchmark lives in scripts/bench/<name>.ts and exports `run(): Promise<BenchResult>`.
 */
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import os from 'node:os';
import { parseArgs } from 'node:util';

export interface BenchResult {
  rows: Record<string, string | number>[];
  data: Record<string, unknown>;
}

const BENCHES: Record<string, () => Promise<{ run: () => Promise<BenchResult> }>> = {
  shared: () => import('./bench/shared.js'),
  model: () => import('./bench/model.js'),
  train: () => import('./bench/train.js'),
  server: () => import('./bench/server.js'),
  planner: () => import('./bench/planner.js'),
  inference: () => import('./bench/inference.js'),
  decode: () => import('./bench/decode.js'),
};

const { positionals, values } = parseArgs({
  allowPositionals: true,
  options: { json: { type: 'string' }, help: { type: 'boolean', short: 'h' } },
});
const name = positionals[0];
if (values.help || name === undefined || !(name in BENCHES)) {
  console.log(`usage: pnpm bench <${Object.keys(BENCHES).join('|')}> [--json FILE]`);
  process.exit(values.help ? 0 : 2);
}

const machine = {
  cpu: os.cpus()[0]?.model ?? 'unknown',
  cores: os.cpus().length,
  memoryGiB: Math.round(os.totalmem() / 2 ** 30),
  node: process.version,
  platform: `${os.platform()}-${os.arch()}`,
};
console.log(`bench ${name} on ${machine.cpu}, ${machine.cores} cores, ${machine.memoryGiB} GiB, node ${machine.node}`);
const bench = await BENCHES[name]!();
const result = await bench.run();
console.table(result.rows);
if (values.json) {
  await mkdir(path.dirname(values.json), { recursive: true });
  await writeFile(
    values.json,
    `${JSON.stringify({ bench: name, date: new Date().toISOString(), machine, ...result.data }, null, 2)}\n`,
  );
  console.log(`wrote ${values.json}`);
}
