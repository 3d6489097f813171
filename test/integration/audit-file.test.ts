/**
 * The audit file (sidecar/console/audit-file.ts, README "Audit file"): the daemon's audit lines,
 * and only those, also go to `audit.file`, rotated by size as logrotate would; a
 * directory others can write in is refused at start with BAD_CONFIG (exit 78).
 */
import { chmod, readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { startDaemon, stopAllDaemons } from '../support/daemon.js';
import { removeTmpDirs, tmpDir } from '../support/tmp.js';
import { waitFor } from '../support/wait.js';

afterAll(async () => {
  await stopAllDaemons();
  await removeTmpDirs();
});

/** The audit lines of the daemon's stdout (the harness prefixes each line with its stream). */
function auditLinesOf(text: string): string[] {
  return text
    .split('\n')
    .filter((l) => l.startsWith('out: ') && l.includes('"component":"audit"'))
    .map((l) => l.slice('out: '.length));
}

describe('the audit file', () => {
  it('holds every audit line of the daemon and nothing else, rotated at maxFileBytes into maxFiles', async () => {
    const dir = tmpDir('audit');
    await chmod(dir, 0o700);
    const file = join(dir, 'audit.log');
    const d = await startDaemon({ config: { audit: { file, maxFileBytes: 4096, maxFiles: 2 } } });
    // Each purge (of nothing, here) is an audit line of a few hundred bytes.
    const purges = 80;
    for (let i = 0; i < purges; i++) await d.json('DELETE', `/v1/guests/gone-${i}/history?scope=local`);
    await waitFor('every purge in the daemon log', () => auditLinesOf(d.logs()).length >= purges);
    expect(await d.stop()).toBe(0); // the file is closed (written out) before the exit

    const files = (await readdir(dir)).sort();
    expect(files).toEqual(['audit.log', 'audit.log.1', 'audit.log.2']);
    const kept: string[] = [];
    for (const name of ['audit.log.2', 'audit.log.1', 'audit.log']) {
      const text = await readFile(join(dir, name), 'utf8');
      expect(Buffer.byteLength(text)).toBeLessThanOrEqual(4096 + 1024); // rotated once past the size
      kept.push(...text.split('\n').filter((l) => l !== ''));
    }
    // Only audit lines, whole, and the newest of the daemon's, in order (older ones rotated away).
    for (const line of kept) expect(JSON.parse(line).component).toBe('audit');
    const logged = auditLinesOf(d.logs());
    expect(kept.length).toBeGreaterThan(0);
    expect(kept.length).toBeLessThan(logged.length);
    expect(logged.slice(-kept.length)).toEqual(kept);
    expect(kept.at(-1)).toContain(`"guest":"gone-${purges - 1}"`);
  });

  it('refuses at start a directory others can write in', async () => {
    const dir = tmpDir('audit-open');
    await chmod(dir, 0o777);
    await expect(startDaemon({ config: { audit: { file: join(dir, 'audit.log') } } })).rejects.toThrow(
      /exited \(78\)/,
    );
    expect(await readdir(dir)).toEqual([]);
  });
});
