/**
 * The writer of a local log: drains the write queue into the file writer in chunks
 * cut exactly at file boundaries, accounts for each rotation (the spans shift, the
 * new anchor is saved before the new file gets a byte), and survives a failing disk
 * (requeue what was in flight, retry with backoff, cut the file back, reopen).
 * The file writer itself is behind `LogFileWriter` (store/log-file-writer.ts).
 */
import { statSync } from 'node:fs';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { type LogFileWriter, openLogFileWriter } from './log-file-writer.js';
import { LOG_FILE_NAME, scanLogFiles } from './log-files.js';
import type { LogLayout } from './log-reader.js';
import type { LogEvents, LogState } from './log-sink.js';
import type { WriteQueue } from './log-write-queue.js';
import { openNoFollow } from './safe-files.js';

const MAX_DISK_RETRY_MS = 30_000;
/** Bytes handed to the file writer and not yet acknowledged. */
const MAX_INFLIGHT_BYTES = 8 * 1024 * 1024;

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
  /** Saves the log's state file (the anchor moved). */
  persist(): Promise<void>;
  /** Throws when the directory is not the one checked at open. */
  assertDirUnchanged(): void;
  readonly logger: Logger;
}

export class LogWriter {
  private fileWriter: LogFileWriter | null = null;
  /** Offset up to which bytes are in the files (acknowledged). */
  private flushed: number;
  /** Offset up to which bytes were handed to the file writer (written or in flight). */
  private handedEnd: number;
  /** Start offset of the file the next handed chunk goes into. */
  private handedFileStart: number;
  /** Set while a rotation's bookkeeping (the new anchor's save) is under way. */
  private rotatingValue: Promise<void> | null = null;
  private endRotation: (() => void) | null = null;
  private retryTimer: NodeJS.Timeout | null = null;
  private retryDelayMs: number;
  /** Counters for status and metrics. */
  readonly counters = { diskErrors: 0, rotations: 0, bytesWritten: 0 };
  lastDiskError: string | null = null;

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
    this.handedFileStart = newest?.index === 0 ? newest.start : flushed;
    this.retryDelayMs = options.diskRetryMs;
  }

  /** Offset up to which bytes are in the files (readable). */
  get flushedEnd(): number {
    return this.flushed;
  }

  /** Resolves when the rotation under way is accounted for; null when none is. */
  get rotating(): Promise<void> | null {
    return this.rotatingValue;
  }

  /** Moves the flushed offset by `delta` (a renumbering). */
  shift(delta: number): void {
    this.flushed += delta;
  }

  /** Opens the file writer (at open, and again after a disk error). */
  async open(): Promise<void> {
    this.host.assertDirUnchanged(); // a recovery must not create files through a swapped directory
    let writer: LogFileWriter;
    try {
      writer = await openLogFileWriter(this.options, {
        check: () => this.host.assertDirUnchanged(),
        rotated: (w) => this.onRotated(w),
        failed: (w, err) => this.onWriterError(w, err),
      });
    } catch {
      return; // `failed` was told
    }
    this.fileWriter = writer;
    const start = await this.layout.refresh(this.flushed);
    this.handedEnd = this.flushed;
    this.handedFileStart = start;
    await this.host.persist();
    this.host.setState('open');
    this.retryDelayMs = this.options.diskRetryMs;
    this.pump();
  }

  /** Stops retrying and closes the file writer after what was handed to it. */
  async close(): Promise<void> {
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.queue.stopTimer();
    const writer = this.fileWriter;
    this.fileWriter = null;
    if (writer) await writer.end();
  }

  /**
   * A rotation: shift the spans as the file writer shifted the files. The inode is
   * read synchronously (the file was just opened, its metadata is in memory) so it is
   * known before the next chunk lands. No chunk for the new file is handed over until
   * the new anchor is saved, so the anchor on disk is never more than one rotation old
   * and always names a kept file.
   */
  private onRotated(writer: LogFileWriter): void {
    if (writer !== this.fileWriter) return;
    const current = statSync(join(this.options.dir, LOG_FILE_NAME));
    this.layout.rotated(current.ino, this.options.maxFileBytes, this.options.maxFiles, this.flushed);
    this.counters.rotations++;
    void this.host.persist().finally(() => {
      this.rotatingValue = null;
      const end = this.endRotation;
      this.endRotation = null;
      end?.();
      this.host.emit('rotated');
      this.pump();
    });
  }

  /**
   * Hands queued bytes to the file writer: several chunks may be in flight within
   * one file (they are written back to back), cut exactly at file boundaries.
   */
  pump(): void {
    const writer = this.fileWriter;
    if (!writer || this.rotatingValue) return;
    if (this.host.state !== 'open' && this.host.state !== 'closing') return;
    const { maxFileBytes, maxWriteBytes } = this.options;
    const queue = this.queue;
    while (queue.pendingBytes > 0 && queue.inflightBytes < MAX_INFLIGHT_BYTES && !this.rotatingValue) {
      const boundary = this.handedFileStart + maxFileBytes;
      const room = boundary - this.handedEnd;
      const size = Math.min(queue.pendingBytes, maxWriteBytes, room > 0 ? room : maxWriteBytes);
      const chunk = queue.take(size);
      this.handedEnd += size;
      if (this.handedEnd >= boundary) {
        // This chunk fills the file: the writer rotates after writing it. Hold the
        // next chunks until the rotation is accounted for.
        this.handedFileStart = this.handedEnd;
        this.rotatingValue = new Promise((resolve) => {
          this.endRotation = resolve;
        });
      }
      writer.write(chunk, (err) => this.onWritten(writer, chunk, err));
    }
  }

  private onWritten(writer: LogFileWriter, chunk: Buffer, err: Error | null): void {
    if (writer !== this.fileWriter) return; // a failed writer's late callbacks: already requeued
    if (err) {
      this.onWriterError(writer, err as NodeJS.ErrnoException);
      return;
    }
    this.queue.acknowledge();
    this.flushed += chunk.length;
    this.counters.bytesWritten += chunk.length;
    this.layout.grew(this.flushed);
    this.host.emit('flushed', this.flushed);
    this.pump();
  }

  private onWriterError(writer: LogFileWriter | null, err: NodeJS.ErrnoException): void {
    if (this.host.state === 'closed') return;
    if (writer && writer !== this.fileWriter && this.fileWriter !== null) return; // an old writer's late error
    this.counters.diskErrors++;
    this.lastDiskError = err.code ?? err.message;
    if (this.host.state !== 'disk-error') {
      this.host.logger.warn(
        { dir: this.options.dir, err: this.lastDiskError },
        'local log write failed; queueing and retrying',
      );
      this.host.setState('disk-error');
      this.host.emit('disk-error', this.lastDiskError);
    }
    // Whatever was in flight goes back to the front of the queue, in order; the
    // recovery cuts the file back to what was acknowledged, so nothing is doubled.
    this.queue.requeueInflight();
    this.handedEnd = this.flushed;
    this.rotatingValue = null;
    const end = this.endRotation;
    this.endRotation = null;
    end?.();
    this.fileWriter = null;
    writer?.destroy();
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
   * rotating-file-stream ignores short writes, so after a failure the newest file may
   * hold part (or all) of the chunk we put back in the queue. Cut the file back to what
   * we know was written, then reopen: the chunk is written again, exactly once.
   */
  private async recoverFromDiskError(): Promise<void> {
    try {
      const spans = await scanLogFiles(this.options.dir, this.layout.anchor, this.flushed);
      const newest = spans[0];
      if (newest && newest.start + newest.size > this.flushed) {
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
      this.onWriterError(null, err as NodeJS.ErrnoException);
    }
  }
}
