import { spawnSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { defineConfig } from 'vitest/config';

/**
 * Tests that start their own redis-server need it installed (`.ci/run` installs it).
 * Without it they are left out, saying so, rather than failing on a fresh machine.
 */
function testsNeedingMissingRedis(): string[] {
  if (spawnSync('redis-server', ['--version']).status === 0) return [];
  const files = readdirSync('test', { recursive: true, encoding: 'utf8' })
    .filter((f) => f.endsWith('.test.ts'))
    .map((f) => join('test', f))
    .filter((f) => /startRedis|startSentinel|runOwnershipHistory/.test(readFileSync(f, 'utf8')));
  console.warn(
    `redis-server is not on PATH: skipping ${files.length} test files that start Redis (${files.join(', ')})`,
  );
  return files;
}

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    exclude: ['**/node_modules/**', ...testsNeedingMissingRedis()],
    // Real QEMU guests, real redis-server processes and a real browser: give them time.
    testTimeout: 60_000,
    hookTimeout: 120_000,
    // Two cores: run files in parallel but not so many that QEMU under TCG starves.
    maxWorkers: 2,
    pool: 'forks',
    // Names the Redis command behind an unhandled rejection (the error itself does not).
    setupFiles: ['test/support/name-unhandled-commands.ts'],
    reporters: ['default', 'json'],
    // Read by .ci/run to print the plain 'N passed, N failed' closing line.
    outputFile: { json: 'test-artifacts/vitest-results.json' },
  },
});
