import { lstat } from 'node:fs/promises';
import { join } from 'node:path';
import { LOG_FILE_NAME, type LogAnchor, type LogFileSpan, logFileName, scanLogFiles } from './log-files.js';
import { type Lease, ReadHandles } from './read-handles.js';
import { openNoFollow } from './safe-files.js';

/**
 * Which file of a local log holds which offsets (the spans, newest first) and the
 * anchor they derive from, kept up to date by the writer without rescanning the
 * directory on every write; and reads of offset ranges across those files.
 */
export class LogLayout {
  /** The files' handles kept open between reads (see ReadHandles). */
  private handles = new ReadHandles();

  constructor(
    private readonly dir: string,
    private spanList: LogFileSpan[],
    private anchorValue: LogAnchor | null,
  ) {}

  get spans(): readonly LogFileSpan[] {
    return this.spanList;
  }

  get anchor(): LogAnchor | null {
    return this.anchorValue;
  }

  /** Offset of the oldest byte kept, or `end` when no file is. */
  oldest(end: number): number {
    const oldestSpan = this.spanList[this.spanList.length - 1];
    return oldestSpan ? oldestSpan.start : end;
  }

  /** Re-reads the files after the writer (re)opened the current one, which ends at `end`; returns its start. */
  async refresh(end: number): Promise<number> {
    const current = await lstat(join(this.dir, LOG_FILE_NAME));
    const start = end - current.size;
    this.anchorValue = { ino: current.ino, start };
    this.spanList = await scanLogFiles(this.dir, this.anchorValue, end);
    this.retainHandles();
    return start;
  }

  /**
   * A rotation: shift the spans as the writer shifted the files (console.log → .1, …,
   * the last one dropped) without rescanning the directory. Chunks are cut at file
   * boundaries, so the old file ended exactly at its start plus `maxFileBytes`. The
   * new current file, of inode `ino`, starts there (or at `end` when there was none).
   */
  rotated(ino: number, maxFileBytes: number, maxFiles: number, end: number): void {
    const previous = this.spanList[0];
    const start = previous ? previous.start + maxFileBytes : end;
    const shifted = this.spanList
      .filter((s) => s.index + 1 < Math.max(2, maxFiles))
      .map((s) => ({
        ...s,
        index: s.index + 1,
        path: join(this.dir, logFileName(s.index + 1)),
        size: s.index === 0 ? maxFileBytes : s.size,
      }));
    this.anchorValue = { ino, start };
    this.spanList = [{ index: 0, path: join(this.dir, LOG_FILE_NAME), ino, start, size: 0 }, ...shifted];
    this.retainHandles();
  }

  /** Closes the handles kept for reads (the log closes). */
  closeHandles(): void {
    this.handles.closeAll();
  }

  /** Keeps no handle open between reads (a log opened only to be read once, by nobody who closes it). */
  keepNoHandles(): void {
    this.handles.closeAll();
    this.handles = new ReadHandles(0);
  }

  /** Handles of files no longer in the log are closed: a rotated-away file is not kept on disk. */
  private retainHandles(): void {
    this.handles.retain(this.spanList.map((s) => s.ino));
  }

  /** The current file now ends at `end`. */
  grew(end: number): void {
    const head = this.spanList[0];
    if (head) this.spanList[0] = { ...head, size: Math.max(0, end - head.start) };
  }

  /** Moves every offset by `delta` (a renumbering; the files do not change). */
  shift(delta: number): void {
    const anchor = this.anchorValue;
    if (anchor) this.anchorValue = { ino: anchor.ino, start: anchor.start + delta };
    this.spanList = this.spanList.map((s) => ({ ...s, start: s.start + delta }));
  }

  /**
   * Reads `[start, end)`, which must lie within the files. `checkDir` throws when the
   * directory is not the one checked at open; `layoutSettled` resolves when a rotation
   * under way has been accounted for. With `into` (at least `end - start` bytes), the
   * bytes are read into it and a view of it is returned.
   */
  async read(
    start: number,
    end: number,
    checkDir: () => void,
    layoutSettled: () => Promise<void> | null,
    into?: Buffer,
  ): Promise<Buffer> {
    const size = Math.max(0, end - start);
    if (into && into.length < size) throw new RangeError(`a read of ${size} bytes into ${into.length}`);
    const out = into ? into.subarray(0, size) : Buffer.allocUnsafe(size);
    let pos = start;
    for (let misses = 0; pos < end; ) {
      const got = await this.readPiece(pos, end, out, start, checkDir);
      if (got > 0) {
        pos += got;
        misses = 0;
        continue;
      }
      // A rotation renamed the files under us: wait for the new layout and read on from
      // `pos`. Only the piece that moved is read again, so a read spanning many files
      // completes even while a fast guest rotates the log every few milliseconds.
      if (++misses > 5) throw new Error(`log files changed during read of [${start}, ${end})`);
      const settled = layoutSettled();
      if (settled) await settled;
      else await new Promise((r) => setTimeout(r, 5));
    }
    return out;
  }

  /**
   * Reads from `pos` up to `end` or the end of the file holding `pos`, into `out` (which
   * starts at offset `base`). Returns the bytes read, or 0 when the layout changed under us.
   */
  private async readPiece(
    pos: number,
    end: number,
    out: Buffer,
    base: number,
    checkDir: () => void,
  ): Promise<number> {
    // Rotation only moves a file up (console.log → .1 → .2 …) and keeps its inode, and
    // the spans follow each rotation as it is made. A file renamed between the lookup
    // and the open is looked up again (a fast guest rotates while a slow disk opens);
    // should the spans still name the same place, the file is a few places higher.
    let above = 0;
    let lastIndex = -1;
    for (let tries = 0; tries < 8; tries++) {
      const span = this.spanList.find((s) => s.start <= pos && pos < s.start + s.size);
      if (!span) return 0;
      checkDir();
      if (span.index !== lastIndex) above = 0;
      else if (++above > 3) return 0;
      lastIndex = span.index;
      const path = span.ino === -1 ? span.path : join(this.dir, logFileName(span.index + above));
      const want = Math.min(end, span.start + span.size) - pos;
      // A file of known inode: its handle, kept open (one trip through the thread pool);
      // one whose inode the spans do not know: opened for this read only.
      const lease = span.ino === -1 ? await openForOneRead(path) : await this.handles.lease(span.ino, path);
      if (!lease) continue;
      try {
        const { bytesRead } = await lease.handle.read(out, pos - base, want, pos - span.start);
        return bytesRead === want ? want : 0;
      } finally {
        await lease.release();
      }
    }
    return 0;
  }
}

/** `path` opened (`O_NOFOLLOW`) for one read, closed at the release; null when it is missing. */
async function openForOneRead(path: string): Promise<Lease | null> {
  const handle = await openNoFollow(path).catch(() => null);
  return handle && { handle, release: () => handle.close() };
}
