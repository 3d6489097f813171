/**
 * Sessions end when their tokens do (README "Tokens"): the viewer token of every
 * admitted console connection, from its admission to its close. A connection admitted
 * with a viewer token is closed with 4402 TOKEN_EXPIRED when the token expires, unless
 * it renewed the token in band first (`renew`); one whose token (or chain) is revoked
 * is closed with 4407 TOKEN_REVOKED. Connections with the admin token or none
 * (`console.requireAuth: false`) have no expiry. One timer per connection, cleared at
 * its close.
 */
import type { Logger } from 'pino';
import { asConsoledError, ConsoledError } from '../../common/errors.js';
import type { AuditLog } from './audit-log.js';
import type { ConsoleAuth, ConsoleGrant, IssuedToken } from './console-auth.js';
import { closeViewer } from './hub.js';
import type { Viewer } from './viewer.js';
import type { VerifiedViewerToken } from './viewer-token.js';

/** The longest delay setTimeout takes; a later expiry is waited for in steps. */
const MAX_TIMER_MS = 2 ** 31 - 1;

/** One admitted connection with a viewer token. */
interface TokenSession {
  readonly viewer: Viewer;
  readonly address: string;
  /** Its token: the one it was admitted with, or its last renewal. */
  token: VerifiedViewerToken;
  grant: ConsoleGrant;
  /** A single-use session's reconnect key: its successor, or its last renewal. */
  successor: IssuedToken | null;
  timer: NodeJS.Timeout | null;
}

export interface TokenSessionCounters {
  /** Sessions ended by their token, by code (TOKEN_EXPIRED, TOKEN_REVOKED). */
  readonly closes: Map<string, number>;
  /** Tokens renewed in band. */
  renewals: number;
}

export class TokenSessions {
  readonly counters: TokenSessionCounters = { closes: new Map(), renewals: 0 };
  private readonly sessions = new Map<Viewer, TokenSession>();

  constructor(
    private readonly options: {
      readonly auth: ConsoleAuth;
      readonly audit: AuditLog;
      readonly logger: Logger;
    },
  ) {}

  /**
   * A connection was admitted with `grant`: its expiry is watched, and a single-use
   * token's successor (the key to its next reconnect) is sent.
   */
  admit(viewer: Viewer, grant: ConsoleGrant, address: string): void {
    const token = grant.token;
    if (token === null) return;
    const successor = this.options.auth.successor(grant, viewer.guest);
    const session: TokenSession = { viewer, address, token, grant, successor, timer: null };
    this.sessions.set(viewer, session);
    this.arm(session);
    if (successor)
      viewer.sendJson({
        type: 'token',
        token: successor.token,
        id: successor.id,
        expiresAt: successor.expiresAt,
      });
  }

  /** The connection closed. */
  leave(viewer: Viewer): void {
    const session = this.sessions.get(viewer);
    if (!session) return;
    if (session.timer) clearTimeout(session.timer);
    this.sessions.delete(viewer);
  }

  /**
   * `renew`: a new token for the connection, which then expires with it; for a
   * single-use token it is also the reconnect key, and the key it replaces is spent,
   * so a session holds one at a time. Refused with an `error` (TOKEN_NOT_RENEWABLE),
   * the connection staying open until its token expires.
   */
  renew(viewer: Viewer): void {
    const session = this.sessions.get(viewer);
    if (!session) {
      viewer.sendError(
        'TOKEN_NOT_RENEWABLE',
        `the ${viewer.tokenId} connection has no token: it does not expire`,
      );
      return;
    }
    let renewal: ReturnType<ConsoleAuth['renew']>;
    try {
      renewal = this.options.auth.renew(session.grant);
    } catch (err) {
      const error = asConsoledError(err);
      viewer.sendError(error.code, error.message);
      return;
    }
    const { issued, grant } = renewal;
    const before = session.token;
    session.grant = grant;
    session.token = grant.token!;
    this.arm(session);
    this.counters.renewals++;
    if (before.singleUse) {
      const replaced = session.successor;
      session.successor = issued;
      if (replaced) void this.retire(session, replaced);
    }
    this.options.audit.tokenRenewed(viewer, {
      jti: before.jti,
      newJti: issued.id,
      chain: before.chain,
      expiresAt: issued.expiresAt,
    });
    viewer.sendJson({
      type: 'token',
      token: issued.token,
      id: issued.id,
      expiresAt: issued.expiresAt,
      renewed: true,
    });
  }

  /**
   * The latest time a live session's token matching `id` (its `jti` or chain id) could
   * still verify, or be renewed to (`ren`, else `exp`); 0 when none matches. A
   * revocation is held at least until then.
   */
  latestEnd(id: string): number {
    let latest = 0;
    for (const { token } of this.matching(id))
      latest = Math.max(latest, token.renewableUntilMs ?? 0, token.expiresAtMs);
    return latest;
  }

  /** Ends every live session whose token's `jti` or chain id is `id` (TOKEN_REVOKED); returns how many. */
  endRevoked(id: string): number {
    const ended = [...this.matching(id)];
    for (const session of ended) {
      this.count('TOKEN_REVOKED');
      closeViewer(session.viewer, new ConsoledError('TOKEN_REVOKED', `the token id ${id} was revoked`));
    }
    return ended.length;
  }

  /** The `jti` and chain id of every live session's token (to check them against Redis). */
  liveTokenIds(): string[] {
    const ids = new Set<string>();
    for (const { token } of this.sessions.values()) ids.add(token.jti).add(token.chain);
    return [...ids];
  }

  private *matching(id: string): Generator<TokenSession> {
    for (const session of this.sessions.values()) {
      if (session.token.jti === id || session.token.chain === id) yield session;
    }
  }

  /** (Re)starts the timer that ends the session when its token expires. */
  private arm(session: TokenSession): void {
    if (session.timer) clearTimeout(session.timer);
    const token = session.token;
    const wait = token.expiresAtMs - Date.now();
    session.timer = setTimeout(
      () => {
        session.timer = null;
        if (session.token !== token) return;
        if (Date.now() < token.expiresAtMs) this.arm(session);
        else this.expire(session);
      },
      Math.min(Math.max(0, wait), MAX_TIMER_MS),
    );
    session.timer.unref();
  }

  private expire(session: TokenSession): void {
    const { viewer, token } = session;
    const expiredAt = new Date(token.expiresAtMs).toISOString();
    this.count('TOKEN_EXPIRED');
    this.options.audit.tokenExpired(viewer, { jti: token.jti, chain: token.chain, expiredAt });
    closeViewer(
      viewer,
      new ConsoledError('TOKEN_EXPIRED', `the token expired at ${expiredAt}`, { expiredAt }),
    );
  }

  private count(code: string): void {
    this.counters.closes.set(code, (this.counters.closes.get(code) ?? 0) + 1);
  }

  private async retire(session: TokenSession, replaced: IssuedToken): Promise<void> {
    if (!(await this.options.auth.retire(session.viewer.guest, replaced))) {
      this.options.logger.warn(
        { jti: replaced.id, address: session.address },
        'replaced single-use token spent on this host only: Redis did not answer',
      );
    }
  }
}
