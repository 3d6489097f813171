import { lstat, readdir, rename, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { unsafePath } from './safe-files.js';

/** The current file's name; rotated files are `console.log.1` (newest) … `console.log.N`. */
export const LOG_FILE_NAME = 'console.log';

/**
 * Every file a guest's local log keeps in its directory: the log files, the log's
 * state and the marker index. Moving a log aside (an archive) moves all of them.
 */
export const LOG_DIR_FILES = /^(console\.log(\.\d+)?|log-state\.json|boot-index\.jsonl|markers\.idx)$/;

export function logFileName(index: number): string {
  return index === 0 ? LOG_FILE_NAME : `${LOG_FILE_NAME}.${index}`;
}

/** One file of a guest's log and the span of offsets it holds. */
export interface LogFileSpan {
  readonly index: number;
  readonly path: string;
  readonly ino: number;
  readonly start: number;
  readonly size: number;
}

/**
 * Where offsets are anchored: the inode of one file and the offset of its first byte.
 * An inode survives the renames rotation makes, so the anchor stays right even when
 * the process was killed between a rotation and the save of the new anchor.
 */
export interface LogAnchor {
  readonly ino: number;
  readonly start: number;
}

/**
 * Lists the files of a log directory, newest first, with the offset each one starts at.
 * A symbolic link in place of a log file is refused (`UNSAFE_PATH`): the file stream
 * would write through it and reads would serve its target.
 */
export async function scanLogFiles(
  dir: string,
  anchor: LogAnchor | null,
  endHint: number,
): Promise<LogFileSpan[]> {
  const found: Array<{ index: number; path: string; ino: number; size: number }> = [];
  const names = new Set(await readdir(dir).catch(() => [] as string[]));
  for (let index = 0; ; index++) {
    const name = logFileName(index);
    if (!names.has(name)) {
      // The current file may be missing just after a rotation's rename; keep looking.
      if (index === 0) continue;
      break;
    }
    const path = join(dir, name);
    const st = await lstat(path).catch(() => null);
    if (st?.isSymbolicLink()) throw unsafePath(path, 'is a symbolic link');
    if (!st?.isFile()) break;
    found.push({ index, path, ino: st.ino, size: st.size });
  }
  if (found.length === 0) return [];

  const starts = new Array<number>(found.length);
  const anchorAt = anchor ? found.findIndex((f) => f.ino === anchor.ino) : -1;
  if (anchor && anchorAt >= 0) {
    starts[anchorAt] = anchor.start;
  } else {
    // No usable anchor (first start over an existing plain console.log, or the anchor
    // was lost): place the newest file so the log ends at the last end we recorded,
    // or, when that is unknown, let the oldest file start at offset 0.
    const total = found.reduce((sum, f) => sum + f.size, 0);
    const end = Math.max(endHint, total);
    starts[0] = end - found[0]!.size;
  }
  const pivot = Math.max(anchorAt, 0);
  for (let i = pivot - 1; i >= 0; i--) starts[i] = starts[i + 1]! + found[i + 1]!.size;
  for (let i = pivot + 1; i < found.length; i++) starts[i] = starts[i - 1]! - found[i]!.size;
  return found.map((f, i) => ({ ...f, start: Math.max(0, starts[i]!) }));
}

/** Deletes rotated files beyond `maxFiles` (left over when the retention was lowered). */
export async function pruneLogFiles(spans: LogFileSpan[], maxFiles: number): Promise<LogFileSpan[]> {
  const keep = spans.filter((s) => s.index < maxFiles);
  for (const s of spans) if (s.index >= maxFiles) await unlink(s.path).catch(() => undefined);
  return keep;
}

/**
 * A rotation renames `.N-1` → `.N`, …, `.1` → `.2`, `console.log` →
 * `.1`, one file at a time. A SIGKILL half way leaves a hole in the numbering, and
 * `scanLogFiles` stops at the first hole, so every older file would drop out of the log
 * (and the hole would move up with each later rotation). Renumbers the rotated files so
 * they follow each other again, in the same order (their order is their age); inodes do
 * not change, so an anchor stays valid. Itself safe to interrupt: it only closes holes.
 */
export async function closeLogFileGaps(dir: string): Promise<void> {
  const pattern = new RegExp(`^${LOG_FILE_NAME.replace('.', '\\.')}\\.(\\d+)$`);
  const indices = (await readdir(dir).catch(() => [] as string[]))
    .map((name) => pattern.exec(name)?.[1])
    .filter((m): m is string => m !== undefined)
    .map(Number)
    .filter((i) => i >= 1)
    .sort((a, b) => a - b);
  let want = 1;
  for (const index of indices) {
    if (index !== want) await rename(join(dir, logFileName(index)), join(dir, logFileName(want)));
    want++;
  }
}
