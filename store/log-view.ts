import type { MarkerRecord } from './marker-index.js';

/** Where a boot starts in a guest's log. Boot 1 starts at offset 0. */
export interface BootStart {
  readonly boot: number;
  readonly offset: number;
  readonly atMs: number;
}

/** The readable span of a log: `[oldest, next)`. */
export interface LogBounds {
  readonly oldest: number;
  readonly next: number;
}

/**
 * What a log reader needs from a log, wherever it is kept: the local files or the
 * shared Redis stream. Reads must cost what they return, never the size of the history.
 */
export interface LogView {
  bounds(): Promise<LogBounds>;
  bootStarts(): Promise<readonly BootStart[]>;
  /** Bytes `[start, end)`, a range within the bounds. */
  read(start: number, end: number): Promise<Buffer>;
  /** Resolves when the byte at offset `after` is readable, the log ends for good, or `signal` aborts. */
  waitForData(after: number, signal: AbortSignal): Promise<void>;
  /** consoled's own markers that start in `[start, end)` (docs/design.md "Markers"). */
  markers(start: number, end: number): Promise<MarkerRecord[]>;
}

/**
 * Which log a read asks for (the `scope` query parameter): this host's files, the
 * shared stream, or whichever holds the guest's latest bytes.
 */
export type LogScope = 'local' | 'cluster' | 'auto';

/** A log to read, and where it is kept. */
export interface ResolvedLogView {
  readonly view: LogView;
  readonly scope: 'local' | 'cluster';
}

/** Finds the log a read should use; throws GUEST_NOT_FOUND or REPLICATION_UNAVAILABLE. */
export type LogViewResolver = (guestId: string, scope: LogScope) => Promise<ResolvedLogView>;
