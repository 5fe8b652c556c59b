/**
 * `pnpm simulate`: a whole hybrid federation on this machine (see simulation.ts), with a live progress
 * display, and its report written as report.json, report.md and SVG charts. `--scenario offload` runs
 * the offloading study instead (offload/run.ts).
 *
 *   pnpm simulate [--quick] [--config FILE] [--out DIR] [--tasks speech,email] [--rounds 3] ...
 *   pnpm simulate --scenario offload [--quick] [--rl-steps N] ...
 *   pnpm simulate check runs/<time>/report.json
 */
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Command, CommanderError, InvalidArgumentError, Option } from '@commander-js/extra-typings';
import { MultiBar, Presets, type SingleBar } from 'cli-progress';
import { markdownTable } from 'markdown-table';
import { TIERS } from '@floe/edge-client';
import { parse } from '@floe/shared';
import { TASKS } from '@floe/tasks';
import { reportMarkdown } from './report/markdown.js';
import { renderSvg } from './report/charts.js';
import { type Claim, METHODS, SimulationReport, checkClaims, verdict } from './report/schema.js';
import { OffloadUsageError, simulateOffload } from './offload/command.js';
import { OffloadReport, offloadClaims } from './offload/report.js';
import { DEFAULT_OFFLOAD } from './offload/scenario.js';
import { DEFAULT_SCENARIO, QUICK_SCENARIO, Scenario, checkScenario } from './scenario.js';
import { type SimulationObserver, runSimulation } from './simulation.js';

class UsageError extends Error {}

function number(min: number, max: number, integer = false) {
  return (value: string): number => {
    const n = Number(value);
    if (value.trim() === '' || !Number.isFinite(n) || n < min || n > max || (integer && !Number.isInteger(n))) {
      throw new InvalidArgumentError(`expected ${integer ? 'an integer' : 'a number'} from ${min} to ${max}`);
    }
    return n;
  };
}

function list<T extends string>(known: readonly T[], what: string) {
  return (value: string): T[] => {
    const items = value.split(',').map((s) => s.trim());
    const unknown = items.filter((s) => !(known as readonly string[]).includes(s));
    if (items.length === 0 || unknown.length > 0) {
      throw new InvalidArgumentError(`unknown ${what} ${unknown.join(',') || '(none)'}; known: ${known.join(', ')}`);
    }
    return items as T[];
  };
}

/** The scenario: defaults (or quick), then the config file, then flags; checked against the schema. */
function scenarioOf(flags: Record<string, unknown>, quick: boolean, configFile: string | undefined): Scenario {
  let fromFile: Record<string, unknown> = {};
  if (configFile) {
    try {
      fromFile = JSON.parse(readFileSync(configFile, 'utf8')) as Record<string, unknown>;
    } catch (error) {
      throw new UsageError(`config ${configFile}: ${(error as Error).message}`);
    }
    if (typeof fromFile !== 'object' || fromFile === null || Array.isArray(fromFile)) {
      throw new UsageError(`config ${configFile}: expected a JSON object of scenario fields`);
    }
  }
  const given = Object.fromEntries(Object.entries(flags).filter(([, v]) => v !== undefined));
  let scenario: Scenario;
  try {
    const merged: Record<string, unknown> = { ...(quick ? QUICK_SCENARIO : DEFAULT_SCENARIO), ...fromFile, ...given };
    if (merged['calibration'] === null) delete merged['calibration'];
    scenario = parse(Scenario, merged, 'scenario');
  } catch (error) {
    throw new UsageError((error as Error).message);
  }
  try {
    checkScenario(scenario);
  } catch (error) {
    throw new UsageError((error as Error).message);
  }
  for (const dir of [scenario.edgeModel, scenario.cloudModel]) {
    if (!existsSync(path.join(dir, 'config.json'))) throw new UsageError(`${dir} is not a checkpoint directory`);
  }
  if (scenario.calibration !== undefined && !existsSync(scenario.calibration)) {
    throw new UsageError(`calibration ${scenario.calibration} does not exist`);
  }
  return scenario;
}

