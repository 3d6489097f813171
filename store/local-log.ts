import { EventEmitter } from 'node:events';
import { lstat, mkdir } from 'node:fs/promises';
import { dirname } from 'node:path';
import type { Logger } from 'pino';
import { silentLogger } from '../common/logger.js';
import { closeLogFileGaps, type LogFileSpan, pruneLogFiles, scanLogFiles } from './log-files.js';
import { LogLayout } from './log-reader.js';
import type { LogEvents, LogSink, LogState } from './log-sink.js';
import { type LoadedLogState, LogStateStore, loadLogState } from './log-state.js';
import type { BootStart, LogBounds, LogView } from './log-view.js';
import { WriteQueue } from './log-write-queue.js';
import { LogWriter, type LogWriterHost, type LogWriterOptions } from './log-writer.js';
import { MarkerIndex, type MarkerKind, type MarkerRecord } from './marker-index.js';
import { assertPrivateDir, assertSameDir, checkPrivateDir, type DirIdentity } from './safe-files.js';

export interface LocalLogOptions extends LogWriterOptions {
  /** The guest's directory: `<stateDir>/guests/<id>`. */
  readonly dir: string;
  /** Size of one file; rotation happens exactly at this size. Default 2 MiB (virtlogd's). */
  readonly maxFileBytes: number;
  /** Files kept in all, the current one included. Default 4 (virtlogd's). */
  readonly maxFiles: number;
  /** Bytes that may wait in memory for a slow or failing disk before capture must drop. */
  readonly maxQueueBytes: number;
  readonly logger?: Logger;
}

export type LocalLogState = LogState;
export type { LogEvents as LocalLogEvents } from './log-sink.js';

/**
 * One guest's local log: rotating files (`console.log`, `console.log.1` …, newest
 * first), with offsets that never reset.
 *
 * `append` never waits: bytes go to a bounded in-memory queue (store/log-write-queue.ts)
 * that one writer (store/log-writer.ts) drains in coalesced writes, cut exactly at
 * file boundaries so that every rotated file holds `maxFileBytes` and the offset of
 * every file's first byte follows from the sizes. When the queue is full the caller
 * drops and counts (see `canAccept`). Reads go through the files' layout
 * (store/log-reader.ts); the anchor and the boot records are saved by
 * store/log-state.ts. This class ties them together and keeps the log's state.
 */
export class LocalLog extends EventEmitter<LogEvents> implements LogView, LogSink {
  private stateValue: LocalLogState = 'open';
  /** `watchFlushed`'s listeners. */
  private flushedWatchers: ReadonlyArray<(end: number) => void> = [];
  private logicalEnd: number;
  private readonly layout: LogLayout;
  private readonly queue: WriteQueue;
  private readonly writer: LogWriter;
  private readonly saved: LogStateStore;
  private markerIndex: MarkerIndex | null = null;
  private readonly logger: Logger;
  /** The directory as checked at open: every file open and rotation checks it is still the one. */
  private readonly dirIdentity: DirIdentity;

  private constructor(
    readonly options: LocalLogOptions,
    loaded: LoadedLogState,
    spans: LogFileSpan[],
    dirIdentity: DirIdentity,
  ) {
    super();
    this.logger = options.logger ?? silentLogger();
    this.dirIdentity = dirIdentity;
    const { persisted } = loaded;
    this.layout = new LogLayout(options.dir, spans, persisted?.anchor ?? null);
    const newest = spans[0];
    const flushed = newest ? newest.start + newest.size : (persisted?.end ?? 0);
    this.logicalEnd = flushed;
    this.queue = new WriteQueue(options.maxQueueBytes, () => this.writer.pump());
    const log = this;
    this.writer = new LogWriter(
      options,
      this.queue,
      this.layout,
      {
        get state() {
          return log.stateValue;
        },
        setState: (next) => this.setState(next),
        emit: this.emit.bind(this) as LogWriterHost['emit'],
        flushed: (end) => this.notifyFlushed(end),
        persist: () => this.saved.save(),
        assertDirUnchanged: () => this.assertDirUnchanged(),
        logger: this.logger,
      },
      flushed,
    );
    this.saved = new LogStateStore(
      {
        dir: options.dir,
        fileMode: options.fileMode,
        logger: this.logger,
        position: () => ({ anchor: this.layout.anchor, end: this.writer.flushedEnd }),
      },
      loaded,
      flushed,
      this.layout.oldest(flushed),
    );
  }

  /** Opens (creating or recovering) the log in `options.dir`. */
  static async open(options: LocalLogOptions): Promise<LocalLog> {
    await mkdir(dirname(options.dir), { recursive: true, mode: 0o750 });
    // The directory must be ours and no link (scanLogFiles refuses links in place of
    // the files, and the writer opens them O_NOFOLLOW).
    const dirIdentity = await assertPrivateDir(options.dir);
    const loaded = await loadLogState(options.dir);
    await closeLogFileGaps(options.dir); // a rotation a SIGKILL cut short
    const { persisted } = loaded;
    const scanned = await scanLogFiles(options.dir, persisted?.anchor ?? null, persisted?.end ?? 0);
    const spans = await pruneLogFiles(scanned, options.maxFiles);
    const log = new LocalLog(options, loaded, spans, dirIdentity);
    log.markerIndex = await MarkerIndex.open(options.dir, options.fileMode, log.logger);
    await log.writer.open();
    // What the last run appended goes into the state file, and the index starts
    // clean (a line torn by a crash is never appended to).
    if (loaded.bootIndex.records.length > 0 || !loaded.bootIndex.current) await log.compactBoots();
    return log;
  }

