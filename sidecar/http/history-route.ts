/**
 * `DELETE /v1/guests/{id}/history?scope=local|cluster|all` (admin): deletes what a
 * guest left behind (docs/design.md "Retention"). `local`: the guest's directory on
 * this host (logs, `archive/`, `spool/`, state files). `cluster`: the guest's Redis
 * stream and its keys, refused (`STREAM_OWNED`) while a host owns the stream. `all`:
 * the stream first, then the directory; a refused stream leaves the directory too.
 * Refused (`GUEST_ATTACHED`) while the guest is attached here. Every purge, and every
 * refusal, is an audit line.
 */
import type { Logger } from 'pino';
import { asConsoledError, ConsoledError } from '../../common/errors.js';
import { assertGuestId } from '../../common/guest-id.js';
import { type RemovedDir, removeGuestDir } from '../../store/guest-dir-removal.js';
import { guestDir } from '../guest.js';
import type { GuestRegistry } from '../guests/guest-registry.js';
import type { RequestContext } from './router.js';

export type PurgeScope = 'local' | 'cluster' | 'all';

/** The part of replication a purge needs (sidecar/replication/replication-service.ts). */
export interface StreamPurger {
  purgeStream(id: string): Promise<{ deletedKeys: number; epoch: number }>;
}

export interface HistoryRouteDeps {
  readonly registry: GuestRegistry;
  readonly stateDir: string;
  /** Null when no Redis is configured (a `cluster` purge is then refused). */
  readonly streams: () => StreamPurger | null;
  readonly logger: Logger;
}

/** What a purge removed, as the API answers it. */
export interface PurgeResult {
  id: string;
  scope: PurgeScope;
  local: RemovedDir | null;
  cluster: { removed: boolean; deletedKeys: number; epoch: number } | null;
}

function parsePurgeScope(raw: string | null): PurgeScope {
  if (raw === 'local' || raw === 'cluster' || raw === 'all') return raw;
  throw new ConsoledError(
    'BAD_PARAMETER',
    raw === null ? 'scope is required: local, cluster or all' : 'scope must be local, cluster or all',
  );
}

/** Purges a detached guest's history in `scope` (the work of the route, without HTTP). */
export function purgeHistory(deps: HistoryRouteDeps, id: string, scope: PurgeScope): Promise<PurgeResult> {
  const streams = scope === 'local' ? null : deps.streams();
  if (scope !== 'local' && !streams)
    throw new ConsoledError('REPLICATION_UNAVAILABLE', 'no Redis is configured on this host');
  return deps.registry.whileDetached(id, async () => {
    const result: PurgeResult = { id, scope, local: null, cluster: null };
    if (streams) {
      const { deletedKeys, epoch } = await streams.purgeStream(id);
      result.cluster = { removed: deletedKeys > 0, deletedKeys, epoch };
    }
    if (scope !== 'cluster') result.local = await removeGuestDir(guestDir(deps.stateDir, id));
    return result;
  });
}

export function historyRoute(deps: HistoryRouteDeps) {
  const audit = deps.logger.child({ component: 'audit' });
  return async (ctx: RequestContext) => {
    const id = assertGuestId(ctx.params['id']);
    const scope = parsePurgeScope(ctx.url.searchParams.get('scope'));
    const remote = ctx.req.socket.remoteAddress ?? null;
    try {
      const result = await purgeHistory(deps, id, scope);
      audit.info({ event: 'history.purge', guest: id, remote, ...result }, 'guest history purged');
      return { status: 200, body: result };
    } catch (err) {
      const e = asConsoledError(err);
      audit.warn(
        { event: 'history.purge-refused', guest: id, scope, remote, code: e.code, reason: e.message },
        'guest history purge refused',
      );
      throw e;
    }
  };
}
