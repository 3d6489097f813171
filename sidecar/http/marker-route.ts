import { ConsoledError } from '../../common/errors.js';
import { assertGuestId } from '../../common/guest-id.js';
import type { LogViewResolver } from '../../store/log-view.js';
import { parseScope } from './log-query-params.js';
import type { RequestContext } from './router.js';

function offsetParam(params: URLSearchParams, name: string): number | null {
  const raw = params.get(name);
  if (raw === null) return null;
  const value = Number(raw);
  if (!/^\d+$/.test(raw) || !Number.isSafeInteger(value))
    throw new ConsoledError('BAD_PARAMETER', `${name} must be a non-negative integer offset`);
  return value;
}

/**
 * `GET /v1/guests/{id}/markers?start=&end=&scope=`: where consoled's own markers sit
 * in the log (docs/design.md "Markers"), from the same log a read of that scope uses.
 * Guest output that merely looks like a marker is not listed.
 */
export function markersRoute(resolve: LogViewResolver) {
  return async (ctx: RequestContext) => {
    const id = assertGuestId(ctx.params['id']);
    const params = ctx.url.searchParams;
    const start = offsetParam(params, 'start') ?? 0;
    const end = offsetParam(params, 'end');
    if (end !== null && end < start)
      throw new ConsoledError('BAD_PARAMETER', `end ${end} is before start ${start}`);
    const { view, scope } = await resolve(id, parseScope(params.get('scope')));
    const markers = await view.markers(start, end ?? Number.POSITIVE_INFINITY);
    return {
      status: 200,
      body: {
        id,
        scope,
        start,
        end,
        markers: markers.map((m) => ({ offset: m.offset, length: m.length, kind: m.kind })),
      },
    };
  };
}
