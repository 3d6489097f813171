import { EventEmitter, once } from 'node:events';
import { mkdir, open, stat, truncate } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { createStream, type RotatingFileStream } from 'rotating-file-stream';
import { silentLogger } from '../common/logger.js';
import { JsonStateFile } from './json-state-file.js';
import { LOG_FILE_NAME, type LogAnchor, type LogFileSpan, pruneLogFiles, scanLogFiles } from './log-files.js';
import type { BootStart, LogBounds, LogView } from './log-view.js';

export interface LocalLogOptions {
  /** The guest's directory: `<stateDir>/guests/<id>`. */
  readonly dir: string;
  /** Size of one file; rotation happens exactly at this size. Default 2 MiB (virtlogd's). */
  readonly maxFileBytes: number;
  /** Files kept in all, the current one included. Default 4 (virtlogd's). */
  readonly maxFiles: number;
  /** Bytes that may wait in memory for a slow or failing disk before capture must drop. */
  readonly maxQueueBytes: number;
  /** Largest single write; queued chunks are coalesced up to this. */
  readonly maxWriteBytes: number;
  readonly fileMode: number;
  /** First delay before retrying a failed disk; doubles up to 30 s. */
  readonly diskRetryMs: number;
  readonly logger?: Logger;
}

export type LocalLogState = 'open' | 'disk-error' | 'closing' | 'closed';

interface PersistedLogState {
  version: 1;
  anchor: LogAnchor | null;
  /** The end offset as of the last save: only a hint when the anchor file is gone. */
  end: number;
  boots: BootStart[];
  /** The guest side closed the chardev; the next attach starts a new boot. */
  awaitingBoot: boolean;
}

const STATE_FILE = 'log-state.json';
const MAX_BOOT_RECORDS = 10_000;
const MAX_DISK_RETRY_MS = 30_000;

/**
 * One guest's local log: rotating files (`console.log`, `console.log.1` …, newest
 * first) written through rotating-file-stream, with offsets that never reset.
 *
 * `append` never waits: bytes go to a bounded in-memory queue that one writer drains
 * in coalesced writes, cut exactly at file boundaries so that every rotated file holds
 * `maxFileBytes` and the offset of every file's first byte follows from the sizes.
 * When the queue is full the caller drops and counts (see `canAccept`).
 */
export class LocalLog extends EventEmitter implements LogView {
  private stateValue: LocalLogState = 'open';
  private stream: RotatingFileStream | null = null;
  private spans: LogFileSpan[];
  private anchor: LogAnchor | null;
  private currentSize: number;
  private flushed: number;
  private logicalEnd: number;
  private readonly pending: Buffer[] = [];
  private pendingBytes = 0;
  private inflight: Buffer | null = null;
  private rotating: Promise<void> | null = null;
  private retryTimer: NodeJS.Timeout | null = null;
  private retryDelayMs: number;
  private bootList: BootStart[];
  private awaitingBootValue: boolean;
  private readonly stateFile: JsonStateFile<PersistedLogState>;
  private readonly logger: Logger;
  /** Counters for status and metrics. */
  readonly counters = { diskErrors: 0, rotations: 0, bytesWritten: 0 };
  lastDiskError: string | null = null;

  private constructor(
    readonly options: LocalLogOptions,
    persisted: PersistedLogState | null,
    spans: LogFileSpan[],
  ) {
    super();
    this.logger = options.logger ?? silentLogger();
    this.stateFile = new JsonStateFile(join(options.dir, STATE_FILE), options.fileMode);
    this.spans = spans;
    this.anchor = persisted?.anchor ?? null;
    const newest = spans[0];
    this.flushed = newest ? newest.start + newest.size : (persisted?.end ?? 0);
    this.logicalEnd = this.flushed;
    this.currentSize = newest?.index === 0 ? newest.size : 0;
    this.retryDelayMs = options.diskRetryMs;
    // A boot recorded just before a SIGKILL may point past what reached the disk:
    // it starts where the log now ends.
    this.bootList = (persisted?.boots ?? []).map((b) => ({ ...b, offset: Math.min(b.offset, this.flushed) }));
    this.awaitingBootValue = persisted?.awaitingBoot ?? false;
  }

