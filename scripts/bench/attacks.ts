/**
 * Poisoning: 40 synthetic clients of one edge-small job (q_proj and v_proj, rank 8; then with every
 * other client at rank 4 under hetlora and flexlora), 20% of them attackers, each attack against each
 * strategy with the job's defenses off and on (DEFENSES in packages/simulator/src/attacks.ts). The
 * figure is the relative Frobenius distance of the aggregate's products from the honest-only aggregate.
 */
import { MODEL_PRESETS, architectureOf } from '@floe/model';
import { DEFENSES, runAttackSuite } from '@floe/simulator';
import type { BenchResult } from '../lib/bench-report.js';

export async function run(): Promise<BenchResult> {
  console.log(`defenses on: ${JSON.stringify(DEFENSES)}`);
  const suite = { architecture: architectureOf(MODEL_PRESETS['edge-small']), targetModules: ['q_proj', 'v_proj'] };
  const rows = [
    ...(await runAttackSuite({ ...suite, clients: 40, attackers: 0.2, rank: 8 })),
    ...(await runAttackSuite({
      ...suite,
      clients: 40,
      attackers: 0.2,
      rank: 8,
      ranks: 'mixed',
      strategies: ['hetlora', 'flexlora'],
    })),
  ];
  const table = new Map<string, Record<string, string | number>>();
  for (const r of rows) {
    const key = `${r.strategy} ${r.ranks} ${r.attack}`;
    const line = table.get(key) ?? {
      strategy: r.strategy,
      ranks: r.ranks === 'mixed' ? '8 and 4' : '8',
      attack: r.attack,
    };
    line[`distance (defenses ${r.defenses})`] = Number(r.distance.toPrecision(3));
    if (r.defenses === 'on') line['refused (on)'] = r.refused;
    table.set(key, line);
  }
  return { rows: [...table.values()], data: { defenses: DEFENSES, attackers: 0.2, clients: 40, rows } };
}