/** Per-round lines, and one bar per phase of the local steps it takes (bars only on a terminal). */
function progressDisplay(): SimulationObserver & { stop(): void } {
  const tty = process.stderr.isTTY === true;
  const bars = new MultiBar(
    { format: ' {phase} [{bar}] {value}/{total} local steps | {duration_formatted}', hideCursor: true },
    Presets.shades_classic,
  );
  let bar: SingleBar | undefined;
  const started = Date.now();
  const stamp = () => `[${((Date.now() - started) / 1000).toFixed(0).padStart(4)} s]`;
  return {
    phase(name, steps) {
      bar?.stop();
      bars.remove(bar as SingleBar);
      bar = undefined;
      if (tty && steps > 0) bar = bars.create(steps, 0, { phase: name.padEnd(8) });
      this.line(`${name}: started`);
    },
    step: () => bar?.increment(),
    line(text) {
      if (tty) bars.log(`${stamp()} ${text}\n`);
      else console.log(`${stamp()} ${text}`);
    },
    stop: () => bars.stop(),
  };
}

const figure = (x: number) => (Math.abs(x) >= 10 ? x.toFixed(1) : x.toFixed(3));

async function simulate(flags: Record<string, unknown>, quick: boolean, configFile?: string, out?: string) {
  const scenario = scenarioOf(flags, quick, configFile);
  const stamp = new Date().toISOString().replace(/[:.]/g, '-');
  const outDir = path.resolve(out ?? path.join('runs', `simulate-${stamp}`));
  await mkdir(path.join(outDir, 'charts'), { recursive: true });
  const workDir = await mkdtemp(path.join(os.tmpdir(), 'floe-simulate-'));
  const clients = scenario.tasks.length * scenario.clientsPerTask;
  console.log(
    `simulating ${clients} clients (${scenario.clientsPerTask} per task: ${scenario.tasks.join(', ')}; tiers ${scenario.tiers.join(', ')}), ` +
      `${scenario.rounds} rounds x ${scenario.localSteps} local steps; methods ${METHODS.join(', ')}; report in ${outDir}`,
  );
  const display = progressDisplay();
  let result;
  try {
    result = await runSimulation(scenario, { workDir, observer: display, cacheDir: path.resolve('runs', '.cache') });
  } finally {
    display.stop();
    await rm(workDir, { recursive: true, force: true });
  }
  const { report, claims, charts } = result;
  const files: Record<string, string> = {};
  for (const [name, spec] of Object.entries(charts)) {
    const file = path.join('charts', `${name}.svg`);
    await writeFile(path.join(outDir, file), await renderSvg(spec));
    files[typeof spec.title === 'string' ? spec.title : name] = file;
  }
  await writeFile(path.join(outDir, 'report.json'), `${JSON.stringify(report, null, 2)}\n`);
  await writeFile(path.join(outDir, 'report.md'), reportMarkdown(report, claims, files));

  for (const [task, r] of Object.entries(report.tasks)) {
    console.log(`\n${task}: ${r.metric} (${r.higherIsBetter ? 'higher' : 'lower'} is better)`);
    console.log(markdownTable([[...METHODS], METHODS.map((m) => figure(r.methods[m].mean))]));
  }
  console.log(
    `\nclustering agreement (ARI) ${report.clusteringAri.toFixed(3)}; raw data bytes at the server ${report.rawBytesAtServer}`,
  );
  for (const c of claims) console.log(`${verdict(c)}: ${c.claim} (${c.detail})`);
  console.log(`\nreport: ${path.join(outDir, 'report.md')}`);
  return claims.every((c) => c.holds);
}

/**
 * Validates a written report (a mismatch is a usage error) and checks its claims; true when the required
 * ones hold (all of them when `required` is undefined) and, with `failRefuted`, no claim is refuted.
 * Every claim is printed.
 */
