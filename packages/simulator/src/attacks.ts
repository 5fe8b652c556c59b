/**
 * The poisoning suite: a round of honest synthetic updates, then the same round with a share of the
 * clients replaced by attackers, through the server's own pipeline (the per-update checks of the
 * coordinator, then aggregateRound with the job's weighting, clipping and combination rule). It reports
 * how far each attack moves the aggregate from the honest-only one (relative Frobenius distance of the
 * modules' products), with the job's defenses on and off.
 */
import {
  type Assignment,
  INITIAL_STATE,
  type RoundUpdate,
  STRATEGIES,
  aggregateRound,
  checkAdapter,
  type FederationSpec,
} from '@floe/federation';
import {
  type LoraAdapter,
  type LoraFactors,
  type ModelArchitecture,
  type RoundStart,
  type StrategyName,
  Random,
  frobeniusNorm,
  loraProduct,
} from '@floe/shared';
import { sampleAdapter } from './synthetic-devices.js';

export const ATTACKS = [
  'scaled_x1000',
  'sign_flipped',
  'zero_b_huge_a',
  'max_samples',
  'extreme_metrics',
  'sybil_20pct',
] as const;
export type AttackName = (typeof ATTACKS)[number];

/** The job settings that defend a round, as an operator would set them. */
export const DEFENSES = {
  weighting: 'equal',
  clipUpdates: 'median',
  robustAggregation: 'near_median',
  trimFraction: 0.2,
} as const satisfies Partial<FederationSpec>;

export interface AttackRow {
  strategy: StrategyName;
  ranks: 'uniform' | 'mixed';
  attack: AttackName;
  defenses: 'on' | 'off';
  /** Updates the per-update checks refused (of the attackers'). */
  refused: number;
  /** ||aggregate - honest-only aggregate||_F / ||honest-only aggregate||_F over the modules' products. */
  distance: number;
  /** Whether the round's metrics were all finite (a round_end must carry finite numbers). */
  finiteMetrics: boolean;
}

export interface AttackSuiteOptions {
  architecture: ModelArchitecture;
  targetModules: string[];
  clients: number;
  /** Share of the clients that attack. */
  attackers: number;
  /** The largest rank: with `ranks: 'mixed'`, every other client trains at half of it (not under fedavg). */
  rank: number;
  /** One rank for every client (default), or the heterogeneous devices hetlora and flexlora exist for. */
  ranks?: 'uniform' | 'mixed';
  strategies?: readonly StrategyName[];
  /** The job settings of the defended runs (default DEFENSES). */
  defenses?: Partial<FederationSpec>;
}

function scaleFactors(adapter: LoraAdapter, scale: { A?: number; B?: number }): LoraAdapter {
  return {
    alpha: adapter.alpha,
    modules: new Map(
      [...adapter.modules].map(([path, f]) => [
        path,
        { ...f, A: f.A.map((x) => x * (scale.A ?? 1)), B: f.B.map((x) => x * (scale.B ?? 1)) },
      ]),
    ),
  };
}

/** An adapter in an unrelated direction (drawn from another distribution), with `like`'s factor norms. */
function foreignLike(like: LoraAdapter, seed: number): LoraAdapter {
  const random = new Random(seed);
  const draw = (values: Float32Array) => {
    const noise = Float32Array.from(values, () => random.normal());
    const factor = frobeniusNorm(values) / (frobeniusNorm(noise) || 1);
    return noise.map((x) => x * factor);
  };
  return {
    alpha: like.alpha,
    modules: new Map([...like.modules].map(([path, f]) => [path, { ...f, A: draw(f.A), B: draw(f.B) }])),
  };
}

function products(adapter: LoraAdapter): Map<string, Float32Array> {
  return new Map([...adapter.modules].map(([path, f]) => [path, loraProduct(f, adapter.alpha).data]));
}

function relativeDistance(x: LoraAdapter, honest: LoraAdapter): number {
  const px = products(x);
  let diff = 0;
  let base = 0;
  for (const [path, h] of products(honest)) {
    const a = px.get(path) as Float32Array;
    for (let i = 0; i < h.length; i++) {
      diff += ((a[i] as number) - (h[i] as number)) ** 2;
      base += (h[i] as number) ** 2;
    }
  }
  return Math.sqrt(diff / base);
}

