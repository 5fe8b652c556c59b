import { defineConfig } from 'vitest/config';

// Tests run on the TypeScript sources: the `floe-source` export condition maps each workspace
// package to its src/ so no build is needed first.
export default defineConfig({
  resolve: { conditions: ['floe-source'] },
  ssr: { resolve: { conditions: ['floe-source'] } },
  test: {
    include: ['packages/*/test/**/*.test.ts', 'test/**/*.test.ts'],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    // Under CI, also write a JSON report; scripts/test-summary.mjs turns it into a plain closing line.
    reporters: process.env['CI'] ? ['default', 'json'] : ['default'],
    outputFile: { json: '.vitest-report.json' },
  },
});
