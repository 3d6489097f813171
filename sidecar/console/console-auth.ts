import { ConsoledError } from '../../common/errors.js';
import { tokenMatches } from '../http/admin-token.js';
import type { SharedUsedTokens } from './shared-used-tokens.js';
import {
  checkViewerTokenExpiry,
  decodeViewerToken,
  issueViewerToken,
  UsedTokenRegistry,
  type VerifiedViewerToken,
  type ViewerMode,
  verifyViewerToken,
} from './viewer-token.js';

/** Lifetime of the token a proxied admin connection presents to the owner. */
const ADMIN_UPSTREAM_TTL_MS = 12 * 3600_000;

/** What a presented credential grants on one guest's console. */
export interface ConsoleGrant {
  readonly mode: ViewerMode;
  readonly name: string | undefined;
  /** The token's `jti`, or `admin`. */
  readonly tokenId: string;
  /** The verified viewer token; null for the admin token. */
  readonly token: VerifiedViewerToken | null;
}

/** A freshly issued token and what the API answers about it. */
export interface IssuedToken {
  readonly token: string;
  readonly id: string;
  readonly expiresAt: string;
  readonly expiresAtMs: number;
}

/** Reads the claims of a token this process just signed (no verification needed). */
function claimsOf(token: string): { jti: string; exp: number } {
  const payload = token.slice(0, token.indexOf('.'));
  return JSON.parse(Buffer.from(payload, 'base64url').toString('utf8')) as { jti: string; exp: number };
}

/**
 * Credentials for the console: viewer tokens (viewer-token.ts) signed with this
 * host's secret, and the admin token, which grants `rw` on every guest. Single-use
 * tokens are remembered in one bounded registry for the whole daemon.
 */
export class ConsoleAuth {
  readonly usedTokens: UsedTokenRegistry;
  /** Spent ids shared through Redis (set once replication is up); null without Redis. */
  sharedUsedTokens: SharedUsedTokens | null = null;

  /**
   * `usedTokens`: the registry single-use ids are spent in (persisted by
   * used-token-journal.ts in the daemon); a fresh in-memory one when absent.
   */
  constructor(
    private readonly secret: Buffer,
    private readonly adminToken: string,
    options: {
      maxUsedTokens: number;
      maxTokenTtlMs: number;
      requireAuth: boolean;
      usedTokens?: UsedTokenRegistry;
    },
  ) {
    this.usedTokens = options.usedTokens ?? new UsedTokenRegistry({ maxEntries: options.maxUsedTokens });
    this.maxTokenTtlMs = options.maxTokenTtlMs;
    this.requireAuth = options.requireAuth;
  }

  private readonly maxTokenTtlMs: number;
  /** False: connections without a token are admitted (console.requireAuth). */
  readonly requireAuth: boolean;

  /**
   * Checks a credential for a console connection to `guest`; throws UNAUTHORIZED
   * (none), TOKEN_INVALID, TOKEN_EXPIRED, TOKEN_WRONG_GUEST, TOKEN_WRONG_MODE or
   * TOKEN_REUSED. A single-use token is spent here.
   */
  verify(token: string | null | undefined, guest: string, wantMode: ViewerMode | undefined): ConsoleGrant {
    if (token === null || token === undefined || token === '') {
      if (!this.requireAuth)
        return { mode: wantMode ?? 'rw', name: 'anonymous', tokenId: 'anonymous', token: null };
      throw new ConsoledError(
        'UNAUTHORIZED',
        'a viewer token is needed: Authorization: Bearer <token> or {"type":"auth","token":...}',
      );
    }
    if (tokenMatches(token, this.adminToken))
      return { mode: wantMode ?? 'rw', name: 'admin', tokenId: 'admin', token: null };
    const verified = verifyViewerToken(this.secret, token, { guest, wantMode, usedTokens: this.usedTokens });
    return { mode: verified.mode, name: verified.name, tokenId: verified.jti, token: verified };
  }

  /**
   * Spends a single-use token in Redis too, once {@link verify} spent it here: throws
   * TOKEN_REUSED when another host (or this one, before it lost its state) spent it
   * already. Returns false when Redis could not be asked: the local record stands.
   */
  async spendShared(grant: ConsoleGrant): Promise<boolean> {
    const t = grant.token;
    const shared = this.sharedUsedTokens;
    if (!t?.singleUse || shared === null) return true;
    const ttlMs = t.expiresAtMs - Date.now();
    if (ttlMs <= 0) return true;
    let first: boolean;
    try {
      first = await shared.claim(t.guest, t.jti, ttlMs);
    } catch {
      return false;
    }
    if (!first)
      throw new ConsoledError('TOKEN_REUSED', 'the single-use token was already used on this cluster');
    return true;
  }

