import type { FileHandle } from 'node:fs/promises';
import { openNoFollow } from './safe-files.js';

/** Handles unused this long are closed: an idle guest holds no descriptor. */
const IDLE_CLOSE_MS = 5_000;

interface Held {
  readonly ino: number;
  readonly handle: FileHandle;
  /** Reads under way through it: it is closed only once none is. */
  users: number;
  /** Dropped from the cache (its file left the log, or it idled): closed at its last release. */
  dropped: boolean;
  lastUsedMs: number;
}

/** A handle lent for one read; `release` gives it back (or closes it, for one opened for that read). */
export interface Lease {
  readonly handle: FileHandle;
  release(): void | Promise<void>;
}

/**
 * The read-only handles of a local log's files, kept open between reads and looked
 * up by inode. A read back of a backlog then costs one `pread` instead of an open, a
 * `fstat`, a read and a close, each a trip through libuv's thread pool, which the
 * rest of a busy host's file work shares (docs/design.md "Replication"). A file keeps its inode
 * when it rotates, and its bytes never change, so a handle stays right for as long as
 * the file is in the log; `retain` closes those of files the log no longer holds, so
 * that no rotated-away file stays on disk for us. At most `maxHeld` are kept, and none
 * that went unused for `IDLE_CLOSE_MS`.
 */
export class ReadHandles {
  private readonly held = new Map<number, Held>();
  private idleTimer: NodeJS.Timeout | null = null;

  constructor(private readonly maxHeld = 2) {}

  /**
   * A handle on `path`, which must be the file of inode `ino`: the one kept, or one
   * opened (`O_NOFOLLOW`) and checked. Null when the path is missing or is another
   * file (a rotation moved it): the caller looks again.
   */
  async lease(ino: number, path: string): Promise<Lease | null> {
    let held = this.held.get(ino);
    if (!held) {
      const handle = await openNoFollow(path).catch(() => null);
      if (!handle) return null;
      const opened = await handle.stat().then(
        (st) => st.ino,
        () => -1,
      );
      if (opened !== ino) {
        await handle.close();
        return null;
      }
      // Another read may have opened the same file meanwhile: keep one.
      const raced = this.held.get(ino);
      if (raced) {
        await handle.close();
        held = raced;
      } else {
        held = { ino, handle, users: 0, dropped: false, lastUsedMs: Date.now() };
        this.held.set(ino, held);
      }
    }
    const lent = held;
    lent.users++;
    lent.lastUsedMs = Date.now();
    // After the hold is taken: a handle dropped now is closed at its release, not under the read.
    this.evictOverflow();
    this.armIdleTimer();
    let released = false;
    return {
      handle: lent.handle,
      release: () => {
        if (released) return;
        released = true;
        lent.users--;
        if (lent.dropped && lent.users === 0) void lent.handle.close().catch(() => {});
      },
    };
  }

  /** Closes the handles of files whose inodes are not in `inos` (they left the log). */
  retain(inos: Iterable<number>): void {
    const keep = new Set(inos);
    for (const held of [...this.held.values()]) if (!keep.has(held.ino)) this.drop(held);
  }

  /** Closes every handle (the log closes); reads under way finish first. */
  closeAll(): void {
    for (const held of [...this.held.values()]) this.drop(held);
  }

  /** How many handles are kept open (for tests and metrics). */
  get size(): number {
    return this.held.size;
  }

  private drop(held: Held): void {
    if (this.held.get(held.ino) === held) this.held.delete(held.ino);
    if (held.dropped) return;
    held.dropped = true;
    if (held.users === 0) void held.handle.close().catch(() => {});
    if (this.held.size === 0 && this.idleTimer) {
      clearTimeout(this.idleTimer);
      this.idleTimer = null;
    }
  }

  /** Past `maxHeld`, the least recently used go (Map order is insertion; lastUsedMs decides). */
  private evictOverflow(): void {
    while (this.held.size > this.maxHeld) {
      let oldest: Held | null = null;
      for (const held of this.held.values())
        if (!oldest || held.lastUsedMs < oldest.lastUsedMs) oldest = held;
      if (!oldest) return;
      this.drop(oldest);
    }
  }

  private armIdleTimer(): void {
    if (this.idleTimer) return;
    this.idleTimer = setTimeout(() => {
      this.idleTimer = null;
      const cutoff = Date.now() - IDLE_CLOSE_MS;
      for (const held of [...this.held.values()])
        if (held.users === 0 && held.lastUsedMs <= cutoff) this.drop(held);
      if (this.held.size > 0) this.armIdleTimer();
    }, IDLE_CLOSE_MS);
    this.idleTimer.unref();
  }
}
