/**
 * The writer of a local log: drains the write queue into the current file in gathered
 * writes cut exactly at file boundaries, rotates the files itself when one is full
 * (the spans shift, the new anchor is saved before the next rotation), and survives a
 * failing disk (requeue what was in flight, retry with backoff, cut the file back,
 * reopen). The file itself is store/log-file-writer.ts's `LogFile`.
 */
import type { Logger } from 'pino';
import { LogFile, shiftLogFiles } from './log-file-writer.js';
import { closeLogFileGaps, scanLogFiles } from './log-files.js';
import type { LogLayout } from './log-reader.js';
import type { LogEvents, LogState } from './log-sink.js';
import type { WriteQueue } from './log-write-queue.js';
import { openNoFollow } from './safe-files.js';

const MAX_DISK_RETRY_MS = 30_000;
/**
 * Writes in flight at once. One: writes side by side, at their positions, can land out
 * of order (the thread pool runs them in any order), and a SIGKILL between them would
 * leave a hole of zeros inside a file, which offsets taken from sizes would serve as
 * log bytes (docs/design.md "Local store": at most the unflushed tail is lost). Four
 * measured no faster on the development VM (docs/benchmarks.md). The acknowledgement
 * below keeps order for any number.
 */
const MAX_WRITES_IN_FLIGHT = 1;

/**
 * Rotations that may happen while the anchor of an earlier one is still being saved:
 * the anchor on disk must name a file that is still kept, and a reader looking for a
 * file that moved looks a few places up (store/log-reader.ts).
 */
function rotationsAheadOfSave(maxFiles: number): number {
  return Math.max(1, Math.min(2, maxFiles - 1));
}

interface InflightWrite {
  readonly size: number;
  written: number;
  err: NodeJS.ErrnoException | null;
  done: boolean;
}

export interface LogWriterOptions {
  readonly dir: string;
  /** Size of one file; rotation happens exactly at this size. */
  readonly maxFileBytes: number;
  /** Files kept in all, the current one included. */
  readonly maxFiles: number;
  /** Largest single write; queued chunks are coalesced up to this. */
  readonly maxWriteBytes: number;
  readonly fileMode: number;
  /** First delay before retrying a failed disk; doubles up to 30 s. */
  readonly diskRetryMs: number;
}

/** The log the writer works for: its state (one setter), its events, its saves and checks. */
export interface LogWriterHost {
  readonly state: LogState;
  setState(next: LogState): void;
  emit<K extends keyof LogEvents>(event: K, ...args: LogEvents[K]): boolean;
  /** Bytes reached the files up to `end` (the `flushed` event, and the log's watchers). */
  flushed(end: number): void;
  /** Saves the log's state file (the anchor moved). */
  persist(): Promise<void>;
  /** Throws when the directory is not the one checked at open. */
  assertDirUnchanged(): void;
  readonly logger: Logger;
}

export class LogWriter {
  private file: LogFile | null = null;
  /** Offset up to which bytes are in the files (acknowledged). */
  private flushed: number;
  /** Start offset of the current file. */
  private fileStart: number;
  /** Writes handed to the file and not yet acknowledged, oldest first. */
  private inflight: InflightWrite[] = [];
  /** Offset up to which bytes were handed to the file (written or in flight). */
  private handedEnd: number;
  /** A flush asked for everything queued: write on without coalescing until the queue is empty. */
  private eager = false;
  /** Called when the write in flight is done (close waits for it). */
  private whenIdle: (() => void) | null = null;
  /** The save of a rotation's new anchor, while under way. */
  private anchorSave: Promise<void> | null = null;
  /** `counters.rotations` as of the anchor last saved: a rotation never gets ahead of it by `maxFiles - 1`. */
  private savedRotation = 0;
  private retryTimer: NodeJS.Timeout | null = null;
  private retryDelayMs: number;
  /** Counters for status and metrics. */
  readonly counters = { diskErrors: 0, rotations: 0, bytesWritten: 0 };
  lastDiskError: string | null = null;
  /**
   * A write failed and none has landed since: through the `disk-error` state and a
   * retry's reopen, until its first write lands (LogSink `diskFailing`).
   */
  diskFailing = false;

  constructor(
    private readonly options: LogWriterOptions,
    private readonly queue: WriteQueue,
    private readonly layout: LogLayout,
    private readonly host: LogWriterHost,
    flushed: number,
  ) {
    this.flushed = flushed;
    this.handedEnd = flushed;
    const newest = layout.spans[0];
    this.fileStart = newest?.index === 0 ? newest.start : flushed;
    this.retryDelayMs = options.diskRetryMs;
  }