  /**
   * Whether `token` is a valid viewer token of this host, for any guest: returns when
   * it is, throws TOKEN_INVALID or TOKEN_EXPIRED when not. The admin API uses it to
   * tell a viewer token (403) from a wrong one (401).
   */
  checkViewerToken(token: string): void {
    checkViewerTokenExpiry(decodeViewerToken(this.secret, token));
  }

  /**
   * Checks a credential for reading `guest`'s log (`GET /console/{id}/log`). A
   * single-use token is accepted while unspent and is not spent by a download: it
   * is the page's key to its next reconnect.
   */
  verifyForRead(token: string | null | undefined, guest: string): ConsoleGrant {
    if (token === null || token === undefined || token === '') {
      if (!this.requireAuth) return { mode: 'ro', name: 'anonymous', tokenId: 'anonymous', token: null };
      throw new ConsoledError('UNAUTHORIZED', 'this call needs Authorization: Bearer <viewer token>');
    }
    if (tokenMatches(token, this.adminToken))
      return { mode: 'rw', name: 'admin', tokenId: 'admin', token: null };
    // A throw-away registry: the check runs in full, and the real registry is only read.
    const verified = verifyViewerToken(this.secret, token, {
      guest,
      wantMode: 'ro',
      usedTokens: new UsedTokenRegistry({ maxEntries: 1 }),
    });
    if (verified.singleUse && this.usedTokens.has(verified.jti)) throw new ConsoledError('TOKEN_REUSED');
    return { mode: verified.mode, name: verified.name, tokenId: verified.jti, token: verified };
  }

  /**
   * Checks a credential for a console this host proxies to the guest's owner
   * (docs/design.md "Console across hosts"): in full (signature, expiry, guest, mode),
   * refusing a single-use token known spent here, but spending nothing: the owner
   * checks it again and spends it.
   */
  verifyAtEdge(
    token: string | null | undefined,
    guest: string,
    wantMode: ViewerMode | undefined,
  ): ConsoleGrant {
    if (token === null || token === undefined || token === '' || tokenMatches(token, this.adminToken))
      return this.verify(token, guest, wantMode);
    const verified = verifyViewerToken(this.secret, token, {
      guest,
      wantMode,
      usedTokens: new UsedTokenRegistry({ maxEntries: 1 }),
    });
    if (verified.singleUse && this.usedTokens.has(verified.jti)) throw new ConsoledError('TOKEN_REUSED');
    return { mode: verified.mode, name: verified.name, tokenId: verified.jti, token: verified };
  }

  /**
   * The token a proxied admin connection presents to the owner, whose admin token is
   * its own: a viewer token signed with the shared secret, `rw`, named `admin`.
   */
  adminUpstreamToken(guest: string): string {
    return this.issue({ guest, mode: 'rw', ttlMs: ADMIN_UPSTREAM_TTL_MS, name: 'admin' }, true).token;
  }

  /** Issues a token; throws BAD_PARAMETER when the TTL exceeds `console.maxTokenTtlMs` (unless `unbounded`). */
  issue(
    options: {
      guest: string;
      mode: ViewerMode;
      ttlMs: number;
      singleUse?: boolean;
      name?: string | undefined;
    },
    unbounded = false,
  ): IssuedToken {
    if (!unbounded && options.ttlMs > this.maxTokenTtlMs) {
      throw new ConsoledError(
        'BAD_PARAMETER',
        `ttl exceeds console.maxTokenTtlMs (${this.maxTokenTtlMs} ms)`,
      );
    }
    const token = issueViewerToken(this.secret, {
      guest: options.guest,
      mode: options.mode,
      ttlMs: options.ttlMs,
      singleUse: options.singleUse,
      name: options.name,
    });
    const claims = claimsOf(token);
    const expiresAtMs = claims.exp * 1000;
    return { token, id: claims.jti, expiresAt: new Date(expiresAtMs).toISOString(), expiresAtMs };
  }

  /**
   * The token a viewer that connected with a single-use token gets for its next
   * reconnect: single-use again, same guest, mode, name and expiry.
   */
  successor(grant: ConsoleGrant, guest: string): IssuedToken | null {
    const t = grant.token;
    if (!t?.singleUse) return null;
    const ttlMs = t.expiresAtMs - Date.now();
    if (ttlMs <= 0) return null;
    return this.issue({ guest, mode: t.tokenMode, ttlMs, singleUse: true, name: t.name }, true);
  }
}