  /** Opens (creating or recovering) the log in `options.dir`. */
  static async open(options: LocalLogOptions): Promise<LocalLog> {
    await mkdir(options.dir, { recursive: true, mode: 0o750 });
    const stateFile = new JsonStateFile<PersistedLogState>(join(options.dir, STATE_FILE));
    const persisted = await stateFile.load();
    const scanned = await scanLogFiles(options.dir, persisted?.anchor ?? null, persisted?.end ?? 0);
    const spans = await pruneLogFiles(scanned, options.maxFiles);
    const log = new LocalLog(options, persisted, spans);
    await log.openStream();
    return log;
  }

  get state(): LocalLogState {
    return this.stateValue;
  }

  /** Offset of the next byte `append` will place. */
  get end(): number {
    return this.logicalEnd;
  }

  /** Offset up to which bytes are in the files (readable). */
  get flushedEnd(): number {
    return this.flushed;
  }

  /** Offset of the oldest byte still kept. */
  get oldest(): number {
    const oldestSpan = this.spans[this.spans.length - 1];
    return oldestSpan ? oldestSpan.start : this.flushed;
  }

  get queuedBytes(): number {
    return this.pendingBytes + (this.inflight?.length ?? 0);
  }

  get boots(): readonly BootStart[] {
    return this.bootList;
  }

  get currentBoot(): number {
    return this.bootList[this.bootList.length - 1]?.boot ?? 0;
  }

  get awaitingBoot(): boolean {
    return this.awaitingBootValue;
  }

  /** Snapshot of the files, newest first. */
  files(): readonly LogFileSpan[] {
    return this.spans;
  }

  /** Whether `bytes` more fit in the queue; when not, the caller drops and counts. */
  canAccept(bytes: number): boolean {
    return this.stateValue !== 'closed' && this.queuedBytes + bytes <= this.options.maxQueueBytes;
  }

  /** Queues bytes at the end of the log and returns the offset of the first one. */
  append(bytes: Buffer): number {
    if (this.stateValue === 'closed') throw new Error('append on a closed log');
    const offset = this.logicalEnd;
    if (bytes.length === 0) return offset;
    this.pending.push(bytes);
    this.pendingBytes += bytes.length;
    this.logicalEnd += bytes.length;
    this.pump();
    return offset;
  }

  /** Records that a boot starts at the current end; the caller appends the marker next. */
  startBoot(atMs: number): BootStart {
    const record = { boot: this.currentBoot + 1, offset: this.logicalEnd, atMs };
    this.bootList.push(record);
    if (this.bootList.length > MAX_BOOT_RECORDS) this.bootList.splice(0, this.bootList.length - MAX_BOOT_RECORDS);
    this.awaitingBootValue = false;
    this.persist();
    return record;
  }

  setAwaitingBoot(value: boolean): void {
    if (this.awaitingBootValue === value) return;
    this.awaitingBootValue = value;
    this.persist();
  }

  // LogView ------------------------------------------------------------------

  async bounds(): Promise<LogBounds> {
    return { oldest: this.oldest, next: this.flushed };
  }

  async bootStarts(): Promise<readonly BootStart[]> {
    return this.bootList;
  }

  /** Reads `[start, end)`, which must lie within `[oldest, flushedEnd)`. */
  async read(start: number, end: number): Promise<Buffer> {
    for (let attempt = 0; ; attempt++) {
      const result = await this.tryRead(start, end);
      if (result) return result;
      // A rotation renamed the files under us: wait for the new layout and read again.
      if (attempt >= 5) throw new Error(`log files changed during read of [${start}, ${end})`);
      if (this.rotating) await this.rotating;
      else await new Promise((r) => setTimeout(r, 5));
    }
  }

  /** Resolves when the byte at offset `after` is readable, the log closes, or `signal` aborts. */
  async waitForData(after: number, signal: AbortSignal): Promise<void> {
    if (this.flushed > after || this.stateValue === 'closed') return;
    await new Promise<void>((resolve) => {
      const done = () => {
        this.off('flushed', onFlushed);
        this.off('closed', done);
        signal.removeEventListener('abort', done);
        resolve();
      };
      const onFlushed = (end: number) => {
        if (end > after) done();
      };
      this.on('flushed', onFlushed);
      this.on('closed', done);
      signal.addEventListener('abort', done, { once: true });
    });
  }