  /** Offset up to which bytes are in the files (readable). */
  get flushedEnd(): number {
    return this.flushed;
  }

  /** Resolves when the last rotation's anchor is saved; null when none is being saved. */
  get rotating(): Promise<void> | null {
    return this.anchorSave;
  }

  /** Moves every offset by `delta` (a renumbering). */
  shift(delta: number): void {
    this.flushed += delta;
    this.handedEnd += delta;
    this.fileStart += delta;
  }

  /** Opens the current file (at open, and again after a disk error). */
  async open(): Promise<void> {
    this.host.assertDirUnchanged(); // a recovery must not create files through a swapped directory
    let file: LogFile;
    try {
      file = LogFile.open(this.options.dir, this.options.fileMode, false);
    } catch (err) {
      this.onDiskError(err as NodeJS.ErrnoException);
      return;
    }
    this.file = file;
    this.fileStart = await this.layout.refresh(this.flushed);
    this.handedEnd = this.flushed;
    await this.host.persist();
    this.savedRotation = this.counters.rotations;
    this.host.setState('open');
    this.retryDelayMs = this.options.diskRetryMs;
    this.pump();
  }

  /** Stops retrying; closes the file once the writes in flight are done. */
  async close(): Promise<void> {
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.retryTimer = null;
    this.queue.stopTimer();
    if (this.inflight.length > 0) await new Promise<void>((resolve) => (this.whenIdle = resolve));
    if (this.anchorSave) await this.anchorSave;
    const file = this.file;
    this.file = null;
    file?.close();
  }

  /** Writes what is queued now, without waiting to coalesce (a flush). */
  flushNow(): void {
    this.eager = true;
    this.pump();
  }

  /**
   * Hands queued bytes to the file: gathered writes of up to `maxWriteBytes` each, at
   * their positions in the file, up to MAX_WRITES_IN_FLIGHT at once, cut exactly at the
   * file boundary. A full file is rotated once its writes in flight are acknowledged.
   */
  pump(): void {
    const state = this.host.state;
    if (!this.file || (state !== 'open' && state !== 'closing')) return;
    const queue = this.queue;
    const { maxFileBytes, maxWriteBytes } = this.options;
    while (this.inflight.length < MAX_WRITES_IN_FLIGHT && queue.pendingBytes > 0) {
      let room = this.fileStart + maxFileBytes - this.handedEnd;
      if (room <= 0) {
        if (!this.rotate()) return;
        room = maxFileBytes;
      }
      const file = this.file;
      const size = Math.min(queue.pendingBytes, maxWriteBytes, room);
      const write: InflightWrite = { size, written: 0, err: null, done: false };
      this.inflight.push(write);
      const position = this.handedEnd - this.fileStart;
      this.handedEnd += size;
      file.write(queue.take(size), size, position, (err, written) => this.onWritten(write, err, written));
    }
    if (queue.pendingBytes === 0) this.eager = false;
  }

  /**
   * A write finished. Writes are acknowledged in order: the bytes of the oldest ones that
   * are done count as in the files; a failed or short one ends it there (what later
   * writes put beyond it is cut off by the recovery).
   */
  private onWritten(write: InflightWrite, err: NodeJS.ErrnoException | null, written: number): void {
    if (this.inflight[0] === undefined || !this.inflight.includes(write)) return; // given up after an error: requeued
    write.done = true;
    write.err = err;
    write.written = written;
    const before = this.flushed;
    let failure: NodeJS.ErrnoException | null = null;
    while (this.inflight[0]?.done) {
      const w = this.inflight.shift()!;
      if (w.written > 0) {
        this.queue.acknowledge(w.written);
        this.flushed += w.written;
      }
      if (w.err || w.written < w.size) {
        failure = w.err ?? Object.assign(new Error('short write'), { code: 'EIO' });
        break;
      }
    }
    if (this.flushed > before) {
      this.diskFailing = false;
      this.counters.bytesWritten += this.flushed - before;
      this.layout.grew(this.flushed);
      this.host.flushed(this.flushed);
    }
    if (failure) this.onDiskError(failure);
    // A full file is rotated at once, as logrotate-style writers do: the next byte's
    // file exists (empty) as soon as this one is complete.
    else this.rotateIfFull();
    if (this.inflight.length === 0) {
      const idle = this.whenIdle;
      this.whenIdle = null;
      idle?.();
    }
    if (failure) return;
    if (this.eager || this.host.state === 'closing') this.pump();
    else this.queue.written();
  }

  private rotateIfFull(): void {
    if (this.file && this.handedEnd >= this.fileStart + this.options.maxFileBytes) this.rotate();
  }

