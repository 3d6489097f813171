#!/usr/bin/env node
// Prints the closing line CI reads ("tests: N passed, N failed, N skipped") from
// vitest's JSON report. Exits 1 when the report is missing or counts no test.
import { existsSync, readFileSync } from 'node:fs';

const path = process.argv[2] ?? 'test-artifacts/vitest-results.json';
if (!existsSync(path)) {
  console.error(`no vitest report at ${path}`);
  process.exit(1);
}
const r = JSON.parse(readFileSync(path, 'utf8'));
const skipped = (r.numPendingTests ?? 0) + (r.numTodoTests ?? 0);
console.log(`tests: ${r.numPassedTests} passed, ${r.numFailedTests} failed, ${skipped} skipped`);
process.exit(r.numTotalTests > 0 ? 0 : 1);
