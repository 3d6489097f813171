/** sidecar/libvirt/spool-entry.ts on a real directory. */
import { mkdir, readdir, stat, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import {
  ensureSpoolDir,
  listSpoolEntries,
  removeSpoolEntries,
  type SpoolEntry,
  writeSpoolEntry,
} from '../../sidecar/libvirt/spool-entry.js';
import { removeTmpDirs, tmpDir } from '../support/tmp.js';

afterAll(removeTmpDirs);

function entry(guest: string, event: 'attach' | 'detach'): SpoolEntry {
  return {
    version: 1,
    event,
    guest,
    ...(event === 'attach' ? { spec: { source: { type: 'tcp', host: '127.0.0.1', port: 1 } } } : {}),
    domain: 'd',
    operation: event === 'attach' ? 'started' : 'release',
    at: new Date().toISOString(),
  };
}

describe('the libvirt spool', () => {
  it('makes a missing directory 0700 and refuses a link in its place', async () => {
    const root = tmpDir('spool');
    const dir = join(root, 'spool');
    await ensureSpoolDir(dir, null);
    expect((await stat(dir)).mode & 0o777).toBe(0o700);
    await mkdir(join(root, 'elsewhere'));
    await symlink(join(root, 'elsewhere'), join(root, 'link'));
    await expect(ensureSpoolDir(join(root, 'link'), null)).rejects.toThrow(/not a directory/);
  });

  it('lists entries in the order they were written, and skips foreign files', async () => {
    const dir = join(tmpDir('spool'), 'spool');
    await ensureSpoolDir(dir, null);
    const written: string[] = [];
    for (const [guest, event] of [
      ['b', 'attach'],
      ['a', 'attach'],
      ['b', 'detach'],
    ] as const)
      written.push(await writeSpoolEntry(dir, entry(guest, event), null));
    await writeFile(join(dir, 'incoming-x'), 'not an entry');
    await writeFile(join(dir, '000000000000001-00000000000000000001-bad.json'), '{not json');
    const listed = await listSpoolEntries(dir);
    expect(listed.slice(1).map((f) => f.path)).toEqual(written);
    expect(listed[0]!.entry).toBeNull();
    expect(listed.slice(1).map((f) => `${f.entry?.guest}:${f.entry?.event}`)).toEqual([
      'b:attach',
      'a:attach',
      'b:detach',
    ]);
    expect((await stat(written[0]!)).mode & 0o777).toBe(0o640);
    // A request that succeeded removes the same guest's older ones, and only those.
    await removeSpoolEntries(dir, 'b', listed[3]!.name);
    expect((await readdir(dir)).filter((n) => n.endsWith('-b.json'))).toEqual([]);
    expect((await readdir(dir)).filter((n) => n.endsWith('-a.json'))).toHaveLength(1);
  });
});
