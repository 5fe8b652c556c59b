import { defineConfig } from 'vitest/config';
import { findPostgresBin } from './scripts/lib/local-postgres.js';

/** The server suite runs twice: on the embedded SQLite store and on PostgreSQL (a throwaway server). */
const SERVER_SUITE = ['test/server/**/*.test.ts', 'packages/server/test/**/*.test.ts'];

function postgresProject() {
  if (!findPostgresBin()) {
    // CI installs it: there, a missing PostgreSQL is a failure, not a skip
    if (process.env['CI']) throw new Error('CI needs PostgreSQL for the server suite (apt-get install postgresql)');
    console.warn('PostgreSQL is not installed: the server suite runs on SQLite only (apt-get install postgresql)');
    return [];
  }
  return [
    {
      extends: true as const,
      test: { name: 'server-on-postgres', include: SERVER_SUITE, globalSetup: ['test/support/postgres-setup.ts'] },
    },
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
      { extends: true, test: { name: 'all', include: ['packages/*/test/**/*.test.ts', 'test/**/*.test.ts'] } },
      ...postgresProject(),
    ],
  },
});