  // Lifecycle ----------------------------------------------------------------

  /**
   * Opens a log for reading only (a guest that is not attached here any more):
   * no stream, no writes, no state saves.
   */
  static async inspect(dir: string, options: Omit<LocalLogOptions, 'dir'>): Promise<LocalLog | null> {
    const stateFile = new JsonStateFile<PersistedLogState>(join(dir, STATE_FILE));
    const persisted = await stateFile.load();
    const spans = await scanLogFiles(dir, persisted?.anchor ?? null, persisted?.end ?? 0);
    if (spans.length === 0 && !persisted) return null;
    const log = new LocalLog({ ...options, dir }, persisted, spans);
    log.stateValue = 'closed';
    return log;
  }

  /** Resolves when everything appended so far is in the files (or the disk keeps failing past the deadline). */
  async flush(timeoutMs = 10_000): Promise<boolean> {
    const target = this.logicalEnd;
    if (this.flushed >= target) return true;
    const deadline = AbortSignal.timeout(timeoutMs);
    while (this.flushed < target && !deadline.aborted && this.stateValue !== 'closed') {
      await this.waitForData(target - 1, deadline);
    }
    return this.flushed >= target;
  }

  /** Flushes, closes the file and saves the state. Bytes still queued after the deadline are reported. */
  async close(timeoutMs = 10_000): Promise<{ lostBytes: number }> {
    if (this.stateValue === 'closed') return { lostBytes: 0 };
    await this.flush(timeoutMs);
    if (this.rotating) await this.rotating;
    const lostBytes = this.queuedBytes;
    this.stateValue = 'closing';
    if (this.retryTimer) clearTimeout(this.retryTimer);
    const stream = this.stream;
    this.stream = null;
    if (stream && !stream.destroyed) {
      stream.end();
      await once(stream, 'finish').catch(() => undefined);
    }
    await this.persist();
    this.stateValue = 'closed';
    this.emit('closed');
    return { lostBytes };
  }

  // Internals ----------------------------------------------------------------

  private async openStream(): Promise<void> {
    const stream = createStream(LOG_FILE_NAME, {
      path: this.options.dir,
      size: `${this.options.maxFileBytes}B`,
      // Classical logrotate naming: console.log.1 … console.log.N, newest first.
      rotate: Math.max(1, this.options.maxFiles - 1),
      mode: this.options.fileMode,
    });
    stream.on('error', (err: NodeJS.ErrnoException) => this.onStreamError(stream, err));
    try {
      await once(stream, 'open');
    } catch (err) {
      this.onStreamError(stream, err as NodeJS.ErrnoException);
      return;
    }
    this.stream = stream;
    await this.refreshLayout();
    this.stateValue = 'open';
    this.retryDelayMs = this.options.diskRetryMs;
    this.pump();
  }

  /** Re-reads the files after a rotation or a (re)open and saves the new anchor. */
  private async refreshLayout(): Promise<void> {
    const current = await stat(join(this.options.dir, LOG_FILE_NAME));
    this.currentSize = current.size;
    this.anchor = { ino: current.ino, start: this.flushed - current.size };
    this.spans = await scanLogFiles(this.options.dir, this.anchor, this.flushed);
    await this.persist();
  }

  private pump(): void {
    const stream = this.stream;
    if (!stream || this.inflight || this.rotating || this.pendingBytes === 0) return;
    if (this.stateValue !== 'open' && this.stateValue !== 'closing') return;
    const room = this.options.maxFileBytes - this.currentSize;
    const size = Math.min(this.pendingBytes, this.options.maxWriteBytes, room > 0 ? room : this.options.maxWriteBytes);
    const chunk = this.takePending(size);
    this.inflight = chunk;
    stream.write(chunk, (err) => this.onWritten(chunk, err ?? null));
  }

  private takePending(size: number): Buffer {
    const first = this.pending[0]!;
    if (first.length >= size) {
      if (first.length === size) this.pending.shift();
      else this.pending[0] = first.subarray(size);
      this.pendingBytes -= size;
      return first.subarray(0, size);
    }
    const out = Buffer.allocUnsafe(size);
    let filled = 0;
    while (filled < size) {
      const head = this.pending[0]!;
      const n = Math.min(head.length, size - filled);
      head.copy(out, filled, 0, n);
      filled += n;
      if (n === head.length) this.pending.shift();
      else this.pending[0] = head.subarray(n);
    }
    this.pendingBytes -= size;
    return out;
  }