  /**
   * A rotation, done at once and synchronously (renames and an open are metadata
   * operations): shift the files, create the new current file, shift the spans. The
   * new anchor's save runs on while bytes go into the new file; the next rotation
   * waits for it, so the anchor on disk is never more than one rotation old and
   * always names a kept file. Returns false when it has to wait or failed.
   *
   * Never while a write is in flight: a rotation under the full file's last write (an
   * anchor's save can end first) would leave a SIGKILL an empty or short rotated file,
   * and every rotated file must hold exactly `maxFileBytes` (docs/design.md "Local
   * store"). That write's acknowledgement rotates it.
   */
  private rotate(): boolean {
    const { dir, fileMode, maxFiles, maxFileBytes } = this.options;
    if (this.inflight.length > 0) return false; // the acknowledgement rotates
    // The anchor on disk must still name a kept file after this rotation.
    if (this.counters.rotations - this.savedRotation >= rotationsAheadOfSave(maxFiles)) return false; // a save's end pumps again
    let next: LogFile;
    try {
      this.host.assertDirUnchanged();
      shiftLogFiles(dir, maxFiles);
      next = LogFile.open(dir, fileMode, true);
    } catch (err) {
      this.onDiskError(err as NodeJS.ErrnoException);
      return false;
    }
    this.file?.close(); // no write to it is in flight
    this.file = next;
    this.fileStart = this.handedEnd;
    this.layout.rotated(next.ino, maxFileBytes, maxFiles, this.handedEnd);
    this.counters.rotations++;
    this.host.emit('rotated');
    this.saveAnchor();
    return true;
  }

  /** Saves the newest anchor; one save at a time, another after it when rotations happened meanwhile. */
  private saveAnchor(): void {
    if (this.anchorSave) return;
    const rotation = this.counters.rotations;
    this.anchorSave = this.host.persist().finally(() => {
      this.anchorSave = null;
      this.savedRotation = Math.max(this.savedRotation, rotation);
      if (this.counters.rotations > this.savedRotation) this.saveAnchor();
      this.rotateIfFull();
      this.pump();
    });
  }

  private onDiskError(err: NodeJS.ErrnoException): void {
    if (this.host.state === 'closed') return;
    this.counters.diskErrors++;
    this.diskFailing = true;
    this.lastDiskError = err.code ?? err.message;
    if (this.host.state !== 'disk-error') {
      this.host.logger.warn(
        { dir: this.options.dir, err: this.lastDiskError },
        'local log write failed; queueing and retrying',
      );
      this.host.setState('disk-error');
      this.host.emit('disk-error', this.lastDiskError);
    }
    // What was in flight and not acknowledged goes back to the front of the queue, in
    // order; the recovery cuts the file back to what was acknowledged, so nothing is doubled.
    this.queue.requeueInflight();
    this.inflight = [];
    this.handedEnd = this.flushed;
    this.file?.close();
    this.file = null;
    const idle = this.whenIdle;
    this.whenIdle = null;
    idle?.();
    this.scheduleRetry();
  }

  private scheduleRetry(): void {
    if (this.retryTimer || this.host.state === 'closed') return;
    this.retryTimer = setTimeout(() => {
      this.retryTimer = null;
      void this.recoverFromDiskError();
    }, this.retryDelayMs);
    this.retryTimer.unref();
    this.retryDelayMs = Math.min(this.retryDelayMs * 2, MAX_DISK_RETRY_MS);
  }

  /**
   * Every byte a write reports is acknowledged, so the newest file holds no more than
   * the flushed offset says; a rotation cut short may have left a hole in the numbering,
   * and a file may still hold more than was acknowledged when a write's report was lost
   * with its process. Close the holes, cut the file back to what we know was written,
   * then reopen: what was requeued is written again, exactly once.
   */
  private async recoverFromDiskError(): Promise<void> {
    try {
      this.host.assertDirUnchanged();
      await closeLogFileGaps(this.options.dir);
      const spans = await scanLogFiles(this.options.dir, this.layout.anchor, this.flushed);
      const newest = spans[0];
      if (newest && newest.index === 0 && newest.start + newest.size > this.flushed) {
        const handle = await openNoFollow(newest.path, true);
        try {
          await handle.truncate(this.flushed - newest.start);
        } finally {
          await handle.close();
        }
      }
      await this.open();
      if (this.host.state === 'open') {
        this.host.logger.info({ dir: this.options.dir }, 'local log writable again');
        this.host.emit('recovered');
      }
    } catch (err) {
      this.onDiskError(err as NodeJS.ErrnoException);
    }
  }
}
