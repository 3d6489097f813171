import { EventEmitter, once } from 'node:events';
import { constants, statSync } from 'node:fs';
import { type FileHandle, lstat, mkdir, open, readFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import type { Logger } from 'pino';
import { createStream, type RotatingFileStream } from 'rotating-file-stream';
import { silentLogger } from '../common/logger.js';
import { JsonStateFile } from './json-state-file.js';
import {
  closeLogFileGaps,
  LOG_FILE_NAME,
  type LogAnchor,
  type LogFileSpan,
  logFileName,
  pruneLogFiles,
  scanLogFiles,
} from './log-files.js';
import type { BootStart, LogBounds, LogView } from './log-view.js';
import { MarkerIndex, type MarkerKind, type MarkerRecord } from './marker-index.js';
import {
  assertOpenedFile,
  assertPrivateDir,
  assertSameDir,
  checkPrivateDir,
  type DirIdentity,
  openNoFollow,
} from './safe-files.js';

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
  /** The last `renumber` applied, so a caller that crashed around it can tell whether it happened. */
  renumbered?: { from: number; to: number };
  /**
   * Generation of the boot index (BOOT_INDEX_FILE) that continues `boots` and
   * `awaitingBoot`; an index of another generation is stale. Absent in states written
   * before the index existed (generation 0, no index).
   */
  bootIndex?: number;
}

const STATE_FILE = 'log-state.json';
const MAX_BOOT_RECORDS = 10_000;
/**
 * Boot records since the state file was last compacted, one JSON line each: the
 * first line is `{"generation":g}`, then `{"boot","offset","atMs"}` for a boot and
 * `{"awaitingBoot":true,"afterBoot":n}` when the guest side closed during boot n. Starting a boot appends a line
 * instead of rewriting every record in the state file.
 */
const BOOT_INDEX_FILE = 'boot-index.jsonl';
/** Lines in the boot index after which it is folded into the state file. */
const BOOT_INDEX_COMPACT_LINES = 256;
const MAX_DISK_RETRY_MS = 30_000;
/** Bytes handed to the file stream and not yet acknowledged. */
const MAX_INFLIGHT_BYTES = 8 * 1024 * 1024;
/** Appends smaller than this together wait up to COALESCE_MS to share one write. */
const COALESCE_BYTES = 64 * 1024;
const COALESCE_MS = 4;

/** A boot, or the guest side closing during boot `afterBoot` (the next attach is a new boot). */
type BootIndexRecord = BootStart | { awaitingBoot: true; afterBoot: number };

interface BootIndexLoad {
  /** The index's records, in order (none when it is missing or stale). */
  readonly records: BootIndexRecord[];
  /** Whether the file is of the state's generation and ends cleanly (it can be appended to). */
  readonly current: boolean;
}

/** Reads the boot index of `generation`; a missing, stale or foreign file gives no records. */
async function loadBootIndex(dir: string, generation: number): Promise<BootIndexLoad> {
  let text: string;
  try {
    text = await readFile(join(dir, BOOT_INDEX_FILE), {
      encoding: 'utf8',
      flag: constants.O_RDONLY | constants.O_NOFOLLOW,
    });
  } catch {
    return { records: [], current: false };
  }
  const lines = text.split('\n');
  const clean = lines.pop() === ''; // a line a crash cut short has no newline
  let header: unknown;
  try {
    header = JSON.parse(lines[0] ?? '');
  } catch {
    return { records: [], current: false };
  }
  if ((header as { generation?: unknown } | null)?.generation !== generation)
    return { records: [], current: false };
  const records: BootIndexRecord[] = [];
  for (const line of lines.slice(1)) {
    let r: Record<string, unknown>;
    try {
      r = JSON.parse(line) as Record<string, unknown>;
    } catch {
      continue;
    }
    if (Number.isInteger(r['boot']) && Number.isInteger(r['offset']) && typeof r['atMs'] === 'number')
      records.push({ boot: r['boot'] as number, offset: r['offset'] as number, atMs: r['atMs'] as number });
    else if (r['awaitingBoot'] === true && Number.isInteger(r['afterBoot']))
      records.push({ awaitingBoot: true, afterBoot: r['afterBoot'] as number });
  }
  return { records, current: clean };
}