/** What attacker `k` sends instead of its honest update (`honest`) under `attack`. */
function poison(
  attack: AttackName,
  honest: LoraAdapter,
  k: number,
  defended: boolean,
): { adapter: LoraAdapter; numSamples: number; metrics: Record<string, number> } {
  const plain = { numSamples: 100, metrics: { loss: 1 } };
  switch (attack) {
    case 'scaled_x1000':
      return { ...plain, adapter: scaleFactors(honest, { B: 1000 }) };
    case 'sign_flipped':
      return { ...plain, adapter: scaleFactors(honest, { B: -1 }) };
    case 'zero_b_huge_a': {
      // the product is 0, so a product bound passes it; A as large as the job's factor bound allows
      const aNorm = Math.max(...[...honest.modules.values()].map((f: LoraFactors) => frobeniusNorm(f.A)));
      const target = defended ? 999 : 1e6;
      return { ...plain, adapter: scaleFactors(honest, { A: target / aNorm, B: 0 }) };
    }
    case 'max_samples':
      return { ...plain, numSamples: 2 ** 31 - 1, adapter: foreignLike(honest, 1000 + k) };
    case 'extreme_metrics':
      return { ...plain, adapter: honest, metrics: { loss: 1.7e308 } };
    case 'sybil_20pct':
      // one identity's poison enrolled many times: identical updates in one foreign direction, 10x larger
      return { ...plain, adapter: scaleFactors(foreignLike(honest, 4242), { B: 10 }) };
  }
}

/** Every attack against every strategy, with the defenses on and off. */
export async function runAttackSuite(options: AttackSuiteOptions): Promise<AttackRow[]> {
  const rank = options.rank;
  const template: RoundStart = {
    type: 'round_start',
    jobId: 'attack-suite',
    round: 0,
    clusterId: 0,
    deadline: 0,
    config: {
      baseModel: { id: 'suite', sha256: '0'.repeat(64), architecture: options.architecture },
      targetModules: options.targetModules,
      rank,
      alpha: 16,
      localSteps: 1,
      learningRate: 1e-3,
      batchSize: 1,
    },
    adapter: null,
  };
  const attackerCount = Math.round(options.attackers * options.clients);
  const rows: AttackRow[] = [];
  for (const strategy of options.strategies ?? (['fedavg', 'hetlora', 'flexlora'] as const)) {
    // heterogeneous devices where the strategy allows them, attackers among both ranks
    const mixed = options.ranks === 'mixed' && strategy !== 'fedavg';
    const rankOf = (i: number) => (mixed && i % 2 === 1 ? Math.max(1, rank >> 1) : rank);
    const honest = Array.from({ length: options.clients }, (_, i) =>
      sampleAdapter(
        { ...template, config: { ...template.config, rank: rankOf(i) } },
        undefined,
        { seed: 1, scale: 0.05, noise: 0.5 },
        i,
      ),
    );
    const base: FederationSpec = {
      strategy,
      clustering: false,
      maxRank: rank,
      alpha: 16,
      targetModules: options.targetModules,
      baseModel: template.config.baseModel,
      clientsPerRound: options.clients,
    };
    const honestOnly = (
      await STRATEGIES[strategy].aggregate(
        honest.slice(attackerCount).map((adapter, i) => ({ clientId: `h${i}`, numSamples: 100, adapter })),
        16,
      )
    ).forRank(rank);
    for (const attack of ATTACKS) {
      for (const defenses of ['off', 'on'] as const) {
        // "off" is the server before these defenses: a product bound only, sample weights, the mean
        const spec: FederationSpec =
          defenses === 'on'
            ? { ...base, ...(options.defenses ?? DEFENSES) }
            : { ...base, maxFactorNorm: Number.MAX_VALUE };
        let refused = 0;
        const updates: RoundUpdate[] = [];
        honest.forEach((adapter, i) => {
          const assignment: Assignment = { clientId: `c${i}`, rank: rankOf(i), clusterId: 0 };
          const sent = i < attackerCount ? poison(attack, adapter, i, defenses === 'on') : undefined;
          const update = sent ?? { adapter, numSamples: 100, metrics: { loss: 1 } };
          if (checkAdapter(spec, assignment, update.adapter)) {
            refused++;
            return;
          }
          updates.push({ clientId: assignment.clientId, assignment, ...update });
        });
        const result = await aggregateRound(spec, INITIAL_STATE, () => undefined, updates, 0);
        rows.push({
          strategy,
          ranks: mixed ? 'mixed' : 'uniform',
          attack,
          defenses,
          refused,
          distance: relativeDistance(result.adapters.get(0) as LoraAdapter, honestOnly),
          finiteMetrics: Object.values(result.metrics).every(Number.isFinite),
        });
      }
    }
  }
  return rows;
}
