import type { z } from 'zod';
import { ConsoledError } from '../../common/errors.js';
import { assertGuestId } from '../../common/guest-id.js';
import { guestSpecSchema } from '../config.js';
import type { Guest } from '../guest.js';
import type { GuestRegistry } from '../guests/guest-registry.js';
import type { Router } from './router.js';

function describeIssues(issues: z.core.$ZodIssue[]): string {
  return issues.map((i) => `${i.path.length ? i.path.join('.') : 'body'}: ${i.message}`).join('; ');
}

/** Validates a `PUT /v1/guests/{id}` body. */
export function parseGuestSpec(body: unknown) {
  const result = guestSpecSchema.safeParse(body);
  if (result.success) return result.data;
  const sourceIssue = result.error.issues.some((i) => i.path[0] === 'source');
  throw new ConsoledError(sourceIssue ? 'BAD_SOURCE' : 'BAD_REQUEST', describeIssues(result.error.issues));
}

/** Longest `waitConnectedMs` a `PUT` may ask for. */
export const MAX_WAIT_CONNECTED_MS = 30_000;

/** `?waitConnectedMs=N` of a `PUT`: 0 (do not wait) when absent. */
function waitConnectedParam(url: URL): number {
  const raw = url.searchParams.get('waitConnectedMs');
  if (raw === null) return 0;
  const ms = /^\d{1,6}$/.test(raw) ? Number(raw) : Number.NaN;
  if (!(ms <= MAX_WAIT_CONNECTED_MS))
    throw new ConsoledError(
      'BAD_PARAMETER',
      `waitConnectedMs must be an integer from 0 to ${MAX_WAIT_CONNECTED_MS}`,
    );
  return ms;
}

/**
 * Resolves once the guest's source is connected (or stopped), after `ms` at most, or
 * when the request goes away: an attach that returns then loses none of the guest's
 * first bytes (the libvirt hook asks for it; README "libvirt").
 */
function untilConnected(guest: Guest, ms: number, signal: AbortSignal): Promise<void> {
  const { source } = guest;
  if (ms === 0 || source.state === 'connected' || source.stopped) return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      source.off('state', onState);
      signal.removeEventListener('abort', done);
      resolve();
    };
    const onState = ({ to }: { to: string }) => {
      if (to === 'connected' || to === 'stopped') done();
    };
    const timer = setTimeout(done, ms);
    source.on('state', onState);
    signal.addEventListener('abort', done, { once: true });
  });
}

/** The guest lifecycle calls of the HTTP API (README "HTTP API", docs/openapi.yaml). */
export function addGuestRoutes(router: Router, registry: GuestRegistry): void {
  const guestOr404 = (raw: string | undefined) => {
    const id = assertGuestId(raw);
    const guest = registry.get(id);
    if (!guest) throw new ConsoledError('GUEST_NOT_FOUND', `guest ${id} is not attached here`);
    return guest;
  };

  router.add(
    'GET',
    '/v1/guests',
    async () => ({
      status: 200,
      body: { guests: await Promise.all(registry.list().map((g) => g.checkedStatus())) },
    }),
    {
      auth: 'admin',
    },
  );

  router.add(
    'PUT',
    '/v1/guests/:id',
    async (ctx) => {
      const id = assertGuestId(ctx.params['id']);
      const waitMs = waitConnectedParam(ctx.url);
      const spec = parseGuestSpec(await ctx.json());
      const { guest, created } = await registry.attach(id, spec);
      await untilConnected(guest, waitMs, ctx.signal);
      return { status: created ? 201 : 200, body: guest.status() };
    },
    { auth: 'admin' },
  );

  router.add(
    'GET',
    '/v1/guests/:id',
    async (ctx) => ({ status: 200, body: await guestOr404(ctx.params['id']).checkedStatus() }),
    { auth: 'admin' },
  );

  router.add(
    'DELETE',
    '/v1/guests/:id',
    async (ctx) => {
      const id = assertGuestId(ctx.params['id']);
      const guest = registry.get(id);
      await registry.detach(id);
      return { status: 200, body: { id, detached: true, offset: guest?.log.end ?? null } };
    },
    { auth: 'admin' },
  );

  router.add(
    'POST',
    '/v1/guests/:id/boots',
    (ctx) => {
      const guest = guestOr404(ctx.params['id']);
      const boot = guest.capture.startBoot();
      return {
        status: 201,
        body: { id: guest.id, boot: boot.boot, offset: boot.offset, at: new Date(boot.atMs).toISOString() },
      };
    },
    { auth: 'admin' },
  );
}