/**
 * rotating-file-stream writes each chunk with one `FileHandle.write` and ignores the
 * count it returns. On a filling disk that count comes back short with no error (the
 * rest of the chunk is simply not written), so the log would lose bytes in the middle
 * of a file, unmarked, and every later offset would be off. Make the handle the stream
 * just opened finish each chunk: writing the rest hits ENOSPC, the chunk fails, and
 * the disk-error recovery cuts the file back to what was acknowledged.
 */
function writeWholeChunks(stream: RotatingFileStream): void {
  const handle = (stream as unknown as { file?: FileHandle }).file;
  if (!handle) return;
  const writeOnce = handle.write.bind(handle) as (
    b: Buffer,
    offset: number,
    length: number,
  ) => Promise<{ bytesWritten: number }>;
  Object.assign(handle, {
    write: async (buffer: Buffer) => {
      let done = 0;
      while (done < buffer.length) {
        const { bytesWritten } = await writeOnce(buffer, done, buffer.length - done);
        if (bytesWritten === 0) throw Object.assign(new Error('write made no progress'), { code: 'EIO' });
        done += bytesWritten;
      }
      return { bytesWritten: done, buffer };
    },
  });
}

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
  /** Offset up to which bytes were handed to the file stream (written or in flight). */
  private handedEnd: number;
  /** Start offset of the file the next handed chunk goes into. */
  private handedFileStart: number;
  private flushed: number;
  private logicalEnd: number;
  private readonly pending: Buffer[] = [];
  private pendingBytes = 0;
  private readonly inflight: Buffer[] = [];
  private inflightBytes = 0;
  /** Set while a rotation's bookkeeping (the new anchor's save) is under way. */
  private rotating: Promise<void> | null = null;
  private endRotation: (() => void) | null = null;
  private coalesceTimer: NodeJS.Timeout | null = null;
  private retryTimer: NodeJS.Timeout | null = null;
  private retryDelayMs: number;
  private bootList: BootStart[];
  private awaitingBootValue: boolean;
  private renumberedValue: { from: number; to: number } | null;
  private markerIndex: MarkerIndex | null = null;
  private readonly stateFile: JsonStateFile<PersistedLogState>;
  /** Generation of the boot index the state file names. */
  private bootIndexGeneration: number;
  /** Records in the current boot index file; -1 when it must be started afresh. */
  private bootIndexLines: number;
  /** Boot index writes and compactions, one at a time, in order. */
  private bootIndexChain: Promise<void> = Promise.resolve();
  private readonly logger: Logger;
  /** The directory as checked at open: every file open and rotation checks it is still the one. */
  private dirIdentity: DirIdentity | null = null;
  /** Counters for status and metrics. */
  readonly counters = { diskErrors: 0, rotations: 0, bytesWritten: 0 };
  lastDiskError: string | null = null;

  private constructor(
    readonly options: LocalLogOptions,
    persisted: PersistedLogState | null,
    spans: LogFileSpan[],
    bootIndex: BootIndexLoad = { records: [], current: false },
  ) {
    super();
    this.logger = options.logger ?? silentLogger();
    // Not fsynced: it is saved on every rotation, and what it must survive is a
    // SIGKILL (the page cache keeps it); the anchor it holds stays valid for one more
    // rotation, and recovery checks it against the files' inodes.
    this.stateFile = new JsonStateFile(join(options.dir, STATE_FILE), options.fileMode, false);
    this.spans = spans;
    this.anchor = persisted?.anchor ?? null;
    const newest = spans[0];
    this.flushed = newest ? newest.start + newest.size : (persisted?.end ?? 0);
    this.logicalEnd = this.flushed;
    this.handedEnd = this.flushed;
    this.handedFileStart = newest?.index === 0 ? newest.start : this.flushed;
    this.retryDelayMs = options.diskRetryMs;
    // A boot recorded just before a SIGKILL may point past what reached the disk:
    // it starts where the log now ends.
    let boots = persisted?.boots ?? [];
    let awaiting = persisted?.awaitingBoot ?? false;
    for (const record of bootIndex.records) {
      if ('boot' in record) {
        const last = boots[boots.length - 1];
        if (!last || record.boot > last.boot) boots = [...boots, record];
        awaiting = false;
      } else {
        // Unless a later boot is known already (the state file was saved after it,
        // and its line did not make it into the index before a crash).
        awaiting = (boots[boots.length - 1]?.boot ?? 0) <= record.afterBoot;
      }
    }
    if (boots.length > MAX_BOOT_RECORDS) boots = boots.slice(boots.length - MAX_BOOT_RECORDS);
    this.bootList = boots.map((b) => ({ ...b, offset: Math.min(b.offset, this.flushed) }));
    // A console.log written before consoled (nova, virtlogd) is adopted as boot 1.
    if (!persisted && this.flushed > 0 && this.bootList.length === 0)
      this.bootList = [{ boot: 1, offset: this.oldest, atMs: Date.now() }];
    this.awaitingBootValue = awaiting;
    this.bootIndexGeneration = persisted?.bootIndex ?? 0;
    this.bootIndexLines = bootIndex.current ? bootIndex.records.length : -1;
    this.renumberedValue = persisted?.renumbered ?? null;
  }

  /** Opens (creating or recovering) the log in `options.dir`. */
  static async open(options: LocalLogOptions): Promise<LocalLog> {
    await mkdir(dirname(options.dir), { recursive: true, mode: 0o750 });
    // rotating-file-stream follows links: the directory must be ours and no link
    // (scanLogFiles refuses links in place of the files).
    const dirIdentity = await assertPrivateDir(options.dir);
    const stateFile = new JsonStateFile<PersistedLogState>(join(options.dir, STATE_FILE));
    const persisted = await stateFile.load();
    const bootIndex = await loadBootIndex(options.dir, persisted?.bootIndex ?? 0);
    await closeLogFileGaps(options.dir); // a rotation a SIGKILL cut short
    const scanned = await scanLogFiles(options.dir, persisted?.anchor ?? null, persisted?.end ?? 0);
    const spans = await pruneLogFiles(scanned, options.maxFiles);
    const log = new LocalLog(options, persisted, spans, bootIndex);
    log.dirIdentity = dirIdentity;
    log.markerIndex = await MarkerIndex.open(options.dir, options.fileMode, log.logger);
    await log.openStream();
    // What the last run appended goes into the state file, and the index starts
    // clean (a line torn by a crash is never appended to).
    if (bootIndex.records.length > 0 || !bootIndex.current) await log.compactBoots();
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
    return this.pendingBytes + this.inflightBytes;
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
    if (this.pendingBytes >= COALESCE_BYTES) this.pump();
    else this.armCoalesce();
    return offset;
  }

  /**
   * Small appends (a serial console's trickle, a keystroke's echo) wait a few
   * milliseconds so that they leave in one write: per-write cost, not per-byte cost,
   * is what a guest printing 1 KiB chunks pays. A backlog of 64 KiB writes at once.
   */
  private armCoalesce(): void {
    if (this.coalesceTimer || this.inflightBytes > 0) return;
    this.coalesceTimer = setTimeout(() => {
      this.coalesceTimer = null;
      this.pump();
    }, COALESCE_MS);
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
    const record = { boot: this.currentBoot + 1, offset: this.logicalEnd, atMs };
    this.bootList.push(record);
    if (this.bootList.length > MAX_BOOT_RECORDS)
      this.bootList.splice(0, this.bootList.length - MAX_BOOT_RECORDS);
    this.awaitingBootValue = false;
    void this.appendBootIndex(record);
    return record;
  }

  setAwaitingBoot(value: boolean): void {
    if (this.awaitingBootValue === value) return;
    this.awaitingBootValue = value;
    if (value) void this.appendBootIndex({ awaitingBoot: true, afterBoot: this.currentBoot });
    else void this.compactBoots(); // only renumber clears it otherwise, and that compacts
  }

  /** Appends one record to the boot index (one line, not a rewrite of every record). */
  private appendBootIndex(record: BootIndexRecord): Promise<void> {
    return this.onBootIndex(async () => {
      if (this.bootIndexLines < 0 || this.bootIndexLines >= BOOT_INDEX_COMPACT_LINES) {
        // Folding the index into the state file already saves this record.
        await this.compactNow();
        return;
      }
      const handle = await open(
        join(this.options.dir, BOOT_INDEX_FILE),
        constants.O_WRONLY | constants.O_APPEND | constants.O_NOFOLLOW,
      );
      try {
        await handle.writeFile(`${JSON.stringify(record)}\n`);
      } finally {
        await handle.close();
      }
      this.bootIndexLines++;
    });
  }

  /** Saves every boot record in the state file under a new index generation, and starts that index empty. */
  compactBoots(): Promise<void> {
    return this.onBootIndex(() => this.compactNow());
  }

  private async compactNow(): Promise<void> {
    // The state file names the new generation first: a crash before the index is
    // started afresh leaves an index of the old generation, which is then ignored.
    this.bootIndexGeneration++;
    this.bootIndexLines = -1;
    await this.persist();
    const handle = await open(
      join(this.options.dir, BOOT_INDEX_FILE),
      constants.O_WRONLY | constants.O_CREAT | constants.O_TRUNC | constants.O_NOFOLLOW,
      this.options.fileMode,
    );
    try {
      await handle.writeFile(`${JSON.stringify({ generation: this.bootIndexGeneration })}\n`);
    } finally {
      await handle.close();
    }
    this.bootIndexLines = 0;
  }

  private onBootIndex(step: () => Promise<void>): Promise<void> {
    const run = this.bootIndexChain.then(step).catch((err: NodeJS.ErrnoException) => {
      // Like a failed state save: the records stay in memory and go out with the next save.
      this.bootIndexLines = -1;
      this.logger.warn({ dir: this.options.dir, err: err.code ?? err.message }, 'saving boot records failed');
    });
    this.bootIndexChain = run;
    return run;
  }

  /** The last renumbering applied (persisted), or null. */
  get lastRenumber(): { readonly from: number; readonly to: number } | null {
    return this.renumberedValue;
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
    this.flushed += delta;
    this.logicalEnd += delta;
    if (this.anchor) this.anchor = { ino: this.anchor.ino, start: this.anchor.start + delta };
    this.spans = this.spans.map((s) => ({ ...s, start: s.start + delta }));
    this.bootList = boots.map((b) => ({ ...b }));
    this.awaitingBootValue = false;
    this.renumberedValue = { from, to };
    await this.compactBoots(); // saves the state; index lines in the old numbering become stale
    await this.markerIndex?.shift(delta);
    this.emit('renumbered', { from, to });
    if (delta > 0) this.emit('flushed', this.flushed);
  }

  // LogView ------------------------------------------------------------------

  async bounds(): Promise<LogBounds> {
    this.assertDirUnchanged(); // a read through a swapped directory is refused before it starts
    return { oldest: this.oldest, next: this.flushed };
  }

  async bootStarts(): Promise<readonly BootStart[]> {
    return this.bootList;
  }

  /** Reads `[start, end)`, which must lie within `[oldest, flushedEnd)`. */
  async read(start: number, end: number): Promise<Buffer> {
    const out = Buffer.allocUnsafe(Math.max(0, end - start));
    let pos = start;
    for (let misses = 0; pos < end; ) {
      const got = await this.readPiece(pos, end, out, start);
      if (got > 0) {
        pos += got;
        misses = 0;
        continue;
      }
      // A rotation renamed the files under us: wait for the new layout and read on from
      // `pos`. Only the piece that moved is read again, so a read spanning many files
      // completes even while a fast guest rotates the log every few milliseconds.
      if (++misses > 5) throw new Error(`log files changed during read of [${start}, ${end})`);
      if (this.rotating) await this.rotating;
      else await new Promise((r) => setTimeout(r, 5));
    }
    return out;
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
    const st = await lstat(dir).catch(() => null);
    if (st === null) return null;
    checkPrivateDir(dir, st);
    const dirIdentity = { dev: st.dev, ino: st.ino };
    const stateFile = new JsonStateFile<PersistedLogState>(join(dir, STATE_FILE));
    const persisted = await stateFile.load();
    const bootIndex = await loadBootIndex(dir, persisted?.bootIndex ?? 0);
    const spans = await scanLogFiles(dir, persisted?.anchor ?? null, persisted?.end ?? 0);
    if (spans.length === 0 && !persisted) return null;
    const log = new LocalLog({ ...options, dir }, persisted, spans, bootIndex);
    log.dirIdentity = dirIdentity;
    log.markerIndex = await MarkerIndex.open(dir, options.fileMode, log.logger);
    log.stateValue = 'closed';
    return log;
  }

  /** Resolves when everything appended so far is in the files (or the disk keeps failing past the deadline). */
  async flush(timeoutMs = 10_000): Promise<boolean> {
    const target = this.logicalEnd;
    if (this.flushed >= target) return true;
    this.pump();
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
    if (this.coalesceTimer) clearTimeout(this.coalesceTimer);
    this.coalesceTimer = null;
    const stream = this.stream;
    this.stream = null;
    if (stream && !stream.destroyed) {
      stream.end();
      await once(stream, 'finish').catch(() => undefined);
    }
    await this.compactBoots(); // saves the state with every boot record
    await this.markerIndex?.close();
    this.stateValue = 'closed';
    this.emit('closed');
    return { lostBytes };
  }

  // Internals ----------------------------------------------------------------

  private async openStream(): Promise<void> {
    this.assertDirUnchanged(); // a recovery must not create files through a swapped directory
    const stream = createStream(LOG_FILE_NAME, {
      path: this.options.dir,
      size: `${this.options.maxFileBytes}B`,
      // Classical logrotate naming: console.log.1 … console.log.N, newest first.
      rotate: Math.max(1, this.options.maxFiles - 1),
      mode: this.options.fileMode,
    });
    // The stream renames and opens files by path, following links. Before a rotation's
    // renames, the directory must still be the one checked at open; after every open
    // (first listener: before anything is written), the descriptor must be the file the
    // path names. A refusal is thrown back into the stream, which fails the write.
    stream.on('rotation', () => this.assertDirUnchanged());
    stream.on('open', () => {
      this.assertDirUnchanged();
      const handle = (stream as unknown as { file?: FileHandle }).file;
      if (handle) assertOpenedFile(handle.fd, join(this.options.dir, LOG_FILE_NAME));
      writeWholeChunks(stream);
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
    // Every later 'open' is a rotation's: rotating-file-stream has shifted the files
    // and opened a new console.log before it takes the next chunk.
    stream.on('open', () => this.onRotated(stream));
    this.stateValue = 'open';
    this.retryDelayMs = this.options.diskRetryMs;
    this.pump();
  }

  /** Re-reads the files after a (re)open and saves the anchor. */
  private async refreshLayout(): Promise<void> {
    const current = await lstat(join(this.options.dir, LOG_FILE_NAME));
    const start = this.flushed - current.size;
    this.anchor = { ino: current.ino, start };
    this.handedEnd = this.flushed;
    this.handedFileStart = start;
    this.spans = await scanLogFiles(this.options.dir, this.anchor, this.flushed);
    await this.persist();
  }

  /**
   * A rotation: shift our spans as rotating-file-stream shifted the files
   * (console.log → .1, …, the last one dropped) without rescanning the directory.
   * Chunks are cut at file boundaries, so the old file ended exactly at its start
   * plus `maxFileBytes`. The inode is read synchronously (the file was just opened,
   * its metadata is in memory) so it is known before the next chunk lands.
   * No chunk for the new file is handed over until the new anchor is saved, so the
   * anchor on disk is never more than one rotation old and always names a kept file.
   */
  private onRotated(stream: RotatingFileStream): void {
    if (stream !== this.stream) return;
    const current = statSync(join(this.options.dir, LOG_FILE_NAME));
    const previous = this.spans[0];
    const start = previous ? previous.start + this.options.maxFileBytes : this.flushed;
    const shifted = this.spans
      .filter((s) => s.index + 1 < Math.max(2, this.options.maxFiles))
      .map((s) => ({
        ...s,
        index: s.index + 1,
        path: join(this.options.dir, logFileName(s.index + 1)),
        size: s.index === 0 ? this.options.maxFileBytes : s.size,
      }));
    this.anchor = { ino: current.ino, start };
    this.spans = [
      { index: 0, path: join(this.options.dir, LOG_FILE_NAME), ino: current.ino, start, size: 0 },
      ...shifted,
    ];
    this.counters.rotations++;
    void this.persist().finally(() => {
      this.rotating = null;
      const end = this.endRotation;
      this.endRotation = null;
      end?.();
      this.emit('rotated');
      this.pump();
    });
  }

  /**
   * Hands queued bytes to the file stream: several chunks may be in flight within
   * one file (the stream writes them back to back), cut exactly at file boundaries.
   */
  private pump(): void {
    const stream = this.stream;
    if (!stream || this.rotating) return;
    if (this.stateValue !== 'open' && this.stateValue !== 'closing') return;
    const { maxFileBytes, maxWriteBytes } = this.options;
    while (this.pendingBytes > 0 && this.inflightBytes < MAX_INFLIGHT_BYTES && !this.rotating) {
      const boundary = this.handedFileStart + maxFileBytes;
      const room = boundary - this.handedEnd;
      const size = Math.min(this.pendingBytes, maxWriteBytes, room > 0 ? room : maxWriteBytes);
      const chunk = this.takePending(size);
      this.inflight.push(chunk);
      this.inflightBytes += size;
      this.handedEnd += size;
      if (this.handedEnd >= boundary) {
        // This chunk fills the file: the stream rotates after writing it. Hold the
        // next chunks until the rotation is accounted for.
        this.handedFileStart = this.handedEnd;
        this.rotating = new Promise((resolve) => {
          this.endRotation = resolve;
        });
      }
      stream.write(chunk, (err) => this.onWritten(stream, chunk, err ?? null));
    }
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

  private onWritten(stream: RotatingFileStream, chunk: Buffer, err: Error | null): void {
    if (stream !== this.stream) return; // a failed stream's late callbacks: already requeued
    if (err) {
      this.onStreamError(stream, err as NodeJS.ErrnoException);
      return;
    }
    this.inflight.shift();
    this.inflightBytes -= chunk.length;
    this.flushed += chunk.length;
    this.counters.bytesWritten += chunk.length;
    const head = this.spans[0];
    if (head) this.spans[0] = { ...head, size: Math.max(0, this.flushed - head.start) };
    this.emit('flushed', this.flushed);
    this.pump();
  }

  private onStreamError(stream: RotatingFileStream | null, err: NodeJS.ErrnoException): void {
    if (this.stateValue === 'closed') return;
    if (stream && stream !== this.stream && this.stream !== null) return; // an old stream's late error
    this.counters.diskErrors++;
    this.lastDiskError = err.code ?? err.message;
    if (this.stateValue !== 'disk-error') {
      this.logger.warn(
        { dir: this.options.dir, err: this.lastDiskError },
        'local log write failed; queueing and retrying',
      );
      this.stateValue = 'disk-error';
      this.emit('disk-error', this.lastDiskError);
    }
    // Whatever was in flight goes back to the front of the queue, in order; the
    // recovery cuts the file back to what was acknowledged, so nothing is doubled.
    if (this.inflight.length > 0) {
      this.pending.unshift(...this.inflight.splice(0));
      this.pendingBytes += this.inflightBytes;
      this.inflightBytes = 0;
    }
    this.handedEnd = this.flushed;
    this.rotating = null;
    const end = this.endRotation;
    this.endRotation = null;
    end?.();
    this.stream = null;
    if (stream && !stream.destroyed) stream.destroy();
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
        const handle = await openNoFollow(newest.path, true);
        try {
          await handle.truncate(this.flushed - newest.start);
        } finally {
          await handle.close();
        }
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

  /**
   * Reads from `pos` up to `end` or the end of the file holding `pos`, into `out` (which
   * starts at offset `base`). Returns the bytes read, or 0 when the layout changed under us.
   */
  private async readPiece(pos: number, end: number, out: Buffer, base: number): Promise<number> {
    const span = this.spans.find((s) => s.start <= pos && pos < s.start + s.size);
    if (!span) return 0;
    this.assertDirUnchanged();
    // Rotation only moves a file up (console.log → .1 → .2 …) and keeps its inode: when
    // the file is no longer where the spans say, it is a few places higher.
    const candidates =
      span.ino === -1
        ? [span.path]
        : [0, 1, 2, 3].map((k) => join(this.options.dir, logFileName(span.index + k)));
    for (const path of candidates) {
      const handle = await openNoFollow(path).catch(() => null);
      if (!handle) continue;
      try {
        if (span.ino !== -1 && (await handle.stat()).ino !== span.ino) continue;
        const want = Math.min(end, span.start + span.size) - pos;
        const { bytesRead } = await handle.read(out, pos - base, want, pos - span.start);
        return bytesRead === want ? want : 0;
      } finally {
        await handle.close();
      }
    }
    return 0;
  }

  private assertDirUnchanged(): void {
    if (this.dirIdentity) assertSameDir(this.options.dir, this.dirIdentity);
  }

  private persist(): Promise<void> {
    const value: PersistedLogState = {
      version: 1,
      anchor: this.anchor,
      end: this.flushed,
      boots: this.bootList,
      awaitingBoot: this.awaitingBootValue,
      ...(this.renumberedValue ? { renumbered: this.renumberedValue } : {}),
      bootIndex: this.bootIndexGeneration,
    };
    return this.stateFile.save(value).catch((err: NodeJS.ErrnoException) => {
      // The state file is small; failing to save it (disk full) only costs the boot
      // records written since the last save. The log itself keeps going.
      this.logger.warn({ dir: this.options.dir, err: err.code ?? err.message }, 'saving log state failed');
    });
  }
}
