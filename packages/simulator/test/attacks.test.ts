import { beforeAll, describe, expect, it } from 'vitest';
import { MODEL_PRESETS, architectureOf } from '@floe/model';
import { ATTACKS, type AttackRow, type AttackSuiteOptions, runAttackSuite } from '../src/index.js';

/** 40 clients of an edge-small q/v job at rank 8, 8 of them attackers. */
const suite = (options: Partial<AttackSuiteOptions> = {}) =>
  runAttackSuite({
    architecture: architectureOf(MODEL_PRESETS['edge-small']),
    targetModules: ['q_proj', 'v_proj'],
    clients: 40,
    attackers: 0.2,
    rank: 8,
    ...options,
  });

describe('poisoning by 20% of a round', () => {
  let rows: AttackRow[] = [];
  beforeAll(async () => {
    rows = await suite();
  }, 120_000);
  const row = (strategy: string, attack: string, defenses: string) =>
    rows.find((r) => r.strategy === strategy && r.attack === attack && r.defenses === defenses) as AttackRow;

  it('keeps every strategy within 10% of the honest-only aggregate with the defenses on', () => {
    const defended = rows.filter((r) => r.defenses === 'on');
    expect(defended).toHaveLength(3 * ATTACKS.length);
    for (const r of defended) expect({ ...r, ok: r.distance < 0.1 }).toMatchObject({ ok: true });
  });

  it('shows what the attacks do without them', () => {
    for (const strategy of ['fedavg', 'hetlora', 'flexlora']) {
      expect(row(strategy, 'scaled_x1000', 'off').distance).toBeGreaterThan(10);
      expect(row(strategy, 'max_samples', 'off').distance).toBeGreaterThan(0.5);
      expect(row(strategy, 'sybil_20pct', 'off').distance).toBeGreaterThan(0.5);
    }
    // averaging A on its own lets B = 0 carry any A: the product bound never sees it
    expect(row('fedavg', 'zero_b_huge_a', 'off').distance).toBeGreaterThan(1000);
    expect(row('hetlora', 'zero_b_huge_a', 'off').distance).toBeGreaterThan(1000);
    // metrics are medians: 1.7e308 from a fifth of the clients neither overflows nor shows
    expect(rows.every((r) => r.finiteMetrics)).toBe(true);
  });
});

describe('poisoning by 20% of a round of devices at ranks 8 and 4', () => {
  let rows: AttackRow[] = [];
  beforeAll(async () => {
    rows = await suite({ ranks: 'mixed', strategies: ['hetlora', 'flexlora'] });
  }, 120_000);

  it('keeps hetlora within 10% of the honest-only aggregate with the defenses on', () => {
    const defended = rows.filter((r) => r.defenses === 'on' && r.strategy === 'hetlora');
    expect(defended.map((r) => r.ranks)).toEqual(ATTACKS.map(() => 'mixed'));
    for (const r of defended) expect({ ...r, ok: r.distance < 0.1 }).toMatchObject({ ok: true });
  });

  it('bounds what each attack does to flexlora (the median rules also cost accuracy there, see decision 0025)', () => {
    for (const r of rows.filter((r) => r.defenses === 'on' && r.strategy === 'flexlora')) {
      expect({ ...r, ok: r.distance < 0.5 }).toMatchObject({ ok: true });
    }
    const scaled = rows.find((r) => r.strategy === 'flexlora' && r.attack === 'scaled_x1000' && r.defenses === 'off');
    expect(scaled?.distance).toBeGreaterThan(10);
  });
});
