#!/usr/bin/env node
// The long ownership fault run (test/fault/ownership-fault.long.ts):
//   npm run fault:ownership -- [--seed S] [--histories N] [--ops K] [--guests G] [--burst-lines L]
//                              [--upgrade-rate R]
// Needs the build (npm run build) and redis-server on PATH.
import { spawnSync } from 'node:child_process';
import { parseArgs } from 'node:util';

const { values } = parseArgs({
  options: {
    seed: { type: 'string' },
    histories: { type: 'string', default: '200' },
    ops: { type: 'string', default: '12' },
    guests: { type: 'string', default: '2' },
    'burst-lines': { type: 'string', default: '0' },
    'upgrade-rate': { type: 'string', default: '0.15' },
  },
});
const env = {
  ...process.env,
  FAULT_HISTORIES: values.histories,
  FAULT_OPS: values.ops,
  FAULT_GUESTS: values.guests,
  FAULT_BURST_LINES: values['burst-lines'],
  FAULT_UPGRADE_RATE: values['upgrade-rate'],
  ...(values.seed ? { FAULT_SEED: values.seed } : {}),
};
const run = spawnSync('npx', ['vitest', 'run', '--config', 'vitest.fault.config.ts', 'test/fault/ownership-fault.long.ts'], {
  stdio: 'inherit',
  env,
});
process.exit(run.status ?? 1);
