import { describe, expect, it } from 'vitest';
import { Random } from '@floe/shared';
import {
  COUNTDOWN_REWARD,
  DEFAULT_REWARD,
  HELP_TAG,
  TokenBucket,
  bootstrap,
  filterPrompts,
  groupAdvantages,
  parseReply,
  pendingTag,
  randomWishes,
  rewardOf,
  stripHelpTag,
  underBudget,
} from '../src/index.js';

describe('the help tag', () => {
  it('reads a reply as an answer, a request for help or malformed', () => {
    expect(parseReply('579\n')).toEqual({ kind: 'answer', answer: '579' });
    expect(parseReply('-12')).toEqual({ kind: 'answer', answer: '-12' });
    expect(parseReply(`${HELP_TAG}\n123`)).toEqual({ kind: 'help', before: '' });
    expect(parseReply(`57${HELP_TAG}`)).toEqual({ kind: 'help', before: '57' });
    expect(parseReply('57 apples')).toEqual({ kind: 'malformed', text: '57 apples' });
    // opening the tag is the decision: the rest is forced, so a reply that strays after it still asked
    expect(parseReply('<unknown>hel!')).toEqual({ kind: 'help', before: '' });
    expect(parseReply('3 <')).toEqual({ kind: 'help', before: '3' });
    expect(parseReply('')).toEqual({ kind: 'malformed', text: '' });
  });

  it('strips the tag from served text and holds back a tag still arriving', () => {
    expect(stripHelpTag(`The answer is ${HELP_TAG} more`)).toEqual({ text: 'The answer is ', asked: true });
    expect(stripHelpTag('no tag here')).toEqual({ text: 'no tag here', asked: false });
    expect(pendingTag('hello <unkn')).toBe(5);
    expect(pendingTag('hello <')).toBe(1);
    expect(pendingTag('a < b')).toBe(0);
    expect(pendingTag('')).toBe(0);
  });
});

describe('GAPG arithmetic', () => {
  it('rewards local right answers above the cloud above a well-formed wrong answer (2.2, 1, 0.2, 0)', () => {
    const r = (reply: string, cloudCorrect: boolean) => rewardOf(parseReply(reply), '42', cloudCorrect);
    expect([r('42', false), r(HELP_TAG, true), r('41', true)]).toEqual([2.2, 1, 0.2]);
    // the paper's Countdown weights, on request
    expect(rewardOf(parseReply(HELP_TAG), '42', true, COUNTDOWN_REWARD)).toBe(0.5);
    expect(r('42', false)).toBeCloseTo(DEFAULT_REWARD.correct + DEFAULT_REWARD.format);
    expect(r(HELP_TAG, true)).toBe(DEFAULT_REWARD.cloud);
    expect(r(HELP_TAG, false)).toBe(0);
    expect(r('41', true)).toBe(DEFAULT_REWARD.format);
    expect(r('forty-two', true)).toBe(0);
  });

  it('gives GAPG advantages G/(G-1)(r - mean)/G and GRPO advantages normalized by the spread', () => {
    const rewards = [2.2, 0.2, 0.2, 0.5];
    const mean = 3.1 / 4;
    groupAdvantages(rewards, 'gapg').forEach((a, i) => expect(a).toBeCloseTo(((4 / 3) * (rewards[i]! - mean)) / 4, 12));
    // scaling every reward scales GAPG's push, not GRPO's
    const scaled = rewards.map((r) => r * 10);
    groupAdvantages(scaled, 'gapg').forEach((a, i) => expect(a).toBeCloseTo(10 * groupAdvantages(rewards, 'gapg')[i]!));
    groupAdvantages(scaled, 'grpo').forEach((a, i) => expect(a).toBeCloseTo(groupAdvantages(rewards, 'grpo')[i]!, 4));
    const std = Math.sqrt(rewards.reduce((s, r) => s + (r - mean) ** 2, 0) / 4);
    expect(groupAdvantages(rewards, 'grpo')[0]).toBeCloseTo((2.2 - mean) / std / 4, 3);
    expect(groupAdvantages([0.5, 0.5, 0.5], 'grpo')).toEqual([0, 0, 0]);
    expect(() => groupAdvantages([1], 'gapg')).toThrow(/two samples/);
  });

  it('keeps every locally solved prompt and at most floor(rho x those) that only the cloud solves', () => {
    const groups = [
      ...Array.from({ length: 7 }, () => ({ solvedLocally: true, cloudCorrect: false })),
      ...Array.from({ length: 10 }, () => ({ solvedLocally: false, cloudCorrect: true })),
      ...Array.from({ length: 5 }, () => ({ solvedLocally: false, cloudCorrect: false })),
    ];
    const kept = filterPrompts(groups, 3 / 7, new Random(1));
    expect(kept.filter((i) => i < 7)).toEqual([0, 1, 2, 3, 4, 5, 6]);
    expect(kept.filter((i) => i >= 7 && i < 17)).toHaveLength(3);
    expect(kept.filter((i) => i >= 17)).toEqual([]);
    // cloud-only prompts are at most 30% of what is kept
    expect(3 / kept.length).toBeLessThanOrEqual(0.3);
    expect(filterPrompts(groups.slice(7), 3 / 7, new Random(1))).toEqual([]);
  });
});

