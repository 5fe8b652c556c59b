import { configDefaults, defineConfig } from 'vitest/config';
import { findPostgresBin } from './scripts/lib/local-postgres.js';
import { hasNginx } from './scripts/lib/local-nginx.js';
import { hasRedisServer } from './scripts/lib/local-redis.js';

/** The server suite runs twice: on the embedded SQLite store and on PostgreSQL (a throwaway server). */
const SERVER_SUITE = ['test/server/**/*.test.ts', 'packages/server/test/**/*.test.ts'];
/** Server replicas over one PostgreSQL and one Redis (throwaway servers), behind the deployment's nginx. */
const REPLICA_SUITE = ['test/replicas/**/*.test.ts'];

/** CI installs both engines: there, a missing one is a failure, not a skip. */
function missing(what: string, install: string): [] {
  if (process.env['CI']) throw new Error(`CI needs ${what} for the server suite (apt-get install ${install})`);
  console.warn(`${what} is not installed: the tests that need it are left out (apt-get install ${install})`);
  return [];
}

function postgresProjects() {
  if (!findPostgresBin()) return missing('PostgreSQL', 'postgresql');
  return [
    {
      extends: true as const,
      test: { name: 'server-on-postgres', include: SERVER_SUITE, globalSetup: ['test/support/postgres-setup.ts'] },
    },
    ...(!hasRedisServer()
      ? missing('Redis', 'redis-server')
      : !hasNginx()
        ? missing('nginx', 'nginx')
        : [
            {
              extends: true as const,
              test: {
                name: 'replicas',
                include: REPLICA_SUITE,
                globalSetup: ['test/support/postgres-setup.ts', 'test/support/redis-setup.ts'],
              },
            },
          ]),
  ];
}

// Tests run on the TypeScript sources: the `floe-source` export condition maps each workspace
// package to its src/ so no build is needed first.
export default defineConfig({
  resolve: { conditions: ['floe-source'] },
  ssr: { resolve: { conditions: ['floe-source'] } },
  test: {
    testTimeout: 60_000,
    hookTimeout: 60_000,
    // Under CI, also write a JSON report; scripts/test-summary.mjs turns it into a plain closing line.
    reporters: process.env['CI'] ? ['default', 'json'] : ['default'],
    outputFile: { json: '.vitest-report.json' },
    projects: [
      {
        extends: true,
        test: {
          name: 'all',
          include: ['packages/*/test/**/*.test.ts', 'test/**/*.test.ts'],
          exclude: [...configDefaults.exclude, ...REPLICA_SUITE],
        },
      },
      ...postgresProjects(),
    ],
  },
});
