import { ConsoledError } from '../common/errors.js';
import type { BootStart, LogView } from './log-view.js';

/** nova's MAX_CONSOLE_BYTES: what `GET …/log` returns when nothing else is asked. */
export const DEFAULT_TAIL_BYTES = 102_400;
const LINE_SCAN_CHUNK = 64 * 1024;

export type BootSelector = 'all' | 'current' | 'previous' | number;

/**
 * A log request, typed. `GET /v1/guests/{id}/log` and `consolectl logs` parse it from
 * their query strings at the edge (`sidecar/http/log-query-params.ts`).
 */
export interface LogQuery {
  /** Absolute offset; negative means the last |start| bytes. */
  readonly start?: number;
  readonly limit?: number;
  readonly tail?: number;
  readonly lines?: number;
  readonly boot: BootSelector;
  readonly follow: boolean;
}

/** The range a query resolves to: bytes `[start, end)`; `end` is where to ask next. */
export interface ResolvedRange {
  readonly start: number;
  readonly end: number;
}

/** The span `[start, end)` a boot covers, clamped to what is kept; null when no such boot. */
export function bootSpan(
  boots: readonly BootStart[],
  selector: BootSelector,
  bounds: { oldest: number; next: number },
): ResolvedRange | null {
  if (selector === 'all') return { start: bounds.oldest, end: bounds.next };
  if (boots.length === 0) {
    // A log older than boot tracking (an adopted console.log) is one boot.
    return selector === 'current' || selector === 1 ? { start: bounds.oldest, end: bounds.next } : null;
  }
  let index: number;
  if (selector === 'current') index = boots.length - 1;
  else if (selector === 'previous') index = boots.length - 2;
  else index = boots.findIndex((b) => b.boot === selector);
  const boot = boots[index];
  if (index < 0 || !boot) return null;
  const next = boots[index + 1];
  const start = Math.max(boot.offset, bounds.oldest);
  const end = Math.min(next ? next.offset : bounds.next, bounds.next);
  if (end < bounds.oldest) return null; // rotated away entirely
  return { start: Math.min(start, end), end };
}

/** Finds where the last `count` lines of `[from, to)` begin, reading backwards in chunks. */
export async function lastLinesStart(
  view: LogView,
  from: number,
  to: number,
  count: number,
): Promise<number> {
  if (count === 0) return to;
  let remaining = count;
  let pos = to;
  // A newline that ends the range closes the last line; it does not start another.
  let skipTrailing = true;
  while (pos > from) {
    const chunkStart = Math.max(from, pos - LINE_SCAN_CHUNK);
    const chunk = await view.read(chunkStart, pos);
    for (let i = chunk.length - 1; i >= 0; i--) {
      if (skipTrailing) {
        skipTrailing = false;
        if (chunkStart + i === to - 1 && chunk[i] === 0x0a) continue;
      }
      if (chunk[i] === 0x0a) {
        remaining--;
        if (remaining === 0) return chunkStart + i + 1;
      }
    }
    pos = chunkStart;
  }
  return from;
}

/** Resolves a query to the exact range to serve. */
export async function resolveLogRange(view: LogView, query: LogQuery): Promise<ResolvedRange> {
  const bounds = await view.bounds();
  const boots = await view.bootStarts();
  const span = bootSpan(boots, query.boot, bounds);
  if (!span) throw new ConsoledError('RANGE_NOT_AVAILABLE', `boot ${String(query.boot)} is not held`);
  let start: number;
  if (query.start !== undefined) {
    start = query.start >= 0 ? query.start : span.end + query.start;
  } else if (query.lines !== undefined) {
    start = await lastLinesStart(view, span.start, span.end, query.lines);
  } else {
    start = span.end - (query.tail ?? DEFAULT_TAIL_BYTES);
  }
  start = Math.min(Math.max(start, span.start), span.end);
  const end = query.limit !== undefined ? Math.min(span.end, start + query.limit) : span.end;
  return { start, end };
}
