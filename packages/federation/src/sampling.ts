/** Reproducible client sampling: the same job, round and eligible set always give the same sample. */
import { Random, hashString } from '@floe/shared';

/** Up to `count` of `eligible`, uniformly without replacement, seeded by `key`. */
export function sampleClients(eligible: readonly string[], count: number, key: string): string[] {
  return new Random(hashString(key)).shuffled([...eligible].sort()).slice(0, count);
}
