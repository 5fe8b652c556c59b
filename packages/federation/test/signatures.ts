/** Update signatures drawn from stated module-norm profiles, for the clustering tests. */
import type { Random } from '@floe/shared';
import type { UpdateSignature } from '../src/index.js';

export const MODULES = [0, 1, 2, 3].flatMap((layer) =>
  ['q_proj', 'v_proj', 'up_proj', 'down_proj'].map((kind) => `layers.${layer}.${kind}`),
);

export function gaussian(random: Random): number {
  return Math.sqrt(-2 * Math.log(1 - random.next())) * Math.cos(2 * Math.PI * random.next());
}

/** A signature whose log module norms are `pattern` + N(0, noise), with a random (uninformative) sketch. */
export function signature(pattern: readonly number[], noise: number, random: Random, stratum = ''): UpdateSignature {
  return {
    sketch: Float64Array.from({ length: 32 }, () => gaussian(random)),
    moduleNorms: new Map(MODULES.map((m, i) => [m, Math.exp((pattern[i] as number) + noise * gaussian(random))])),
    stratum,
  };
}

/** A pattern: attention modules (q, v) or MLP modules (up, down) carry `lift` more log norm. */
export const attention = (lift: number) => MODULES.map((m) => (/q_proj|v_proj/.test(m) ? lift : 0));
export const mlp = (lift: number) => MODULES.map((m) => (/up_proj|down_proj/.test(m) ? lift : 0));
