import type { ServerResponse } from 'node:http';
import { assertGuestId } from '../../common/guest-id.js';
import { resolveLogRange } from '../../store/log-query.js';
import type { LogView, LogViewResolver } from '../../store/log-view.js';
import { parseLogQuery, parseScope } from './log-query-params.js';
import type { RequestContext } from './router.js';

/** Body chunks of at most this size, so a large read never sits in memory whole. */
const BODY_CHUNK_BYTES = 1024 * 1024;

async function writeChunk(res: ServerResponse, chunk: Buffer, signal: AbortSignal): Promise<void> {
  if (res.write(chunk)) return;
  await new Promise<void>((resolve) => {
    const done = () => {
      res.off('drain', done);
      res.off('close', done);
      signal.removeEventListener('abort', done);
      resolve();
    };
    res.on('drain', done);
    res.on('close', done);
    signal.addEventListener('abort', done, { once: true });
  });
}

async function streamRange(
  res: ServerResponse,
  view: LogView,
  start: number,
  end: number,
  signal: AbortSignal,
): Promise<void> {
  for (let pos = start; pos < end && !signal.aborted; ) {
    const upTo = Math.min(end, pos + BODY_CHUNK_BYTES);
    await writeChunk(res, await view.read(pos, upTo), signal);
    pos = upTo;
  }
}

/**
 * `GET /v1/guests/{id}/log`: raw bytes, with `X-Consoled-Start` (the offset actually
 * served, clamped to the oldest byte kept) and `X-Consoled-Next` (where to ask next).
 * `follow=1` keeps the response open and streams bytes as they are flushed.
 */
export function logRoute(resolve: LogViewResolver) {
  return async (ctx: RequestContext): Promise<undefined> => {
    const id = assertGuestId(ctx.params['id']);
    const query = parseLogQuery(ctx.url.searchParams);
    if (query.follow && ctx.req.method !== 'HEAD') ctx.longLived();
    const { view, scope } = await resolve(id, parseScope(ctx.url.searchParams.get('scope')));
    const range = await resolveLogRange(view, query);
    ctx.res.writeHead(200, {
      'content-type': 'application/octet-stream',
      'cache-control': 'no-store',
      'x-content-type-options': 'nosniff',
      'x-consoled-start': String(range.start),
      'x-consoled-next': String(range.end),
      'x-consoled-scope': scope,
      ...(query.follow ? {} : { 'content-length': String(range.end - range.start) }),
    });
    if (ctx.req.method === 'HEAD') {
      ctx.res.end();
      return undefined;
    }
    // Node holds the headers back until the first body byte; a follower waiting for
    // output it has not got yet must see the status and offsets at once.
    if (query.follow) ctx.res.flushHeaders();
    await streamRange(ctx.res, view, range.start, range.end, ctx.signal);
    if (query.follow) {
      let pos = range.end;
      while (!ctx.signal.aborted) {
        await view.waitForData(pos, ctx.signal);
        if (ctx.signal.aborted) break;
        const { oldest, next } = await view.bounds();
        if (next <= pos) break; // the log ended for good (guest detached)
        // A reader slower than rotation skips what rotated away; the gap shows in the offsets.
        pos = Math.max(pos, oldest);
        await streamRange(ctx.res, view, pos, next, ctx.signal);
        pos = next;
      }
    }
    ctx.res.end();
    return undefined;
  };
}
