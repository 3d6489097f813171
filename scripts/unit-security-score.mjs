#!/usr/bin/env node
/**
 * Prints the exposure score `systemd-analyze security --offline=true` gives the unit
 * (README "systemd"), with the settings it still counts against it.
 *   node scripts/unit-security-score.mjs [UNIT] [--ref GIT-REF]
 * UNIT defaults to systemd/consoled.service; with --ref, the unit as it is at that
 * commit (e.g. `--ref main` for the score before a change). Needs systemd-analyze
 * (systemd 252 or later); systemd need not be running.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { parseArgs } from 'node:util';

/** Runs the analysis on `unitPath`: the score, its level, and the lines marked ✗. */
export function unitSecurity(unitPath) {
  let out;
  try {
    out = execFileSync('systemd-analyze', ['security', '--offline=true', '--no-pager', unitPath], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'pipe'],
    });
  } catch (err) {
    // The exit status is non-zero when the score is above --threshold (100 by default: never).
    out = `${err.stdout ?? ''}`;
    if (!out) throw err;
  }
  const m = /Overall exposure level for \S+: ([0-9.]+) (\S+)/.exec(out);
  if (!m) throw new Error(`no score in the output of systemd-analyze security:\n${out}`);
  const open = out
    .split('\n')
    .filter((l) => l.startsWith('✗'))
    .map((l) => l.replace(/^✗\s+/, '').replace(/\s{2,}/g, '  ').trim());
  return { score: Number(m[1]), level: m[2], open };
}

function main() {
  const { values, positionals } = parseArgs({ allowPositionals: true, options: { ref: { type: 'string' } } });
  let unit = positionals[0] ?? 'systemd/consoled.service';
  let dir = null;
  if (values.ref) {
    dir = mkdtempSync(join(tmpdir(), 'unit-score-'));
    const text = execFileSync('git', ['show', `${values.ref}:${unit}`], { encoding: 'utf8' });
    unit = join(dir, basename(unit));
    writeFileSync(unit, text);
  }
  try {
    const { score, level, open } = unitSecurity(unit);
    process.stdout.write(`${values.ref ? `${values.ref}:` : ''}${positionals[0] ?? 'systemd/consoled.service'}: exposure ${score} ${level}\n`);
    for (const line of open) process.stdout.write(`  ✗ ${line}\n`);
  } finally {
    if (dir) rmSync(dir, { recursive: true, force: true });
  }
}

if (process.argv[1] && import.meta.url.endsWith(basename(process.argv[1]))) main();