  /**
   * Opens a log for reading only (a guest that is not attached here any more):
   * no writer, no writes, no state saves.
   */
  static async inspect(dir: string, options: Omit<LocalLogOptions, 'dir'>): Promise<LocalLog | null> {
    const st = await lstat(dir).catch(() => null);
    if (st === null) return null;
    checkPrivateDir(dir, st);
    const dirIdentity = { dev: st.dev, ino: st.ino };
    const loaded = await loadLogState(dir);
    const { persisted } = loaded;
    const spans = await scanLogFiles(dir, persisted?.anchor ?? null, persisted?.end ?? 0);
    if (spans.length === 0 && !persisted) return null;
    const log = new LocalLog({ ...options, dir }, loaded, spans, dirIdentity);
    log.markerIndex = await MarkerIndex.open(dir, options.fileMode, log.logger);
    log.layout.keepNoHandles();
    log.setState('closed');
    return log;
  }

  get state(): LocalLogState {
    return this.stateValue;
  }

  /** See LogSink: writes failed and none has landed since. */
  get diskFailing(): boolean {
    return this.writer.diskFailing;
  }

  /** The one place the state changes; every change is logged `old -> new`. */
  private setState(next: LocalLogState): void {
    const previous = this.stateValue;
    if (previous === next) return;
    this.stateValue = next;
    this.logger.debug(
      { dir: this.options.dir, from: previous, to: next },
      `local log ${previous} -> ${next}`,
    );
  }

  /** Offset of the next byte `append` will place. */
  get end(): number {
    return this.logicalEnd;
  }

  /** Offset up to which bytes are in the files (readable). */
  get flushedEnd(): number {
    return this.writer.flushedEnd;
  }

  /** Offset of the oldest byte still kept. */
  get oldest(): number {
    return this.layout.oldest(this.writer.flushedEnd);
  }

  get queuedBytes(): number {
    return this.queue.queuedBytes;
  }

  get maxQueueBytes(): number {
    return this.options.maxQueueBytes;
  }

  get boots(): readonly BootStart[] {
    return this.saved.boots;
  }

  get currentBoot(): number {
    return this.saved.currentBoot;
  }

  get awaitingBoot(): boolean {
    return this.saved.awaitingBoot;
  }

  /** Counters for status and metrics. */
  get counters(): { readonly diskErrors: number; readonly rotations: number; readonly bytesWritten: number } {
    return this.writer.counters;
  }

  /** The code (or message) of the last failed write, or null. */
  get lastDiskError(): string | null {
    return this.writer.lastDiskError;
  }

  /** Snapshot of the files, newest first. */
  files(): readonly LogFileSpan[] {
    return this.layout.spans;
  }

  /** Whether `bytes` more fit in the queue; when not, the caller drops and counts. */
  canAccept(bytes: number): boolean {
    return this.stateValue !== 'closed' && this.queue.canAccept(bytes);
  }

  /** Queues bytes at the end of the log and returns the offset of the first one. */
  append(bytes: Buffer): number {
    if (this.stateValue === 'closed') throw new Error('append on a closed log');
    const offset = this.logicalEnd;
    if (bytes.length === 0) return offset;
    this.logicalEnd += bytes.length;
    this.queue.push(bytes);
    return offset;
  }

  /** Appends one of consoled's markers and records it in the marker index; returns its offset. */
  appendMarker(bytes: Buffer, kind: MarkerKind): number {
    const offset = this.append(bytes);
    this.noteMarker(offset, bytes.length, kind);
    return offset;
  }

  /** Records a marker already appended at `offset` (copied in from a spool). */
  noteMarker(offset: number, length: number, kind: MarkerKind): void {
    this.markerIndex?.add(offset, length, kind);
  }

  async markers(start: number, end: number): Promise<MarkerRecord[]> {
    return this.markersIn(start, end);
  }

  /** consoled's markers that start in `[start, end)`, from the marker index. */
  markersIn(start: number, end: number): MarkerRecord[] {
    const index = this.markerIndex;
    if (!index) return [];
    index.prune(this.oldest);
    return index.inRange(start, end);
  }

  /** Records that a boot starts at the current end; the caller appends the marker next. */
  startBoot(atMs: number): BootStart {
    return this.saved.startBoot(this.logicalEnd, atMs);
  }

  setAwaitingBoot(value: boolean): void {
    this.saved.setAwaitingBoot(value);
  }

  /** Saves every boot record in the state file under a new index generation, and starts that index empty. */
  compactBoots(): Promise<void> {
    return this.saved.compact();
  }

