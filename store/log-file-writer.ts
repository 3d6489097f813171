/**
 * The current file of a local log (`console.log`) as a descriptor, and the renames of a
 * rotation (`console.log` → `.1` …, newest first, nova's and virtlogd's layout).
 *
 * The file is opened `O_WRONLY | O_NOFOLLOW` (and `O_EXCL` when a rotation creates it):
 * a link planted in its place is refused, never followed (SECURITY.md "Symbolic
 * links"). Bytes go out in gathered positional writes (`pwritev`) of many queued
 * buffers, at the positions the writer computes from the offsets (not `O_APPEND`, which
 * would ignore them); small ones are made by the write thread (store/write-thread.ts).
 * A short write is finished here, so a write either lands whole or reports how much of
 * it did: nothing is lost silently on a filling disk.
 *
 * Everything else (cutting writes at file boundaries, offsets, anchors, recovery) is
 * store/log-writer.ts's. docs/benchmarks.md "Writer" says why this is not
 * rotating-file-stream: one `write` per chunk through a stream, and no say over how a
 * file is opened.
 */
import { closeSync, constants, fstatSync, openSync, renameSync, unlink } from 'node:fs';
import { join } from 'node:path';
import { LOG_FILE_NAME, logFileName } from './log-files.js';
import { assertOpenedFile, unsafePath } from './safe-files.js';
import { writeAt } from './write-thread.js';

const { O_WRONLY, O_CREAT, O_EXCL, O_NOFOLLOW } = constants;

/** `done(err, written)`: `written` bytes of the write landed (all of them when `err` is null). */
export type WriteDone = (err: NodeJS.ErrnoException | null, written: number) => void;

/** The current file of a log, open for writing at the positions the writer gives. */
export class LogFile {
  private closed = false;

  private constructor(
    readonly fd: number,
    /** The inode: it survives the renames of later rotations (the anchor names it). */
    readonly ino: number,
  ) {}

  /**
   * Opens `console.log` in `dir` for writing, creating it with `mode`. `fresh`: a
   * rotation's new file, which must not exist yet (`O_EXCL`).
   */
  static open(dir: string, mode: number, fresh: boolean): LogFile {
    const path = join(dir, LOG_FILE_NAME);
    let fd: number;
    try {
      fd = openSync(path, O_WRONLY | O_CREAT | O_NOFOLLOW | (fresh ? O_EXCL : 0), mode);
    } catch (err) {
      // O_NOFOLLOW on a link fails with ELOOP.
      if ((err as NodeJS.ErrnoException).code === 'ELOOP') throw unsafePath(path, 'is a symbolic link');
      throw err;
    }
    try {
      assertOpenedFile(fd, path);
      return new LogFile(fd, fstatSync(fd).ino);
    } catch (err) {
      closeSync(fd);
      throw err;
    }
  }

  /**
   * Writes `buffers` (`size` bytes in all) at `position` with as few `pwritev` calls as
   * the kernel allows: a short write is continued from where it stopped; one that makes
   * no progress fails with EIO. `done` is called once. Several may be in flight at
   * different positions; the caller keeps them in order.
   */
  write(buffers: readonly Buffer[], size: number, position: number, done: WriteDone): void {
    let written = 0;
    let list = buffers;
    const step = (err: NodeJS.ErrnoException | null, n: number): void => {
      if (err) {
        done(err, written);
        return;
      }
      if (n === 0) {
        done(Object.assign(new Error('write made no progress'), { code: 'EIO' }), written);
        return;
      }
      written += n;
      if (written === size) {
        done(null, written);
        return;
      }
      list = dropPrefix(list, n);
      writeAt(this.fd, list, size - written, position + written, step);
    };
    writeAt(this.fd, list, size, position, step);
  }

  /** Closes the descriptor (once). */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    try {
      closeSync(this.fd);
    } catch {
      // Nothing to do about a failing close of a file we are done with.
    }
  }
}

/** `list` without its first `n` bytes (views, no copy). */
function dropPrefix(list: readonly Buffer[], n: number): Buffer[] {
  const out: Buffer[] = [];
  let skip = n;
  for (const b of list) {
    if (skip >= b.length) {
      skip -= b.length;
      continue;
    }
    out.push(skip > 0 ? b.subarray(skip) : b);
    skip = 0;
  }
  return out;
}

/**
 * The renames of a rotation, oldest first: `.N-1` → `.N` … `console.log` → `.1`,
 * keeping `maxFiles` files in all once the caller creates the new `console.log`. The
 * file that falls out is first renamed one place further (`.N` → `.N+1`, a name that
 * nothing reads) and unlinked in the background: renaming over it would free its
 * blocks inside the rename, on this thread (a few ms per MiB-sized file on a disk with
 * online discard). A rename moves a link itself, never its target. A SIGKILL half way
 * leaves a hole in the numbering, which `closeLogFileGaps` (store/log-files.ts)
 * closes at the next open, and may leave the `.N+1` file, which `pruneLogFiles`
 * removes then.
 */
export function shiftLogFiles(dir: string, maxFiles: number): void {
  const top = Math.max(1, maxFiles - 1);
  const dropped = join(dir, logFileName(top + 1));
  const moved = renameIfPresent(join(dir, logFileName(top)), dropped);
  for (let index = top; index >= 1; index--)
    renameIfPresent(join(dir, logFileName(index - 1)), join(dir, logFileName(index)));
  if (moved) unlink(dropped, () => undefined); // gone already (a later rotation replaced it): nothing to do
}

/** Renames `from` to `to`; false when `from` does not exist (fewer files than kept yet). */
function renameIfPresent(from: string, to: string): boolean {
  try {
    renameSync(from, to);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    return false;
  }
}
