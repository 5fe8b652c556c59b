/** vitest global setup of the "replicas" project: one throwaway Redis for the run. */
import type { TestProject } from 'vitest/node';
import { startLocalRedis } from '../../scripts/lib/local-redis.js';

export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const redis = await startLocalRedis();
  project.provide('redisUrl', redis.url);
  return () => redis.stop();
}

declare module 'vitest' {
  export interface ProvidedContext {
    redisUrl: string;
  }
}
