/**
 * The read handles a local log keeps open between reads, on real files: reused by
 * inode, refused for a path that now names another file, and closed when their file
 * leaves the log, past the bound, or at close, never under a read that holds one.
 */
import { readlink, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ReadHandles } from '../../store/read-handles.js';
import { removeTmpDirs, tmpDir } from '../support/tmp.js';
import { waitFor } from '../support/wait.js';

afterAll(async () => {
  await removeTmpDirs();
});

/** Whether descriptor `fd` of this process is open on `path` (a closed number may be reused for another file). */
async function isOpen(fd: number, path: string): Promise<boolean> {
  return readlink(`/proc/self/fd/${fd}`).then(
    (target) => target === path,
    () => false,
  );
}

async function fileOf(dir: string, name: string, text: string): Promise<{ path: string; ino: number }> {
  const path = join(dir, name);
  await writeFile(path, text);
  return { path, ino: (await stat(path)).ino };
}

describe('ReadHandles', () => {
  it('lends the same descriptor for the same inode, and none for a path naming another file', async () => {
    const dir = tmpDir('read-handles');
    const a = await fileOf(dir, 'a', 'alpha');
    const b = await fileOf(dir, 'b', 'beta');
    const handles = new ReadHandles(2);
    const first = (await handles.lease(a.ino, a.path))!;
    first.release();
    const second = (await handles.lease(a.ino, a.path))!;
    expect(second.handle.fd).toBe(first.handle.fd);
    const buf = Buffer.alloc(5);
    await second.handle.read(buf, 0, 5, 0);
    expect(buf.toString()).toBe('alpha');
    second.release();
    // The path now holds another file (a rotation renamed it): refused, nothing kept.
    expect(await handles.lease(a.ino + 1_000_000, b.path)).toBeNull();
    expect(handles.size).toBe(1);
    handles.closeAll();
    await waitFor('closed', async () => !(await isOpen(first.handle.fd, a.path)), {
      timeoutMs: 2000,
      intervalMs: 5,
    });
  });

  it('closes the least recently used past its bound and those retain drops, each only after its last read', async () => {
    const dir = tmpDir('read-handles');
    const files = await Promise.all(['f0', 'f1', 'f2'].map((n, i) => fileOf(dir, n, `file ${i}`)));
    const handles = new ReadHandles(2);
    const [f0, f1, f2] = files as [(typeof files)[0], (typeof files)[0], (typeof files)[0]];
    const l0 = (await handles.lease(f0.ino, f0.path))!;
    l0.release();
    await new Promise((r) => setTimeout(r, 5));
    const l1 = (await handles.lease(f1.ino, f1.path))!; // held through what follows
    await new Promise((r) => setTimeout(r, 5));
    const l2 = (await handles.lease(f2.ino, f2.path))!;
    l2.release();
    // Three opened, two kept: f0 (least recently used, not in use) is closed.
    expect(handles.size).toBe(2);
    await waitFor('f0 closed', async () => !(await isOpen(l0.handle.fd, f0.path)), {
      timeoutMs: 2000,
      intervalMs: 5,
    });
    // The log dropped f1 while a read holds it: it stays open for that read.
    handles.retain([f2.ino]);
    expect(handles.size).toBe(1);
    await new Promise((r) => setTimeout(r, 50));
    expect(await isOpen(l1.handle.fd, f1.path)).toBe(true);
    const buf = Buffer.alloc(6);
    await l1.handle.read(buf, 0, 6, 0);
    expect(buf.toString()).toBe('file 1');
    l1.release();
    l1.release(); // a second release changes nothing
    await waitFor('f1 closed', async () => !(await isOpen(l1.handle.fd, f1.path)), {
      timeoutMs: 2000,
      intervalMs: 5,
    });
    expect(await isOpen(l2.handle.fd, f2.path)).toBe(true);
    handles.closeAll();
    await waitFor('f2 closed', async () => !(await isOpen(l2.handle.fd, f2.path)), {
      timeoutMs: 2000,
      intervalMs: 5,
    });
    expect(handles.size).toBe(0);
  });

  it('with a bound of 0, closes each handle once its read is done', async () => {
    const dir = tmpDir('read-handles');
    const f = await fileOf(dir, 'only', 'x');
    const handles = new ReadHandles(0);
    const lease = (await handles.lease(f.ino, f.path))!;
    const buf = Buffer.alloc(1);
    await lease.handle.read(buf, 0, 1, 0);
    expect(buf.toString()).toBe('x');
    expect(handles.size).toBe(0);
    lease.release();
    await waitFor('closed', async () => !(await isOpen(lease.handle.fd, f.path)), {
      timeoutMs: 2000,
      intervalMs: 5,
    });
  });
});