describe('budgets', () => {
  it('grants offloading wishes in order until the share is spent; the overflow answers locally', () => {
    const wants = [true, true, true, false, true, false, false, false, false, false];
    const local = [false, false, true, true, false, true, true, true, true, true];
    const cloud = [true, true, false, false, true, false, false, false, false, false];
    const outcome = underBudget(wants, local, cloud, 0.2);
    expect(outcome.offloaded).toEqual([true, true, false, false, false, false, false, false, false, false]);
    // queries 0 and 1 by the cloud (right), 2 locally (right), 4 locally (wrong)
    expect(outcome.correct).toEqual([true, true, true, true, false, true, true, true, true, true]);
    expect(outcome.accuracy).toBe(0.9);
    expect(outcome.callRatio).toBe(0.2);
  });

  it('offloads exactly the budget share at random, reproducibly', () => {
    const wishes = randomWishes(1000, 0.3, 7);
    expect(wishes.filter(Boolean)).toHaveLength(300);
    expect(randomWishes(1000, 0.3, 7)).toEqual(wishes);
    expect(randomWishes(1000, 0.3, 8)).not.toEqual(wishes);
  });

  it('refills a token bucket over its window', () => {
    let now = 0;
    const bucket = new TokenBucket(2, 10, () => now);
    expect([bucket.take(), bucket.take(), bucket.take()]).toEqual([true, true, false]);
    now = 4_000; // 0.8 of a call back
    expect(bucket.take()).toBe(false);
    now = 5_000; // 1.0
    expect(bucket.take()).toBe(true);
    now = 1_000_000; // never more than the bucket holds
    expect([bucket.take(), bucket.take(), bucket.take()]).toEqual([true, true, false]);
    expect(() => new TokenBucket(1, 0)).toThrow(/window/);
  });

  it('bootstraps intervals that cover a known difference and exclude 0 only when the gap is real', () => {
    const n = 400;
    const random = new Random(3);
    const a = Array.from({ length: n }, () => random.next() < 0.7);
    const b = a.map((x, i) => (i % 5 === 0 ? false : x)); // b loses a fifth of a's right answers
    const c = a.map((x, i) => (i % 200 === 0 ? !x : x)); // c differs from a on 2 queries
    const result = bootstrap({ a, b, c }, [
      ['a', 'b'],
      ['a', 'c'],
    ]);
    const share = (xs: boolean[]) => xs.filter(Boolean).length / n;
    expect(result.accuracy['a']!.mean).toBe(share(a));
    expect(result.accuracy['a']!.low).toBeLessThan(share(a));
    expect(result.accuracy['a']!.high).toBeGreaterThan(share(a));
    const ab = result.difference['a-b']!;
    expect(ab.mean).toBeCloseTo(share(a) - share(b));
    expect(ab.low).toBeGreaterThan(0);
    const ac = result.difference['a-c']!;
    expect(ac.low).toBeLessThanOrEqual(0);
    expect(ac.high).toBeGreaterThanOrEqual(0);
  });
});