async function check(file: string, required?: readonly string[], failRefuted = false): Promise<boolean> {
  let value: unknown;
  try {
    value = JSON.parse(await readFile(file, 'utf8'));
  } catch (error) {
    throw new UsageError(`${file}: ${(error as Error).message}`);
  }
  let claims: Claim[];
  try {
    claims =
      (value as { scenario?: unknown } | null)?.scenario === 'offload'
        ? offloadClaims(parse(OffloadReport, value, `report ${file}`))
        : checkClaims(parse(SimulationReport, value, `report ${file}`));
  } catch (error) {
    throw new UsageError((error as Error).message);
  }
  const unknown = (required ?? []).filter((id) => !claims.some((c) => c.id === id));
  if (unknown.length > 0) {
    throw new UsageError(
      `no claim ${unknown.join(', ')} in this report; its claims: ${claims.map((c) => c.id).join(', ')}`,
    );
  }
  const enforced = (c: Claim) => required === undefined || required.includes(c.id);
  for (const c of claims) {
    console.log(`${verdict(c)}: [${c.id}] ${c.claim} (${c.detail})${enforced(c) ? '' : ' (not required)'}`);
  }
  return claims.every((c) => (c.holds || !enforced(c)) && !(failRefuted && c.refuted));
}

const d = DEFAULT_SCENARIO;
const program = new Command('simulate')
  .description(
    'Run a whole hybrid federation here: the cloud stand-in and the coordination server as processes on loopback, ' +
      'edge clients as worker threads, every method compared on held-out data; writes report.json, report.md and charts',
  )
  .addOption(
    new Option('--scenario <name>', 'federation (the main job) or offload (learning when to ask the cloud)')
      .choices(['federation', 'offload'] as const)
      .default('federation' as const),
  )
  .option('--quick', `the CI scenario (${QUICK_SCENARIO.rounds} rounds x ${QUICK_SCENARIO.localSteps} steps)`)
  .option('--config <file>', 'JSON file of scenario fields (flags override it)')
  .option('--out <dir>', 'where the report goes (default runs/simulate-<time>)')
  .option('--strict', 'exit 1 when a claim does not hold')
  .addOption(new Option('--tasks <list>', `tasks (default ${d.tasks.join(',')})`).argParser(list(TASKS, 'task')))
  .addOption(new Option('--clients-per-task <n>', `default ${d.clientsPerTask}`).argParser(number(2, 8, true)))
  .addOption(
    new Option('--tiers <list>', `device tiers dealt in turn (default ${d.tiers.join(',')})`).argParser(
      list(Object.keys(TIERS), 'tier'),
    ),
  )
  .addOption(new Option('--rounds <n>', `default ${d.rounds}`).argParser(number(1, 100, true)))
  .addOption(new Option('--local-steps <n>', `default ${d.localSteps}`).argParser(number(1, 10_000, true)))
  .addOption(new Option('--lr <x>', `learning rate (default ${d.learningRate})`).argParser(number(1e-8, 1)))
  .addOption(new Option('--max-rank <n>', `default ${d.maxRank}`).argParser(number(1, 64, true)))
  .addOption(
    new Option('--participation <share>', 'share of clients sampled per round (default 1)').argParser(number(0.01, 1)),
  )
  .addOption(
    new Option('--stragglers <share>', 'share of clients slower than planned (default 0)').argParser(number(0, 1)),
  )
  .addOption(new Option('--straggler-slowdown <x>', `default ${d.stragglerSlowdown}`).argParser(number(1, 1000)))
  .addOption(
    new Option('--dropouts <share>', 'share of clients that die mid-round and restart (default 0)').argParser(
      number(0, 1),
    ),
  )
  .addOption(
    new Option(
      '--mix <share>',
      "share of a client's training data from its task's others (default 0: non-IID)",
    ).argParser(number(0, 1)),
  )
  .addOption(
    new Option('--deadline <sec>', `round deadline (default ${d.roundDeadlineSec})`).argParser(number(1, 86_400)),
  )
  .addOption(
    new Option('--held-out-bytes <n>', `held-out prose per client (default ${d.heldOutBytes})`).argParser(
      number(256, 1e9, true),
    ),
  )
  .addOption(
    new Option('--held-out-examples <n>', `held-out examples per client (default ${d.heldOutExamples})`).argParser(
      number(10, 1e9, true),
    ),
  )
  .addOption(new Option('--seed <n>', 'default 0').argParser(number(0, 2 ** 31, true)))
  .addOption(new Option('--edge-model <dir>', `default ${d.edgeModel}`))
  .addOption(new Option('--cloud-model <dir>', `default ${d.cloudModel}`))
  .addOption(
    new Option(
      '--calibration <file>',
      `plan with this calibration instead of measuring this host (--quick: ${QUICK_SCENARIO.calibration ?? 'none'})`,
    ),
  )
  .addOption(new Option('--no-calibration', 'measure this host even where the scenario names a calibration'))
  .addOption(
    new Option('--rl-steps <n>', `offload: GAPG and GRPO steps (default ${DEFAULT_OFFLOAD.rlSteps})`).argParser(
      number(1, 100_000, true),
    ),
  )
  .addOption(
    new Option(
      '--budget <share>',
      `offload: share of queries the cloud may take (default ${DEFAULT_OFFLOAD.budget})`,
    ).argParser(number(0.01, 1)),
  )
  .action(async (o) => {
    if (o.scenario === 'offload') {
      const offloadFlags = [
        'scenario',
        'quick',
        'config',
        'out',
        'strict',
        'seed',
        'edgeModel',
        'cloudModel',
        'rlSteps',
        'budget',
      ];
      const federationOnly = Object.keys(o).filter((k) => !offloadFlags.includes(k));
      if (federationOnly.length > 0) {
        const flag = (k: string) => `--${k.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`;
        throw new UsageError(`--scenario offload does not take ${federationOnly.map(flag).join(', ')}`);
      }
      const flags = {
        seed: o.seed,
        edgeModel: o.edgeModel,
        cloudModel: o.cloudModel,
        rlSteps: o.rlSteps,
        budget: o.budget,
      };
      const claims = await simulateOffload(flags, o.quick === true, o.config, o.out);
      if (o.strict && !claims.every((c) => c.holds)) process.exitCode = 1;
      return;
    }
    if (o.rlSteps !== undefined || o.budget !== undefined) {
      throw new UsageError('--rl-steps and --budget belong to --scenario offload');
    }
    const flags = {
      tasks: o.tasks,
      clientsPerTask: o.clientsPerTask,
      tiers: o.tiers,
      rounds: o.rounds,
      localSteps: o.localSteps,
      learningRate: o.lr,
      maxRank: o.maxRank,
      participation: o.participation,
      stragglers: o.stragglers,
      stragglerSlowdown: o.stragglerSlowdown,
      dropouts: o.dropouts,
      mix: o.mix,
      roundDeadlineSec: o.deadline,
      heldOutBytes: o.heldOutBytes,
      heldOutExamples: o.heldOutExamples,
      seed: o.seed,
      edgeModel: o.edgeModel,
      cloudModel: o.cloudModel,
      // --no-calibration: null removes the scenario's calibration file (undefined would keep it)
      calibration: o.calibration === false ? null : o.calibration,
    };
    const held = await simulate(flags, o.quick === true, o.config, o.out);
    if (o.strict && !held) process.exitCode = 1;
  });
program
  .command('check')
  .description('validate a report.json against its schema and check the claims (exit 1 when one does not hold)')
  .argument('<report>', 'path of report.json')
  .option(
    '--require <ids>',
    'exit 1 only when one of these claims does not hold (comma-separated: <task>:floe, speech:fusion, clustering, raw-data); the others are printed',
  )
  .option(
    '--fail-refuted',
    'also exit 1 when any claim is refuted: it does not hold and the held-out items resolve a difference against it',
  )
  .action(async (file, o) => {
    const required = o.require?.split(',').map((id) => id.trim());
    if (!(await check(file, required, o.failRefuted === true))) process.exitCode = 1;
  });

program.exitOverride();
try {
  await program.parseAsync();
} catch (error) {
  if (error instanceof CommanderError) process.exit(error.exitCode === 0 ? 0 : 2);
  if (error instanceof UsageError || error instanceof OffloadUsageError) {
    console.error(`simulate: ${error.message}`);
    process.exit(2);
  }
  throw error;
}
