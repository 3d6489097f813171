/**
 * The query strings of log reads, parsed at the edge: `GET /v1/guests/{id}/log` and
 * `GET /v1/guests/{id}/markers` (the route), and `consolectl logs --redis` (the CLI,
 * which builds the same query string). The store takes the typed `LogQuery`
 * (`store/log-query.ts`); a malformed parameter is `BAD_PARAMETER` here.
 */
import { ConsoledError } from '../../common/errors.js';
import type { BootSelector, LogQuery } from '../../store/log-query.js';
import type { LogScope } from '../../store/log-view.js';

const MAX_LINES = 1_000_000;

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

/** `scope=local|cluster|auto` (default `auto`). */
export function parseScope(raw: string | null): LogScope {
  if (raw === null) return 'auto';
  if (raw === 'local' || raw === 'cluster' || raw === 'auto') return raw;
  throw new ConsoledError('BAD_PARAMETER', 'scope must be local, cluster or auto');
}
