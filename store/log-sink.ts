import type { BootStart } from './log-view.js';
import type { MarkerKind } from './marker-index.js';

/**
 * Where a log stands: `open` (writing), `disk-error` (writes failing, bytes wait in
 * the queue while recovery retries), `closing` (flushing for close), `closed`.
 */
export type LogState = 'open' | 'disk-error' | 'closing' | 'closed';

/** What a log emits, with each event's arguments. */
export interface LogEvents {
  /** Bytes reached the files: every offset below `end` is readable. */
  flushed: [end: number];
  closed: [];
  /** Every offset moved by `to - from` (see `LocalLog.renumber`). */
  renumbered: [change: { from: number; to: number }];
  /** A new current file was started and its anchor saved. */
  rotated: [];
  /** Writes began to fail; `code` is the error's code (ENOSPC …) or message. */
  'disk-error': [code: string];
  /** Writes succeed again after a disk error. */
  recovered: [];
}

/**
 * What capture needs from a log to write into it (sidecar/capture/capture.ts): place bytes
 * at offsets, keep boot records and markers, and say whether there is room. Appends
 * never wait: a log that cannot take more says so through `canAccept`, and the
 * caller drops and counts. A store backend is a `LogSink` for writing and a
 * `LogView` (store/log-view.ts) for reading; `LocalLog` is both.
 */
export interface LogSink {
  readonly state: LogState;
  /**
   * Writes failed and none has landed since: the `disk-error` state, and a log reopened
   * to retry whose first write has not landed yet (a full disk fails it again).
   */
  readonly diskFailing: boolean;
  /** Offset of the next byte `append` will place. */
  readonly end: number;
  /** Bytes appended and not yet in the files. */
  readonly queuedBytes: number;
  /** The bound of `queuedBytes`. */
  readonly maxQueueBytes: number;
  readonly currentBoot: number;
  /** The guest side closed the chardev: the next attach starts a new boot. */
  readonly awaitingBoot: boolean;
  /** Whether `bytes` more fit in the queue. */
  canAccept(bytes: number): boolean;
  /** Queues bytes at the end of the log and returns the offset of the first one. */
  append(bytes: Buffer): number;
  /** Appends one of consoled's markers and records it in the marker index; returns its offset. */
  appendMarker(bytes: Buffer, kind: MarkerKind): number;
  /** Records a marker already appended at `offset`. */
  noteMarker(offset: number, length: number, kind: MarkerKind): void;
  /** Records that a boot starts at the current end; the caller appends the marker next. */
  startBoot(atMs: number): BootStart;
  setAwaitingBoot(value: boolean): void;
  /** Calls `listener` each time queued bytes reach the files (the queue has room again); returns the unsubscribe. */
  watchFlushed(listener: (end: number) => void): () => void;
}
