/** `pnpm simulate --scenario offload`: runs the offload scenario and writes its report (see run.ts). */
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { rewardIsOrdered } from '@floe/edge-client';
import { parse } from '@floe/shared';
import { renderSvg } from '../report/charts.js';
import { type Claim, verdict } from '../report/schema.js';
import { OffloadReport, offloadCharts, offloadClaims, offloadMarkdown } from './report.js';
import { runOffload } from './run.js';
import { DEFAULT_OFFLOAD, OffloadScenario, QUICK_OFFLOAD } from './scenario.js';

export class OffloadUsageError extends Error {}

export function offloadScenarioOf(
  flags: Record<string, unknown>,
  quick: boolean,
  configFile: string | undefined,
): OffloadScenario {
  let fromFile: Record<string, unknown> = {};
  if (configFile) {
    try {
      fromFile = JSON.parse(readFileSync(configFile, 'utf8')) as Record<string, unknown>;
    } catch (error) {
      throw new OffloadUsageError(`config ${configFile}: ${(error as Error).message}`);
    }
  }
  const given = Object.fromEntries(Object.entries(flags).filter(([, v]) => v !== undefined));
  const base = quick ? QUICK_OFFLOAD : DEFAULT_OFFLOAD;
  // a file may set one weight of the reward and keep the others
  const reward = isRecord(fromFile['reward']) ? { ...base.reward, ...fromFile['reward'] } : fromFile['reward'];
  let scenario: OffloadScenario;
  try {
    scenario = parse(
      OffloadScenario,
      { ...base, ...fromFile, ...(reward === undefined ? {} : { reward }), ...given },
      'scenario',
    );
  } catch (error) {
    throw new OffloadUsageError((error as Error).message);
  }
  const { correct, cloud, format } = scenario.reward;
  if (!rewardIsOrdered(scenario.reward)) {
    throw new OffloadUsageError(
      `reward: a correct answer (${correct}) must pay more than the cloud's help (${cloud}), which must pay more than a well-formed answer (${format}), which must pay at least 0`,
    );
  }
  for (const dir of [scenario.edgeModel, scenario.cloudModel]) {
    if (!existsSync(path.join(dir, 'config.json'))) throw new OffloadUsageError(`${dir} is not a checkpoint directory`);
  }
  return scenario;
}

const isRecord = (value: unknown): value is Record<string, unknown> =>
  typeof value === 'object' && value !== null && !Array.isArray(value);

export async function simulateOffload(
  flags: Record<string, unknown>,
  quick: boolean,
  configFile: string | undefined,
  out: string | undefined,
): Promise<Claim[]> {
  const scenario = offloadScenarioOf(flags, quick, configFile);
  const stamp = new Date().toISOString().replace(/[:.]/g, '-');
  const outDir = path.resolve(out ?? path.join('runs', `offload-${stamp}`));
  await mkdir(path.join(outDir, 'charts'), { recursive: true });
  console.log(
    `offloading: ${scenario.trainProblems} training and ${scenario.evalProblems} held-out arithmetic problems, ` +
      `${scenario.taskTuningSteps} task-tuning steps, ${scenario.rlSteps} RL steps each for GAPG and GRPO ` +
      `(G = ${scenario.group}, ${scenario.promptsPerStep} prompts per step); report in ${outDir}`,
  );
  const started = Date.now();
  const stamped = (text: string) =>
    console.log(`[${((Date.now() - started) / 1000).toFixed(0).padStart(4)} s] ${text}`);
  const report = parse(OffloadReport, await runOffload(scenario, { line: stamped }), 'offload report');
  const claims = offloadClaims(report);
  const files: Record<string, string> = {};
  for (const [name, spec] of Object.entries(offloadCharts(report))) {
    const file = path.join('charts', `${name}.svg`);
    await writeFile(path.join(outDir, file), await renderSvg(spec));
    files[typeof spec.title === 'string' ? spec.title : name] = file;
  }
  await writeFile(path.join(outDir, 'report.json'), `${JSON.stringify(report, null, 2)}\n`);
  await writeFile(path.join(outDir, 'report.md'), offloadMarkdown(report, claims, files));
  const { systemAccuracy, callRatio } = report.budget30;
  console.log(`\nsystem accuracy at a ${report.budget30.budget} budget (call ratio):`);
  for (const [method, accuracy] of Object.entries(systemAccuracy)) {
    const calls = (callRatio as Record<string, number>)[method];
    console.log(`  ${method.padEnd(10)} ${accuracy.toFixed(3)}${calls === undefined ? '' : ` (${calls.toFixed(2)})`}`);
  }
  for (const c of claims) console.log(`${verdict(c)}: ${c.claim} (${c.detail})`);
  console.log(`\nreport: ${path.join(outDir, 'report.md')}`);
  return claims;
}
