import type { ServerConfig } from '../config.js';
import { type PostgresOptions, PostgresStore } from './postgres-store.js';
import { SqliteStore } from './sqlite-store.js';
import { type Store, StoreError } from './store.js';

/** PostgreSQL when the configuration names a database, the embedded SQLite file otherwise. */
export async function openStore(
  config: Pick<ServerConfig, 'dataDir' | 'databaseUrl'> & Partial<Pick<ServerConfig, 'redisUrl'>>,
  postgres: PostgresOptions = {},
): Promise<Store> {
  if (config.databaseUrl !== '') {
    return PostgresStore.open(config.databaseUrl, { ...postgres, replica: (config.redisUrl ?? '') !== '' });
  }
  if ((config.redisUrl ?? '') !== '') {
    throw new StoreError(
      'invalid_config',
      'replicas (FLOE_REDIS_URL) share a PostgreSQL database: set FLOE_DATABASE_URL',
    );
  }
  return new SqliteStore(config.dataDir);
}