  private onWritten(chunk: Buffer, err: Error | null): void {
    this.inflight = null;
    if (err) {
      this.requeue(chunk);
      this.onStreamError(this.stream, err as NodeJS.ErrnoException);
      return;
    }
    this.currentSize += chunk.length;
    this.flushed += chunk.length;
    this.counters.bytesWritten += chunk.length;
    const head = this.spans[0];
    if (head?.index === 0) this.spans[0] = { ...head, size: this.currentSize };
    else this.spans.unshift({ index: 0, path: join(this.options.dir, LOG_FILE_NAME), ino: -1, start: this.flushed - this.currentSize, size: this.currentSize });
    this.emit('flushed', this.flushed);
    if (this.currentSize >= this.options.maxFileBytes) {
      // rotating-file-stream renamed the files and opened a new console.log before
      // calling back: learn the new layout before the next write.
      this.counters.rotations++;
      this.rotating = this.refreshLayout()
        .catch((e: NodeJS.ErrnoException) => this.onStreamError(this.stream, e))
        .finally(() => {
          this.rotating = null;
          this.emit('rotated');
          this.pump();
        });
      return;
    }
    this.pump();
  }

  private requeue(chunk: Buffer): void {
    this.pending.unshift(chunk);
    this.pendingBytes += chunk.length;
  }

  private onStreamError(stream: RotatingFileStream | null, err: NodeJS.ErrnoException): void {
    if (this.stateValue === 'closed') return;
    if (stream && stream !== this.stream && this.stream !== null) return; // an old stream's late error
    this.counters.diskErrors++;
    this.lastDiskError = err.code ?? err.message;
    if (this.stateValue !== 'disk-error') {
      this.logger.warn({ dir: this.options.dir, err: this.lastDiskError }, 'local log write failed; queueing and retrying');
      this.stateValue = 'disk-error';
      this.emit('disk-error', this.lastDiskError);
    }
    if (stream && !stream.destroyed) stream.destroy();
    this.stream = null;
    this.scheduleRetry();
  }

  private scheduleRetry(): void {
    if (this.retryTimer || this.stateValue === 'closed') return;
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
      const spans = await scanLogFiles(this.options.dir, this.anchor, this.flushed);
      const newest = spans[0];
      if (newest && newest.start + newest.size > this.flushed) {
        await truncate(newest.path, this.flushed - newest.start);
      }
      await this.openStream();
      if (this.stateValue === 'open') {
        this.logger.info({ dir: this.options.dir }, 'local log writable again');
        this.emit('recovered');
      }
    } catch (err) {
      this.onStreamError(null, err as NodeJS.ErrnoException);
    }
  }

  private async tryRead(start: number, end: number): Promise<Buffer | null> {
    const out = Buffer.allocUnsafe(Math.max(0, end - start));
    const spans = [...this.spans].reverse(); // oldest first
    let pos = start;
    for (const span of spans) {
      if (pos >= end) break;
      const spanEnd = span.start + span.size;
      if (spanEnd <= pos) continue;
      if (span.start > pos) return null;
      const handle = await open(span.path, 'r').catch(() => null);
      if (!handle) return null;
      try {
        if (span.ino !== -1 && (await handle.stat()).ino !== span.ino) return null;
        const want = Math.min(end, spanEnd) - pos;
        const { bytesRead } = await handle.read(out, pos - start, want, pos - span.start);
        if (bytesRead !== want) return null;
        pos += want;
      } finally {
        await handle.close();
      }
    }
    return pos >= end ? out : null;
  }

  private persist(): Promise<void> {
    const value: PersistedLogState = {
      version: 1,
      anchor: this.anchor,
      end: this.flushed,
      boots: this.bootList,
      awaitingBoot: this.awaitingBootValue,
    };
    return this.stateFile.save(value).catch((err: NodeJS.ErrnoException) => {
      // The state file is small; failing to save it (disk full) only costs the boot
      // records written since the last save. The log itself keeps going.
      this.logger.warn({ dir: this.options.dir, err: err.code ?? err.message }, 'saving log state failed');
    });
  }
}
