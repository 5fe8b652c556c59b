/**
 * Checks an update against what the server asked for before it may join an aggregate: the modules of
 * the job, each at the client's planned rank with the layer's shape, and a bounded product norm.
 * (Non-finite values never get this far: the codec refuses them.)
 */
import { type LoraAdapter, frobeniusNorm, loraProductNorm } from '@floe/shared';

export interface UpdateExpectation {
  /** Module path -> [outFeatures, inFeatures] of every module the client must send. */
  modules: ReadonlyMap<string, readonly [number, number]>;
  rank: number;
  alpha: number;
  /** Largest allowed Frobenius norm of a module's product (alpha / r) B A. */
  maxNorm: number;
  /** Largest allowed Frobenius norm of a module's A and of its B, where factors are averaged. */
  maxFactorNorm?: number;
}

export type UpdateProblem =
  | { code: 'missing_module' | 'unexpected_module'; module: string }
  | { code: 'wrong_shape'; module: string; expected: string; got: string }
  | { code: 'wrong_alpha'; expected: number; got: number }
  | { code: 'norm_too_large'; module: string; norm: number; maxNorm: number }
  | { code: 'factor_norm_too_large'; module: string; factor: 'A' | 'B'; norm: number; maxNorm: number };

/** Every problem with `adapter`; empty when it may be aggregated. */
export function updateProblems(adapter: LoraAdapter, expected: UpdateExpectation): UpdateProblem[] {
  const problems: UpdateProblem[] = [];
  if (adapter.alpha !== expected.alpha)
    problems.push({ code: 'wrong_alpha', expected: expected.alpha, got: adapter.alpha });
  for (const module of expected.modules.keys())
    if (!adapter.modules.has(module)) problems.push({ code: 'missing_module', module });
  for (const [module, f] of adapter.modules) {
    const shape = expected.modules.get(module);
    if (!shape) {
      problems.push({ code: 'unexpected_module', module });
      continue;
    }
    const want = `A ${expected.rank}x${shape[1]}, B ${shape[0]}x${expected.rank}`;
    const got = `A ${f.rank}x${f.inFeatures}, B ${f.outFeatures}x${f.rank}`;
    if (want !== got) {
      problems.push({ code: 'wrong_shape', module, expected: want, got });
      continue;
    }
    const norm = loraProductNorm(f, adapter.alpha);
    if (!(norm <= expected.maxNorm)) problems.push({ code: 'norm_too_large', module, norm, maxNorm: expected.maxNorm });
    const maxFactorNorm = expected.maxFactorNorm;
    if (maxFactorNorm === undefined) continue;
    for (const factor of ['A', 'B'] as const) {
      const factorNorm = frobeniusNorm(f[factor]);
      if (!(factorNorm <= maxFactorNorm)) {
        problems.push({ code: 'factor_norm_too_large', module, factor, norm: factorNorm, maxNorm: maxFactorNorm });
      }
    }
  }
  return problems;
}
