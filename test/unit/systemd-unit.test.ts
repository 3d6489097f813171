/**
 * systemd/consoled.service: `systemd-analyze verify` accepts it, it declares the
 * service lifecycle the daemon implements (docs/design.md "Service lifecycle"), and
 * `systemd-analyze security` keeps its exposure at 2.0 or below (README "systemd").
 * Skipped where systemd-analyze is not installed; it runs offline, systemd need not be PID 1.
 */
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { REPO_ROOT } from '../support/daemon.js';

const UNIT = join(REPO_ROOT, 'systemd', 'consoled.service');
const hasAnalyze = spawnSync('systemd-analyze', ['--version']).status === 0;

function settings(): Map<string, string[]> {
  const map = new Map<string, string[]>();
  for (const line of readFileSync(UNIT, 'utf8').split('\n')) {
    const m = /^([A-Za-z]+)=(.*)$/.exec(line);
    if (m) map.set(m[1]!, [...(map.get(m[1]!) ?? []), m[2]!]);
  }
  return map;
}

describe('systemd/consoled.service', () => {
  it('declares notify, the watchdog, reload and restart as the daemon implements them', () => {
    const s = settings();
    expect(s.get('Type')).toEqual(['notify']);
    expect(s.get('NotifyAccess')).toEqual(['all']);
    expect(s.get('WatchdogSec')).toHaveLength(1);
    expect(s.get('Restart')).toEqual(['on-failure']);
    expect(s.get('ExecReload')?.[0]).toMatch(
      /consolectl(\.js)? reload --config \/etc\/consoled\/consoled\.yaml$/,
    );
    expect(s.get('MemoryDenyWriteExecute')).toBeUndefined(); // V8's JIT needs W+X pages
    expect(s.get('CapabilityBoundingSet')).toEqual(['']);
  });

  it.skipIf(!hasAnalyze)('passes systemd-analyze verify', () => {
    const r = spawnSync('systemd-analyze', ['verify', UNIT], { encoding: 'utf8' });
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
  });

  it.skipIf(!hasAnalyze)('has an exposure of 2.0 or less by systemd-analyze security', () => {
    // The script the README gives for the score, run as an operator would.
    const r = spawnSync(process.execPath, [join(REPO_ROOT, 'scripts', 'unit-security-score.mjs'), UNIT], {
      encoding: 'utf8',
    });
    expect(r.status, r.stderr).toBe(0);
    const score = Number(/exposure ([0-9.]+) /.exec(r.stdout)?.[1]);
    expect(score, r.stdout).toBeGreaterThan(0);
    expect(score, r.stdout).toBeLessThanOrEqual(2.0);
  });
});