  /**
   * Calls `listener` each time bytes reach the files; returns the unsubscribe (LogSink).
   * A plain list, replaced on each change, not the event: with hundreds of guests it is
   * called thousands of times a second, and `emit` copied its listeners every time.
   */
  watchFlushed(listener: (end: number) => void): () => void {
    this.flushedWatchers = [...this.flushedWatchers, listener];
    return () => {
      const at = this.flushedWatchers.indexOf(listener);
      if (at < 0) return;
      const rest = [...this.flushedWatchers];
      rest.splice(at, 1);
      this.flushedWatchers = rest;
    };
  }

  /** Bytes reached the files up to `end`: the watchers, then the `flushed` event's listeners. */
  private notifyFlushed(end: number): void {
    // The list as it is now: a watcher that unsubscribes or subscribes meanwhile replaces it.
    const watchers = this.flushedWatchers;
    for (let i = 0; i < watchers.length; i++) watchers[i]!(end);
    this.emit('flushed', end);
  }

  /** The last renumbering applied (persisted), or null. */
  get lastRenumber(): { readonly from: number; readonly to: number } | null {
    return this.saved.lastRenumber;
  }

  /**
   * Moves every offset of the log by `to - from`, so that offset `from` becomes `to`,
   * and replaces the boot records with `boots` (already in the new numbering). The
   * files are not touched: offsets derive from the anchor, which moves with them.
   * Used when a migration's destination becomes the owner: the log it spooled from
   * offset `from` continues the shared stream at `to` (docs/design.md invariant 3). The
   * new numbering is saved, with `{from, to}`, before this resolves; readers and
   * waiters holding old offsets see a jump, as after a rotation.
   */
  async renumber(from: number, to: number, boots: readonly BootStart[]): Promise<void> {
    const delta = to - from;
    if (this.oldest + delta < 0) throw new Error(`renumbering ${from} -> ${to} would make offsets negative`);
    this.writer.shift(delta);
    this.logicalEnd += delta;
    this.layout.shift(delta);
    await this.saved.renumber(from, to, boots);
    await this.markerIndex?.shift(delta);
    this.emit('renumbered', { from, to });
    if (delta > 0) this.notifyFlushed(this.writer.flushedEnd);
  }

  // LogView ------------------------------------------------------------------

  async bounds(): Promise<LogBounds> {
    this.assertDirUnchanged(); // a read through a swapped directory is refused before it starts
    return { oldest: this.oldest, next: this.writer.flushedEnd };
  }

  async bootStarts(): Promise<readonly BootStart[]> {
    return this.saved.boots;
  }

  /**
   * Reads `[start, end)`, which must lie within `[oldest, flushedEnd)`; into `into`
   * (at least `end - start` bytes) when given, returning a view of it.
   */
  read(start: number, end: number, into?: Buffer): Promise<Buffer> {
    return this.layout.read(
      start,
      end,
      () => this.assertDirUnchanged(),
      () => this.writer.rotating,
      into,
    );
  }

  /** Resolves when the byte at offset `after` is readable, the log closes, or `signal` aborts. */
  async waitForData(after: number, signal: AbortSignal): Promise<void> {
    if (this.writer.flushedEnd > after || this.stateValue === 'closed') return;
    await new Promise<void>((resolve) => {
      const done = () => {
        unwatch();
        this.off('closed', done);
        signal.removeEventListener('abort', done);
        resolve();
      };
      const unwatch = this.watchFlushed((end: number) => {
        if (end > after) done();
      });
      this.on('closed', done);
      signal.addEventListener('abort', done, { once: true });
    });
  }

  // Lifecycle ----------------------------------------------------------------

  /** Resolves when everything appended so far is in the files (or the disk keeps failing past the deadline). */
  async flush(timeoutMs = 10_000): Promise<boolean> {
    const target = this.logicalEnd;
    if (this.writer.flushedEnd < target) {
      this.writer.flushNow();
      const deadline = AbortSignal.timeout(timeoutMs);
      while (this.writer.flushedEnd < target && !deadline.aborted && this.stateValue !== 'closed') {
        await this.waitForData(target - 1, deadline);
      }
    }
    // The layout settles too: a rotation the last write made due is done and its anchor saved.
    for (let rotating = this.writer.rotating; rotating; rotating = this.writer.rotating) await rotating;
    return this.writer.flushedEnd >= target;
  }

  /** Flushes, closes the file and saves the state. Bytes still queued after the deadline are reported. */
  async close(timeoutMs = 10_000): Promise<{ lostBytes: number }> {
    if (this.stateValue === 'closed') return { lostBytes: 0 };
    await this.flush(timeoutMs);
    if (this.writer.rotating) await this.writer.rotating;
    const lostBytes = this.queuedBytes;
    this.setState('closing');
    await this.writer.close();
    this.layout.closeHandles();
    await this.compactBoots(); // saves the state with every boot record
    await this.markerIndex?.close();
    this.setState('closed');
    this.emit('closed');
    return { lostBytes };
  }

  private assertDirUnchanged(): void {
    assertSameDir(this.options.dir, this.dirIdentity);
  }
}
