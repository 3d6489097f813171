import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // Real QEMU guests, real redis-server processes and a real browser: give them time.
    testTimeout: 60_000,
    hookTimeout: 120_000,
    // Two cores: run files in parallel but not so many that QEMU under TCG starves.
    maxWorkers: 2,
    pool: 'forks',
    reporters: ['default', 'json'],
    // Read by .ci/run to print the plain 'N passed, N failed' closing line.
    outputFile: { json: 'test-artifacts/vitest-results.json' },
  },
});
