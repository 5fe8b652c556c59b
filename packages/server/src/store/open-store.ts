import type { ServerConfig } from '../config.js';
import { type PostgresOptions, PostgresStore } from './postgres-store.js';
import { SqliteStore } from './sqlite-store.js';
import type { Store } from './store.js';

/** PostgreSQL when the configuration names a database, the embedded SQLite file otherwise. */
export async function openStore(
  config: Pick<ServerConfig, 'dataDir' | 'databaseUrl'>,
  postgres: PostgresOptions = {},
): Promise<Store> {
  if (config.databaseUrl !== '') return PostgresStore.open(config.databaseUrl, postgres);
  return new SqliteStore(config.dataDir);
}
