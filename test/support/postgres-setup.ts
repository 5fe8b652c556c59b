/** vitest global setup of the "server on PostgreSQL" project: one throwaway PostgreSQL server for the run. */
import type { TestProject } from 'vitest/node';
import { startLocalPostgres } from '../../scripts/lib/local-postgres.js';

export default async function setup(project: TestProject): Promise<() => void> {
  const postgres = await startLocalPostgres();
  project.provide('postgresAdminUrl', postgres.adminUrl);
  return () => postgres.stop();
}

declare module 'vitest' {
  export interface ProvidedContext {
    postgresAdminUrl: string;
  }
}
