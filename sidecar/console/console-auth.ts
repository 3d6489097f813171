import { ConsoledError } from '../../common/errors.js';
import { tokenMatches } from '../http/admin-token.js';
import type { SharedRevocations } from './shared-revocations.js';
import type { SharedUsedTokens } from './shared-used-tokens.js';
import { TokenRevocations } from './token-revocations.js';
import {
  checkViewerTokenExpiry,
  decodeViewerToken,
  issueViewerToken,
  readUnverifiedClaims,
  renewalExpiryMs,
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
  /** `ren` as an ISO time; absent on a token that cannot be renewed. */
  readonly renewableUntil?: string;
}

/** What a shared check (Redis) could not ask: the local record decided instead. */
export type SharedCheckMiss = 'revocation' | 'spend';

/** A renewal: the new token, and the grant the connection goes on with. */
export interface Renewal {
  readonly issued: IssuedToken;
  readonly grant: ConsoleGrant;
}

interface SignOptions {
  guest: string;
  mode: ViewerMode;
  ttlMs: number;
  singleUse?: boolean | undefined;
  name?: string | undefined;
  renewableUntilMs?: number | undefined;
  chain?: string | undefined;
  issuedAtMs?: number | undefined;
  now?: number | undefined;
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
  /** Revoked token and chain ids (persisted by token-revocations.ts in the daemon). */
  readonly revocations: TokenRevocations;
  /** Revocations shared through Redis (set once replication is up); null without Redis. */
  sharedRevocations: SharedRevocations | null = null;

  /**
   * `usedTokens`: the registry single-use ids are spent in (persisted by
   * used-token-journal.ts in the daemon); `revocations`: the revoked ids (persisted
   * by token-revocations.ts); fresh in-memory ones when absent.
   */
  constructor(
    private readonly secret: Buffer,
    private readonly adminToken: string,
    options: {
      maxUsedTokens: number;
      maxTokenTtlMs: number;
      maxSessionTtlMs: number;
      requireAuth: boolean;
      usedTokens?: UsedTokenRegistry;
      revocations?: TokenRevocations;
    },
  ) {
    this.usedTokens = options.usedTokens ?? new UsedTokenRegistry({ maxEntries: options.maxUsedTokens });
    this.revocations = options.revocations ?? new TokenRevocations();
    this.maxTokenTtlMs = options.maxTokenTtlMs;
    this.maxSessionTtlMs = options.maxSessionTtlMs;
    this.requireAuth = options.requireAuth;
  }

  private readonly maxTokenTtlMs: number;
  private readonly maxSessionTtlMs: number;
  private readonly isRevoked = (jti: string, chain: string): boolean =>
    this.revocations.match(jti, chain) !== null;
  /** False: connections without a token are admitted (console.requireAuth). */
  readonly requireAuth: boolean;

  /**
   * Checks a credential for a console connection to `guest`; throws UNAUTHORIZED
   * (none), TOKEN_INVALID, TOKEN_EXPIRED, TOKEN_WRONG_GUEST, TOKEN_WRONG_MODE,
   * TOKEN_REVOKED or TOKEN_REUSED. A single-use token is spent here.
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
    const verified = verifyViewerToken(this.secret, token, {
      guest,
      wantMode,
      usedTokens: this.usedTokens,
      isRevoked: this.isRevoked,
    });
    return { mode: verified.mode, name: verified.name, tokenId: verified.jti, token: verified };
  }

  /** Throws TOKEN_REVOKED when the grant's token (its `jti` or chain) is revoked here. */
  assertNotRevoked(grant: ConsoleGrant): void {
    const t = grant.token;
    if (t && this.isRevoked(t.jti, t.chain)) throw new ConsoledError('TOKEN_REVOKED');
  }

