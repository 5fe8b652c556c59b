/**
 * A store for @fastify/rate-limit that counts in Redis, so that replicas share one HTTP limit, and in
 * this process's memory while Redis cannot answer (rate-limiter-flexible's insurance limiter, as for
 * device messages). The plugin's own Redis store fails every request with a 500 during an outage, and
 * its `skipOnError` would lift the limit altogether.
 */
import type { FastifyRateLimitStore, FastifyRateLimitStoreCtor } from '@fastify/rate-limit';
import type { Redis } from 'ioredis';
import { RateLimiterMemory, RateLimiterRedis, RateLimiterRes } from 'rate-limiter-flexible';

type Callback = Parameters<FastifyRateLimitStore['incr']>[1];

export function insuredRedisStore(redis: Redis, namespace: string): FastifyRateLimitStoreCtor {
  class InsuredRedisStore implements FastifyRateLimitStore {
    /** One limiter per limit and window: the plugin passes them with each count. */
    private readonly limiters = new Map<string, RateLimiterRedis>();

    constructor(
      _options?: unknown,
      private readonly prefix = namespace,
    ) {}

    private limiter(timeWindowMs: number, max: number): RateLimiterRedis {
      const id = `${max}/${timeWindowMs}`;
      let limiter = this.limiters.get(id);
      if (!limiter) {
        const limit = { points: max, duration: Math.max(1, Math.ceil(timeWindowMs / 1000)) };
        limiter = new RateLimiterRedis({
          storeClient: redis,
          keyPrefix: `${this.prefix}${id}`,
          ...limit,
          // straight to memory while the connection is down, not after ioredis's retries
          rejectIfRedisNotReady: true,
          insuranceLimiter: new RateLimiterMemory(limit),
        });
        this.limiters.set(id, limiter);
      }
      return limiter;
    }

    incr(key: string, callback: Callback, timeWindow: number, max: number): void {
      this.limiter(timeWindow, max)
        .consume(key)
        .then(
          (counted) => callback(null, { current: counted.consumedPoints, ttl: counted.msBeforeNext }),
          // over the limit is an answer (the plugin compares current with max), anything else an error
          (refused: unknown) =>
            refused instanceof RateLimiterRes
              ? callback(null, { current: refused.consumedPoints, ttl: refused.msBeforeNext })
              : callback(refused instanceof Error ? refused : new Error(String(refused))),
        );
    }

    child(routeOptions: Parameters<FastifyRateLimitStore['child']>[0]): FastifyRateLimitStore {
      const route = (routeOptions as { routeInfo?: { method?: unknown; url?: unknown } }).routeInfo;
      return new InsuredRedisStore(undefined, `${this.prefix}${String(route?.method)}${String(route?.url)}-`);
    }
  }
  return InsuredRedisStore;
}
