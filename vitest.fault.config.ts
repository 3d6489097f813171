import { defineConfig } from 'vitest/config';

/** The long fault programs (`npm run fault:*`): one file at a time, output shown as it comes. */
export default defineConfig({
  test: {
    include: ['test/fault/**/*.long.ts'],
    testTimeout: 24 * 3600_000,
    hookTimeout: 120_000,
    pool: 'forks',
    maxWorkers: 1,
    reporters: ['default'],
    silent: false,
  },
});