  /**
   * What Redis says of a grant {@link verify} admitted here, where replication is
   * configured: throws TOKEN_REVOKED when another host revoked its token or chain (and
   * records that here), TOKEN_REUSED when a single-use token was spent elsewhere;
   * spends a single-use token in Redis. Returns what Redis could not be asked about:
   * for those the local record decided.
   */
  async checkShared(grant: ConsoleGrant): Promise<SharedCheckMiss[]> {
    const t = grant.token;
    const shared = this.sharedRevocations;
    const missed: SharedCheckMiss[] = [];
    if (t && shared) {
      let found: Array<{ id: string; untilMs: number }> = [];
      try {
        found = await shared.find([t.jti, t.chain]);
      } catch {
        missed.push('revocation');
      }
      for (const { id, untilMs } of found) this.revocations.revoke(id, untilMs);
      if (found.length > 0) throw new ConsoledError('TOKEN_REVOKED', 'the token was revoked on another host');
    }
    if (!(await this.spendShared(grant))) missed.push('spend');
    return missed;
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
      isRevoked: this.isRevoked,
    });
    if (verified.singleUse && this.usedTokens.has(verified.jti)) throw new ConsoledError('TOKEN_REUSED');
    return { mode: verified.mode, name: verified.name, tokenId: verified.jti, token: verified };
  }

  /**
   * Checks a credential for a console this host proxies to the guest's owner
   * (docs/design.md "Console across hosts"): in full (signature, expiry, guest, mode,
   * revocation), refusing a single-use token known spent here, but spending nothing: the owner
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
      isRevoked: this.isRevoked,
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

  /**
   * Issues a token; throws BAD_PARAMETER when the TTL exceeds `console.maxTokenTtlMs`
   * (unless `unbounded`), or `renewableForMs` exceeds `console.maxSessionTtlMs` or is
   * shorter than the TTL. With `renewableForMs` the token can be renewed in band until
   * that long from now.
   */
  issue(
    options: {
      guest: string;
      mode: ViewerMode;
      ttlMs: number;
      singleUse?: boolean;
      name?: string | undefined;
      renewableForMs?: number | undefined;
    },
    unbounded = false,
  ): IssuedToken {
    if (!unbounded && options.ttlMs > this.maxTokenTtlMs) {
      throw new ConsoledError(
        'BAD_PARAMETER',
        `ttl exceeds console.maxTokenTtlMs (${this.maxTokenTtlMs} ms)`,
      );
    }
    const { renewableForMs, ...rest } = options;
    const now = Date.now();
    if (renewableForMs === undefined) return this.sign({ ...rest, now });
    if (renewableForMs > this.maxSessionTtlMs) {
      throw new ConsoledError(
        'BAD_PARAMETER',
        `renewableFor exceeds console.maxSessionTtlMs (${this.maxSessionTtlMs} ms)`,
      );
    }
    if (renewableForMs < options.ttlMs)
      throw new ConsoledError('BAD_PARAMETER', 'renewableFor must be at least the ttl');
    return this.sign({ ...rest, renewableUntilMs: now + renewableForMs, now });
  }

  private sign(options: SignOptions): IssuedToken {
    const token = issueViewerToken(this.secret, options);
    const claims = readUnverifiedClaims(token)!;
    const expiresAtMs = claims.exp * 1000;
    return {
      token,
      id: claims.jti,
      expiresAt: new Date(expiresAtMs).toISOString(),
      expiresAtMs,
      ...(claims.ren !== undefined ? { renewableUntil: new Date(claims.ren * 1000).toISOString() } : {}),
    };
  }

  /**
   * The token a viewer that connected with a single-use token gets for its next
   * reconnect: single-use again, same guest, mode, name, expiry and `ren`, in the
   * same chain, with the same `iat` (so that renewing it gives the chain's lifetime).
   */
  successor(grant: ConsoleGrant, guest: string): IssuedToken | null {
    const t = grant.token;
    if (!t?.singleUse) return null;
    const now = Date.now();
    const ttlMs = t.expiresAtMs - now;
    if (ttlMs <= 0) return null;
    return this.sign({ ...this.chainOptions(t), guest, ttlMs, issuedAtMs: t.issuedAtMs, now });
  }

  /**
   * Renews the token of a live connection in band (README "Tokens"): a new token of
   * the same guest, mode, name, single use and `ren`, in the same chain, living as long
   * as the connection's token did (`exp - iat`) from now, but not past `ren`. Throws
   * TOKEN_NOT_RENEWABLE for a connection without a token (admin, anonymous), a token
   * without `ren`, or once `ren` has come; TOKEN_REVOKED for a revoked one.
   */
  renew(grant: ConsoleGrant, now: number = Date.now()): Renewal {
    const t = grant.token;
    if (t === null)
      throw new ConsoledError('TOKEN_NOT_RENEWABLE', `the ${grant.tokenId} credential does not expire`);
    if (t.renewableUntilMs === null)
      throw new ConsoledError('TOKEN_NOT_RENEWABLE', 'the token was issued without renewableFor');
    this.assertNotRevoked(grant);
    const expiresAtMs = renewalExpiryMs(t, now);
    if (expiresAtMs === null) {
      throw new ConsoledError(
        'TOKEN_NOT_RENEWABLE',
        `the token was renewable until ${new Date(t.renewableUntilMs).toISOString()}`,
      );
    }
    const issued = this.sign({ ...this.chainOptions(t), ttlMs: expiresAtMs - now, now });
    const token: VerifiedViewerToken = {
      ...t,
      jti: issued.id,
      expiresAtMs: issued.expiresAtMs,
      issuedAtMs: Math.floor(now / 1000) * 1000,
    };
    return { issued, grant: { ...grant, tokenId: issued.id, token } };
  }

  /** What a successor or a renewal keeps of the token it continues. */
  private chainOptions(t: VerifiedViewerToken): Omit<SignOptions, 'ttlMs'> {
    return {
      guest: t.guest,
      mode: t.tokenMode,
      singleUse: t.singleUse,
      name: t.name,
      renewableUntilMs: t.renewableUntilMs ?? undefined,
      chain: t.chain,
    };
  }

  /**
   * Spends a single-use token nobody used and nobody will: a connection's earlier
   * reconnect key, which its renewal replaced, so that a session holds one key at a
   * time. Here at once, in Redis where there is one (best effort: false when Redis did
   * not answer).
   */
  async retire(guest: string, token: IssuedToken): Promise<boolean> {
    this.usedTokens.markUsed(token.id, token.expiresAtMs);
    const shared = this.sharedUsedTokens;
    const ttlMs = token.expiresAtMs - Date.now();
    if (shared === null || ttlMs <= 0) return true;
    try {
      await shared.claim(guest, token.id, ttlMs);
      return true;
    } catch {
      return false;
    }
  }
}
