/**
 * Cloud-call budgets. At inference a token bucket over a time window (`calls` per `windowSec`,
 * refilled continuously) decides whether a request the edge wants to hand over may go; when it is
 * empty the edge answers itself. In evaluation a budget is a share of the queries: a method's wishes
 * are granted in arrival order until the share is spent, and the overflow is answered locally.
 */
import { type Interval, Random, pairedBootstrap } from '@floe/shared';

export class TokenBucket {
  private tokens: number;
  private last: number;

  constructor(
    readonly calls: number,
    readonly windowSec: number,
    private readonly now: () => number = () => Date.now(),
  ) {
    if (!(calls >= 0) || !(windowSec > 0)) throw new Error('a call budget needs calls >= 0 per a window > 0 s');
    this.tokens = calls;
    this.last = now();
  }

  /** Takes one call from the bucket if it holds one. */
  take(): boolean {
    const now = this.now();
    this.tokens = Math.min(this.calls, this.tokens + ((now - this.last) / 1000) * (this.calls / this.windowSec));
    this.last = now;
    if (this.tokens < 1) return false;
    this.tokens -= 1;
    return true;
  }
}

export interface BudgetedOutcome {
  /** Per query: answered correctly by the system. */
  correct: boolean[];
  /** Per query: sent to the cloud. */
  offloaded: boolean[];
  accuracy: number;
  callRatio: number;
}

/**
 * A method's system accuracy when at most `budget` of the queries may go to the cloud: queries it
 * wants to offload go, in order, while calls stay within floor(budget x n); the rest get the local
 * answer.
 */
export function underBudget(
  wants: readonly boolean[],
  localCorrect: readonly boolean[],
  cloudCorrect: readonly boolean[],
  budget: number,
): BudgetedOutcome {
  const n = wants.length;
  const cap = Math.floor(budget * n + 1e-9);
  let calls = 0;
  const offloaded = wants.map((want) => {
    if (!want || calls >= cap) return false;
    calls++;
    return true;
  });
  const correct = offloaded.map((sent, i) => (sent ? cloudCorrect[i] : localCorrect[i]) as boolean);
  return {
    correct,
    offloaded,
    accuracy: correct.filter(Boolean).length / Math.max(1, n),
    callRatio: calls / Math.max(1, n),
  };
}

/** Offloading a random `budget` share of queries. */
export function randomWishes(n: number, budget: number, seed: number): boolean[] {
  const chosen = new Set(new Random(seed).shuffled([...Array(n).keys()]).slice(0, Math.floor(budget * n + 1e-9)));
  return Array.from({ length: n }, (_, i) => chosen.has(i));
}

/**
 * 95% percentile bootstrap intervals over queries: of each method's accuracy, and of the difference
 * between methods that `pairs` names (`a - b`). Every resample draws the same queries for every method.
 */
export function bootstrap(
  correct: Readonly<Record<string, readonly boolean[]>>,
  pairs: readonly (readonly [string, string])[],
  options: { resamples?: number; seed?: number } = {},
): { accuracy: Record<string, Interval>; difference: Record<string, Interval> } {
  const items = Object.fromEntries(
    Object.entries(correct).map(([name, right]) => [name, [{ sums: right.map(Number), weights: right.map(() => 1) }]]),
  );
  const { value, difference } = pairedBootstrap(items, pairs, options);
  return { accuracy: value, difference };
}
