/**
 * The arithmetic of group-adaptive policy gradient (GAPG) and of the GRPO baseline: the hierarchical
 * reward, each sample's advantage within its group, and the adaptive filter that keeps the cloud's share
 * of the kept prompts under a budget (DESIGN.md, "GAPG, in short"; decision 0031).
 */
import type { Random } from '@floe/model';
import type { Reply } from './help-tag.js';

export interface RewardWeights {
  /** A correct local answer (alpha_a); a correct answer is also well formed and gets `format` too. */
  correct: number;
  /** A request for help that the cloud answered correctly (alpha_c). */
  cloud: number;
  /** A well-formed answer (alpha_f), right or wrong. */
  format: number;
}

/** The paper's Countdown values: local beats the cloud, which beats a wrong but well-formed answer. */
export const COUNTDOWN_REWARD: RewardWeights = { correct: 2, cloud: 0.5, format: 0.2 };

/**
 * The default: the Countdown values with help worth 1. Asking then pays where the edge is right less
 * than 40% of the time instead of 15%; with 0.5, edge-small's policy stopped asking on every kind of
 * arithmetic problem, the one kind where it paid (3-digit addition) gaining 0.06-0.14 per prompt
 * against 1.7 lost on each request the edge could have answered (decision 0031).
 */
export const DEFAULT_REWARD: RewardWeights = { ...COUNTDOWN_REWARD, cloud: 1 };

/** The order the method needs: a right local answer pays more than help, which pays more than a wrong answer, which pays at least 0. */
export function rewardIsOrdered({ correct, cloud, format }: RewardWeights): boolean {
  return correct > cloud && cloud > format && format >= 0;
}

/** The reward of one sampled reply, given the true answer and whether the cloud answers this prompt right. */
export function rewardOf(reply: Reply, truth: string, cloudCorrect: boolean, weights = DEFAULT_REWARD): number {
  if (reply.kind === 'help') return cloudCorrect ? weights.cloud : 0;
  if (reply.kind === 'answer') return reply.answer === truth ? weights.correct + weights.format : weights.format;
  return 0;
}

export type Algorithm = 'gapg' | 'grpo';

/**
 * The weight of each sample's log-likelihood in its group's gradient.
 *
 * - GAPG: `G/(G-1) (r_i - mean r) / G`, the unbiased leave-one-out baseline form; no division by the
 *   spread, so a group whose rewards barely differ moves the policy barely.
 * - GRPO: `(r_i - mean r) / (std r + eps) / G`: every group with any difference pushes as hard as any
 *   other, which is what drives it toward always asking (a group of wrong answers where help pays
 *   0.5 gets the same push to ask as a group where a right answer pays 2.2 gets to answer).
 */
export function groupAdvantages(rewards: readonly number[], algorithm: Algorithm): number[] {
  const G = rewards.length;
  if (G < 2) throw new Error('a group needs at least two samples');
  const mean = rewards.reduce((a, b) => a + b, 0) / G;
  if (algorithm === 'gapg') return rewards.map((r) => ((G / (G - 1)) * (r - mean)) / G);
  const std = Math.sqrt(rewards.reduce((a, r) => a + (r - mean) ** 2, 0) / G);
  return rewards.map((r) => (r - mean) / (std + 1e-4) / G);
}

/** What the filter needs to know of one prompt's group. */
export interface GroupOutcome {
  /** Some local sample answered correctly. */
  solvedLocally: boolean;
  /** The cloud answers this prompt correctly. */
  cloudCorrect: boolean;
}

/** The share of kept prompts that only the cloud solves is at most rho / (1 + rho): 3/7 caps it at 30%. */
export const DEFAULT_RHO = 3 / 7;

/**
 * Adaptive prompt filtering: keep every prompt some local sample solved, plus at most
 * `floor(rho x that many)` of the prompts only the cloud solves (a random choice of them), and drop
 * the prompts nobody solves. Returns the kept indices in input order.
 */
export function filterPrompts(groups: readonly GroupOutcome[], rho: number, random: Random): number[] {
  const local = groups.flatMap((g, i) => (g.solvedLocally ? [i] : []));
  const cloudOnly = groups.flatMap((g, i) => (!g.solvedLocally && g.cloudCorrect ? [i] : []));
  const room = Math.floor(rho * local.length);
  const chosen = random.shuffled(cloudOnly).slice(0, room);
  return [...local, ...chosen].sort((a, b) => a - b);
}
