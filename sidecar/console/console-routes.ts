import { z } from 'zod';
import { ConsoledError } from '../../common/errors.js';
import { assertGuestId } from '../../common/guest-id.js';
import { bearerToken } from '../http/admin-token.js';
import type { TrustedProxies } from '../http/forwarded.js';
import type { Handler, RequestContext, Router } from '../http/router.js';
import type { AuditLog } from './audit-log.js';
import type { ConsoleAuth } from './console-auth.js';
import { isAllowedHost } from './origin-check.js';
import {
  CONSOLE_ASSET_HEADERS,
  CONSOLE_ASSET_PREFIX,
  CONSOLE_PAGE_HEADERS,
  consolePageAssets,
  renderConsolePage,
} from './page-assets.js';
import { parseTtl, TOKEN_ID_PATTERN } from './viewer-token.js';

/** `POST /v1/guests/{id}/tokens` body. */
const tokenRequestSchema = z
  .object({
    mode: z.enum(['ro', 'rw']),
    /** `10m`, `90s`, `1h` …, or milliseconds as a number. */
    ttl: z.union([z.string(), z.number()]),
    singleUse: z.boolean().optional(),
    name: z.string().optional(),
    /** Renewable in band for this long (`12h`, or milliseconds), at most `console.maxSessionTtlMs`. */
    renewableFor: z.union([z.string(), z.number()]).optional(),
  })
  .strict();

/** What `DELETE /v1/tokens/{jti}` answers (console-service.ts). */
export interface RevocationAnswer {
  readonly revoked: string;
  readonly until: string;
  /** Live sessions this host ended. */
  readonly endedSessions: number;
  /** Recorded in Redis and announced to the other hosts. */
  readonly shared: boolean;
}

/**
 * The console's HTTP routes: the page and its assets, the log download for a viewer
 * token, and token issuing and revocation for the admin. `logHandler` is the
 * `GET /v1/guests/{id}/log` handler, reused as is behind viewer-token auth.
 */
export function addConsoleRoutes(
  router: Router,
  deps: {
    auth: ConsoleAuth;
    audit: AuditLog;
    logHandler: Handler;
    proxies: TrustedProxies;
    allowedHosts: readonly string[];
    /** Revokes a token or chain id (README "Tokens"). */
    revoke: (id: string) => Promise<RevocationAnswer>;
  },
): void {
  const { auth, audit } = deps;

  router.add(
    'POST',
    '/v1/guests/:id/tokens',
    async (ctx) => {
      const guest = assertGuestId(ctx.params['id']);
      const parsed = tokenRequestSchema.safeParse(await ctx.json());
      if (!parsed.success) {
        throw new ConsoledError(
          'BAD_REQUEST',
          parsed.error.issues.map((i) => `${i.path.join('.') || 'body'}: ${i.message}`).join('; '),
        );
      }
      const body = parsed.data;
      const ttlMs = parseTtl(body.ttl);
      const renewableForMs = body.renewableFor === undefined ? undefined : parseTtl(body.renewableFor);
      const issued = auth.issue({
        guest,
        mode: body.mode,
        ttlMs,
        singleUse: body.singleUse ?? false,
        name: body.name,
        renewableForMs,
      });
      audit.tokenIssued({
        guest,
        jti: issued.id,
        mode: body.mode,
        ttlMs,
        singleUse: body.singleUse ?? false,
        name: body.name,
        renewableForMs,
        by: 'admin',
      });
      return {
        status: 201,
        body: {
          token: issued.token,
          id: issued.id,
          expiresAt: issued.expiresAt,
          ...(issued.renewableUntil !== undefined ? { renewableUntil: issued.renewableUntil } : {}),
          guest,
          mode: body.mode,
          singleUse: body.singleUse ?? false,
        },
      };
    },
    { auth: 'admin' },
  );

  router.add(
    'DELETE',
    '/v1/tokens/:jti',
    async (ctx) => {
      const id = ctx.params['jti'] ?? '';
      if (!TOKEN_ID_PATTERN.test(id))
        throw new ConsoledError('BAD_PARAMETER', 'a token id is 1-64 base64url characters (the jti)');
      return { status: 200, body: await deps.revoke(id) };
    },
    { auth: 'admin' },
  );

  // Before `/console/:id` and the assets, so that a guest named `assets` still has a log.
  router.add(
    'GET',
    '/console/:id/log',
    (ctx: RequestContext) => {
      const guest = assertGuestId(ctx.params['id']);
      if (!auth.requireAuth && !isAllowedHost(deps.proxies.client(ctx.req).host, deps.allowedHosts)) {
        throw new ConsoledError(
          'FORBIDDEN',
          'without console auth only localhost, 127.0.0.1, [::1] or console.allowedHosts may be the Host',
        );
      }
      auth.verifyForRead(bearerToken(ctx.req.headers.authorization), guest);
      return deps.logHandler(ctx);
    },
    { auth: 'none' },
  );

  router.add(
    'GET',
    `${CONSOLE_ASSET_PREFIX}:file`,
    (ctx) => {
      const asset = consolePageAssets().get(ctx.url.pathname);
      if (!asset) throw new ConsoledError('NOT_FOUND', `no asset ${ctx.url.pathname}`);
      ctx.res.writeHead(200, {
        ...CONSOLE_ASSET_HEADERS,
        'Content-Type': asset.contentType,
        'Content-Length': String(asset.body.length),
      });
      ctx.res.end(ctx.req.method === 'HEAD' ? undefined : asset.body);
      return undefined;
    },
    { auth: 'none' },
  );

  router.add(
    'GET',
    '/console/:id',
    (ctx) => {
      const guest = assertGuestId(ctx.params['id']);
      const html = renderConsolePage(guest);
      ctx.res.writeHead(200, { ...CONSOLE_PAGE_HEADERS, 'Content-Length': String(Buffer.byteLength(html)) });
      ctx.res.end(ctx.req.method === 'HEAD' ? undefined : html);
      return undefined;
    },
    { auth: 'none' },
  );
}
