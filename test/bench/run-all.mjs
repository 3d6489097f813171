#!/usr/bin/env node
// Runs every benchmark in test/bench/, one after another (never two at once: they
// measure CPU and time), with modest sizes so the whole set fits in minutes, and
// prints where each wrote its JSON. Usage (after `npm run build`; `npm run bench` does both):
//   node test/bench/run-all.mjs [--full] [--only name[,name...]]
// --full runs each with its own defaults (the sizes docs/benchmarks.md reports). A
// benchmark that fails (a missing socat, websockify or redis-server) is reported and
// the rest still run; the exit status is 1 if any failed.
import { spawn } from 'node:child_process';
import { statSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const here = dirname(fileURLToPath(import.meta.url));
const repoRoot = resolve(here, '..', '..');

/** Each benchmark with the modest arguments it runs with here. */
const BENCHMARKS = [
  { name: 'capture-throughput', args: ['--mib', '256', '--runs', '1', '--trickle-seconds', '5'] },
  { name: 'capture-windows', args: ['--windows', '0,100', '--rounds', '1', '--seconds', '5'] },
  { name: 'log-writer', args: ['--mib', '128', '--runs', '1'] },
  { name: 'idle-guests', args: ['--guests', '100', '--idle-seconds', '5'] },
  { name: 'log-retrieval', args: ['--requests', '100', '--big-mib', '128'] },
  { name: 'keystroke-rtt', args: ['--count', '500', '--rounds', '2'] },
  { name: 'console-fanout', args: ['--seconds', '10', '--viewers', '20'] },
  { name: 'replication-throughput', args: ['--mib', '128', '--runs', '1'] },
  { name: 'replication-lag', args: ['--seconds', '5', '--guests', '50'] },
  { name: 'replication-read', args: ['--requests', '100'] },
  { name: 'handoff-time', args: ['--handoffs', '5'] },
  { name: 'migration-gap', args: ['--runs', '3'] },
  { name: 'redis-capacity', args: ['--entries', '1000'] },
  { name: 'redis-append-cost', args: ['--mib', '64', '--runs', '1'] },
  { name: 'ready-time', args: ['--guests', '200', '--runs', '1'] },
  { name: 'restart-loss', args: ['--restarts', '3', '--upgrades', '2'] },
  { name: 'heap-churn', args: ['--cycles', '100', '--warmup', '20'] },
  {
    name: 'soak',
    args: [
      '--minutes',
      '4',
      '--warmup-minutes',
      '1',
      '--guests',
      '50',
      '--churn-ms',
      '5000',
      '--cycle-ms',
      '10000',
    ],
  },
];

const { values } = parseArgs({
  options: { full: { type: 'boolean', default: false }, only: { type: 'string' } },
});
const only = values.only ? new Set(values.only.split(',')) : null;
if (only) {
  const unknown = [...only].filter((n) => !BENCHMARKS.some((b) => b.name === n));
  if (unknown.length) {
    console.error(
      `no such benchmark: ${unknown.join(', ')} (have ${BENCHMARKS.map((b) => b.name).join(', ')})`,
    );
    process.exit(2);
  }
}

/** Whether `path` was written at or after `ms` (a JSON left by an earlier run does not count). */
function writtenSince(path, ms) {
  try {
    return statSync(path).mtimeMs >= ms - 1000;
  } catch {
    return false;
  }
}

function run(script, args) {
  return new Promise((resolveRun) => {
    const child = spawn(process.execPath, [script, ...args], { cwd: repoRoot, stdio: 'inherit' });
    child.on('exit', (code, signal) => resolveRun(signal ? `signal ${signal}` : code));
    child.on('error', (err) => resolveRun(err.message));
  });
}

const outcomes = [];
for (const { name, args } of BENCHMARKS) {
  if (only && !only.has(name)) continue;
  const script = join(here, `${name}.mjs`);
  const used = values.full ? [] : args;
  console.log(`\n## ${name} (node ${relative(repoRoot, script)} ${used.join(' ')})\n`);
  const started = Date.now();
  const result = await run(script, used);
  const json = join(repoRoot, 'test-artifacts', 'bench', `${name}.json`);
  const seconds = ((Date.now() - started) / 1000).toFixed(0);
  outcomes.push({
    name,
    ok: result === 0,
    result,
    json: writtenSince(json, started) ? relative(repoRoot, json) : null,
    seconds,
  });
}

console.log('\n## Results\n');
for (const o of outcomes) {
  const where = o.ok ? `wrote ${o.json ?? '(no JSON found)'}` : `FAILED (${o.result})`;
  console.log(`${o.name.padEnd(24)} ${`${o.seconds} s`.padStart(7)}  ${where}`);
}
process.exit(outcomes.every((o) => o.ok) ? 0 : 1);
