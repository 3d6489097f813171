/**
 * One request of the libvirt hook, as a file in the spool directory (README "libvirt",
 * docs/design.md "libvirt"): the hook writes it before it calls the API and removes it
 * once the call succeeded; the daemon replays what is left when it starts. The names
 * sort in the order the requests were made: wall-clock milliseconds, then the
 * system-wide monotonic clock in nanoseconds, then the guest id.
 */
import { randomBytes } from 'node:crypto';
import { constants } from 'node:fs';
import { lstat, mkdir, open, readdir, readFile, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { isGuestId } from '../../common/guest-id.js';

/** What a request asks: attach the guest (a spec), or detach it. */
export type SpoolEvent = 'attach' | 'detach';

export interface SpoolEntry {
  readonly version: 1;
  readonly event: SpoolEvent;
  readonly guest: string;
  /** The attach's spec (`PUT /v1/guests/{id}` body); validated when replayed. */
  readonly spec?: unknown;
  /** The libvirt domain name and hook operation the request came from. */
  readonly domain: string;
  readonly operation: string;
  readonly at: string;
}

/** An entry found in the spool: its file name, and the entry (null when unreadable). */
export interface SpooledFile {
  readonly name: string;
  readonly path: string;
  readonly entry: SpoolEntry | null;
}

/** Who owns the files the hook (root) writes: the daemon's user. */
export interface SpoolOwner {
  readonly uid: number;
  readonly gid: number;
}

const NAME = /^(\d{15})-(\d{20})-([A-Za-z0-9][A-Za-z0-9._-]{0,127})\.json$/;

function entryName(guest: string): string {
  const ms = String(Date.now()).padStart(15, '0');
  const mono = process.hrtime.bigint().toString().padStart(20, '0');
  return `${ms}-${mono}-${guest}.json`;
}

/**
 * Makes the spool directory when it is missing (0700, given to `owner`), and refuses
 * one that is a link or not a directory: the hook runs as root in a directory the
 * daemon's user owns (SECURITY.md "libvirt hook").
 */
export async function ensureSpoolDir(dir: string, owner: SpoolOwner | null): Promise<void> {
  const st = await lstat(dir).catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT') return null;
    throw err;
  });
  if (st) {
    if (!st.isDirectory()) throw new Error(`${dir} is not a directory (a link is not followed)`);
    return;
  }
  await mkdir(dir, { mode: 0o700 });
  if (owner) {
    const handle = await open(dir, constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW);
    try {
      await handle.chown(owner.uid, owner.gid);
    } finally {
      await handle.close();
    }
  }
}

/**
 * Writes `entry` atomically (a new temporary file, never a link followed, then a
 * rename) and returns its path.
 */
export async function writeSpoolEntry(
  dir: string,
  entry: SpoolEntry,
  owner: SpoolOwner | null,
): Promise<string> {
  const temp = join(dir, `.tmp-${randomBytes(8).toString('hex')}`);
  const handle = await open(
    temp,
    constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW,
    0o640,
  );
  try {
    await handle.writeFile(`${JSON.stringify(entry)}\n`);
    if (owner) await handle.chown(owner.uid, owner.gid);
    await handle.sync();
  } finally {
    await handle.close();
  }
  const path = join(dir, entryName(entry.guest));
  await rename(temp, path);
  return path;
}

function parseEntry(text: string): SpoolEntry | null {
  try {
    const raw = JSON.parse(text) as Partial<SpoolEntry>;
    if (raw.version !== 1 || (raw.event !== 'attach' && raw.event !== 'detach') || !isGuestId(raw.guest))
      return null;
    return raw as SpoolEntry;
  } catch {
    return null;
  }
}

/** The spooled requests, oldest first (an empty list when the directory is missing). */
export async function listSpoolEntries(dir: string): Promise<SpooledFile[]> {
  let names: string[];
  try {
    names = await readdir(dir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw err;
  }
  const files: SpooledFile[] = [];
  for (const name of names.filter((n) => NAME.test(n)).sort()) {
    const path = join(dir, name);
    const text = await readFile(path, 'utf8').catch(() => null);
    files.push({ name, path, entry: text === null ? null : parseEntry(text) });
  }
  return files;
}

/** The guest id a spool file name carries (null when the name is not an entry's). */
export function guestOfEntryName(name: string): string | null {
  return NAME.exec(name)?.[3] ?? null;
}

/**
 * Removes `guest`'s entries up to `upTo` (a file name) included: a request that
 * succeeded makes the older ones of the same guest moot.
 */
export async function removeSpoolEntries(dir: string, guest: string, upTo: string): Promise<void> {
  const names = await readdir(dir).catch(() => [] as string[]);
  await Promise.all(
    names
      .filter((n) => n <= upTo && guestOfEntryName(n) === guest)
      .map((n) => rm(join(dir, n), { force: true })),
  );
}
