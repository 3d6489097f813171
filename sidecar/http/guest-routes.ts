import type { z } from 'zod';
import { ConsoledError } from '../../common/errors.js';
import { assertGuestId } from '../../common/guest-id.js';
import { guestSpecSchema } from '../config.js';
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
      const spec = parseGuestSpec(await ctx.json());
      const { guest, created } = await registry.attach(id, spec);
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
