import { ConsoledError } from '../common/errors.js';
import type { BootStart, LogView } from './log-view.js';

/** nova's MAX_CONSOLE_BYTES: what `GET …/log` returns when nothing else is asked. */
export const DEFAULT_TAIL_BYTES = 102_400;
const MAX_LINES = 1_000_000;
const LINE_SCAN_CHUNK = 64 * 1024;

export type BootSelector = 'all' | 'current' | 'previous' | number;

/** A log request, as `GET /v1/guests/{id}/log` and `consolectl logs` express it. */
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

function integer(
  params: URLSearchParams,
  name: string,
  min: number,
  max = Number.MAX_SAFE_INTEGER,
): number | undefined {
  const raw = params.get(name);
  if (raw === null) return undefined;
  if (!/^-?\d+$/.test(raw))
    throw new ConsoledError('BAD_PARAMETER', `${name} must be an integer, got ${JSON.stringify(raw)}`);
  const value = Number(raw);
  if (!Number.isSafeInteger(value) || value < min || value > max) {
    throw new ConsoledError('BAD_PARAMETER', `${name} must be between ${min} and ${max}`);
  }
  return value;
}

/** Parses and validates the query string of a log request. */
export function parseLogQuery(params: URLSearchParams): LogQuery {
  const start = integer(params, 'start', Number.MIN_SAFE_INTEGER);
  const limit = integer(params, 'limit', 0);
  const tail = integer(params, 'tail', 0);
  const lines = integer(params, 'lines', 0, MAX_LINES);
  const chosen = [start !== undefined, tail !== undefined, lines !== undefined].filter(Boolean).length;
  if (chosen > 1) throw new ConsoledError('BAD_PARAMETER', 'give at most one of start, tail and lines');
  const bootRaw = params.get('boot') ?? 'all';
  let boot: BootSelector;
  if (bootRaw === 'all' || bootRaw === 'current' || bootRaw === 'previous') boot = bootRaw;
  else if (/^\d+$/.test(bootRaw) && Number(bootRaw) >= 1) boot = Number(bootRaw);
  else throw new ConsoledError('BAD_PARAMETER', 'boot must be all, current, previous or a boot number');
  const followRaw = params.get('follow');
  if (followRaw !== null && !['0', '1', 'true', 'false'].includes(followRaw)) {
    throw new ConsoledError('BAD_PARAMETER', 'follow must be 0 or 1');
  }
  return {
    ...(start !== undefined ? { start } : {}),
    ...(limit !== undefined ? { limit } : {}),
    ...(tail !== undefined ? { tail } : {}),
    ...(lines !== undefined ? { lines } : {}),
    boot,
    follow: followRaw === '1' || followRaw === 'true',
  };
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
