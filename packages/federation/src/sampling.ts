/** Reproducible client sampling: the same job, round and eligible set always give the same sample. */
import { Random, hashString } from '@floe/shared';

/** Up to `count` of `eligible`, uniformly without replacement, seeded by `key`. */
export function sampleClients(eligible: readonly string[], count: number, key: string): string[] {
  const pool = [...eligible].sort();
  const random = new Random(hashString(key));
  for (let i = pool.length - 1; i > 0; i--) {
    const j = random.integer(i + 1);
    [pool[i], pool[j]] = [pool[j] as string, pool[i] as string];
  }
  return pool.slice(0, count);
}
