/**
 * Opening files in the state directory without following symbolic links (SECURITY.md,
 * "Symbolic links"). A link planted in the state directory must not make consoled
 * write guest output to, serve, or overwrite a file elsewhere.
 *
 * Files we open ourselves get `O_NOFOLLOW` (and temporary files `O_EXCL`), the log
 * files too (store/log-file-writer.ts); the directories are checked as well
 * (`assertPrivateDir`) and every descriptor the writer opens is compared with the path
 * it was opened by (`assertOpenedFile`).
 */
import { constants, fstatSync, lstatSync, type Stats } from 'node:fs';
import { type FileHandle, lstat, mkdir, open, stat, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { ConsoledError } from '../common/errors.js';

const { O_RDONLY, O_WRONLY, O_CREAT, O_EXCL, O_NOFOLLOW } = constants;

/** The refusal of a path, saying why. */
export function unsafePath(path: string, why: string): ConsoledError {
  return new ConsoledError('UNSAFE_PATH', `${path} ${why}; refusing to use it`, { path });
}

/** The uid this process runs as (-1 where there are no uids: no owner check). */
function ownUid(): number {
  return process.getuid?.() ?? -1;
}

/**
 * Refuses a directory that is a symbolic link, is not a directory, is not owned by
 * this process's user, or is writable by group or others: whoever can write in it can
 * plant links. `st` is `lstat`'s, or `stat`'s where `path` may be a link (the state
 * directory itself, an operator's choice).
 */
export function checkPrivateDir(path: string, st: Stats): void {
  if (st.isSymbolicLink()) throw unsafePath(path, 'is a symbolic link');
  if (!st.isDirectory()) throw unsafePath(path, 'is not a directory');
  const uid = ownUid();
  if (uid !== -1 && st.uid !== uid)
    throw unsafePath(path, `is owned by uid ${st.uid}, not by this user (${uid})`);
  if ((st.mode & 0o022) !== 0)
    throw unsafePath(
      path,
      `is writable by group or others (mode ${(st.mode & 0o777).toString(8).padStart(4, '0')})`,
    );
}

/** A directory as it was checked: a later `assertSameDir` tells whether it was swapped. */
export interface DirIdentity {
  readonly dev: number;
  readonly ino: number;
}

/** `checkPrivateDir` on `path`, creating it (with `mode`) when it does not exist. */
export async function assertPrivateDir(path: string, mode = 0o750): Promise<DirIdentity> {
  let st = await lstat(path).catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT') return null;
    throw err;
  });
  if (st === null) {
    // Not recursive: the parent was checked by the caller; a link there is refused.
    await mkdir(path, { mode }).catch((err: NodeJS.ErrnoException) => {
      if (err.code !== 'EEXIST') throw err;
    });
    st = await lstat(path);
  }
  checkPrivateDir(path, st);
  return { dev: st.dev, ino: st.ino };
}

/** Refuses `path` unless it is, itself and not through a link, the file or directory `expected`. */
function assertIsStill(path: string, expected: DirIdentity, what: string): void {
  let st: Stats;
  try {
    st = lstatSync(path);
  } catch {
    throw unsafePath(path, `disappeared ${what}`);
  }
  if (st.isSymbolicLink()) throw unsafePath(path, 'is a symbolic link');
  if (st.dev !== expected.dev || st.ino !== expected.ino) throw unsafePath(path, `was replaced ${what}`);
}

/**
 * Refuses a directory that is no longer the one checked (renamed away and replaced by a
 * link or another directory): paths through it would lead elsewhere. Synchronous, for
 * the writer's rotation, which runs it before it renames or opens anything.
 */
export function assertSameDir(path: string, checked: DirIdentity): void {
  assertIsStill(path, checked, 'since it was checked');
}

/**
 * After an open by path that may have followed a link: the descriptor must be the
 * file the path names itself. Synchronous, so that it runs before anything is
 * written to a descriptor just opened.
 */
export function assertOpenedFile(fd: number, path: string): void {
  assertIsStill(path, fstatSync(fd), 'as it was opened');
}

/** A catch handler that reports a link met with O_NOFOLLOW (ELOOP) as `UNSAFE_PATH` at `path`. */
export function refusingLinks(path: string) {
  return (err: NodeJS.ErrnoException): never => {
    // O_NOFOLLOW on a link fails with ELOOP.
    if (err.code === 'ELOOP') throw unsafePath(path, 'is a symbolic link');
    throw err;
  };
}

/** Opens an existing file for reading, refusing a symbolic link. */
export async function openNoFollow(path: string, write = false): Promise<FileHandle> {
  const handle = await open(path, (write ? O_WRONLY : O_RDONLY) | O_NOFOLLOW).catch(refusingLinks(path));
  try {
    assertOpenedFile(handle.fd, path);
  } catch (err) {
    await handle.close();
    throw err;
  }
  return handle;
}

/** Reads a whole file without following a link; null when it does not exist. */
export async function readFileNoFollow(path: string): Promise<Buffer | null> {
  let handle: FileHandle;
  try {
    handle = await openNoFollow(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw err;
  }
  try {
    return await handle.readFile();
  } finally {
    await handle.close();
  }
}

/**
 * Creates `path` afresh for writing: whatever is there (a temporary file a crash left,
 * or a link planted in its place) is unlinked first, which removes a link itself and
 * never follows it; the create is `O_EXCL | O_NOFOLLOW`, so a link that appears in
 * between makes it fail instead of being followed.
 */
export async function createExclusive(path: string, mode: number): Promise<FileHandle> {
  await unlink(path).catch((err: NodeJS.ErrnoException) => {
    if (err.code !== 'ENOENT') throw err;
  });
  return open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, mode).catch(refusingLinks(path));
}

/**
 * The check at start: the state directory (created when missing; it may be a link an
 * operator made, its target is checked) and its `guests/` (never a link) must be owned
 * by this user and not writable by group or others. Throws `UNSAFE_PATH` saying why.
 */
export async function assertStateDir(stateDir: string): Promise<void> {
  await mkdir(stateDir, { recursive: true, mode: 0o750 });
  checkPrivateDir(stateDir, await stat(stateDir));
  await assertPrivateDir(join(stateDir, 'guests'));
}
