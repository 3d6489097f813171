/**
 * Removing a guest's directory under the state directory (the local part of a history
 * purge and of the detached-guest retention, docs/design.md "Retention") without
 * following a symbolic link (SECURITY.md, "Symbolic links"): the directory must pass
 * the same check an attach makes, it is first renamed aside (a rename moves a link
 * itself, never its target) and then compared with what was checked, and the removal
 * unlinks links inside it instead of descending into them.
 */
import { randomBytes } from 'node:crypto';
import type { Stats } from 'node:fs';
import { lstat, readdir, rename, rm } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { checkPrivateDir, unsafePath } from './safe-files.js';

/** Directories renamed aside for removal start with this (a guest id cannot start with a dot). */
export const REMOVAL_PREFIX = '.removing-';

export interface RemovedDir {
  /** False: there was no such directory. */
  readonly removed: boolean;
  /** Regular files removed and their bytes. */
  readonly files: number;
  readonly bytes: number;
}

async function lstatOrNull(path: string): Promise<Stats | null> {
  return lstat(path).catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT') return null;
    throw err;
  });
}

/** Counts the regular files below `dir` and their bytes, never following a link. */
async function measure(dir: string): Promise<{ files: number; bytes: number }> {
  let files = 0;
  let bytes = 0;
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) {
      const inner = await measure(path);
      files += inner.files;
      bytes += inner.bytes;
    } else if (entry.isFile()) {
      files += 1;
      bytes += (await lstat(path)).size;
    }
  }
  return { files, bytes };
}

/**
 * Removes `dir` (a guest's directory: its logs, `archive/`, `spool/` and state files)
 * and everything below it. Refuses (`UNSAFE_PATH`) a directory that is a link, is
 * not this user's or is writable by group or others, and one swapped between the
 * check and the rename. The caller makes sure no guest uses it.
 */
export async function removeGuestDir(dir: string): Promise<RemovedDir> {
  const checked = await lstatOrNull(dir);
  if (!checked) return { removed: false, files: 0, bytes: 0 };
  checkPrivateDir(dir, checked);
  const aside = join(dirname(dir), `${REMOVAL_PREFIX}${basename(dir)}-${randomBytes(4).toString('hex')}`);
  await rename(dir, aside);
  const moved = await lstat(aside);
  if (moved.isSymbolicLink() || moved.dev !== checked.dev || moved.ino !== checked.ino) {
    throw unsafePath(dir, `was replaced while being removed (left at ${aside})`);
  }
  const { files, bytes } = await measure(aside);
  await removeAside(aside);
  return { removed: true, files, bytes };
}

/** Removes a directory renamed aside; `rm` unlinks the links inside it without following them. */
export async function removeAside(path: string): Promise<void> {
  await rm(path, { recursive: true, force: true });
}
