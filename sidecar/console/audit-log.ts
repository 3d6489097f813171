import type { Logger } from 'pino';
import { addressBudgetKey } from '../http/forwarded.js';

/** Who a console connection is, as the audit log records it. */
export interface AuditSubject {
  readonly guest: string;
  readonly viewerId: string;
  /** The viewer token's id (`jti`), or `admin` for the admin token. */
  readonly tokenId: string;
  readonly name: string | undefined;
  readonly mode: 'ro' | 'rw';
  readonly remote: string;
}

function who(s: AuditSubject): Record<string, unknown> {
  return {
    guest: s.guest,
    viewerId: s.viewerId,
    jti: s.tokenId,
    name: s.name,
    mode: s.mode,
    remote: s.remote,
  };
}

/** A refused console connection, as the audit log records it. */
export interface RefusalDetails {
  guest: string | null;
  code: string;
  jti?: string | undefined;
  /** The client's address (behind a trusted proxy, the forwarded one), without port. */
  address: string;
  /** `address:port` of the peer, or the forwarded address. */
  remote: string;
  origin: string | undefined;
}

/** Refusals of one code from one address (an IPv6 /64), while they keep coming. */
interface Episode {
  readonly first: RefusalDetails;
  readonly startedMs: number;
  lastMs: number;
  /** The guests the refused connections asked for, the first few. */
  readonly guests: Set<string | null>;
  /** Refusals after the first, not logged one by one. */
  repeated: number;
}

/** Episodes tracked at once; past it, new keys share one overflow episode. */
const MAX_EPISODES = 256;
/** Guests named in an episode's summary. */
const MAX_EPISODE_GUESTS = 8;

/**
 * The console's audit trail: one structured line per attach, detach, refusal, lock
 * change, and writer tenure (with the bytes the writer sent), each with the token id.
 * Lines go to the daemon's logger with `component: "audit"`, so journald keeps them
 * with everything else and `journalctl -u consoled | grep '"component":"audit"'`
 * (or a log shipper's filter) finds them.
 */
export class AuditLog {
  private readonly logger: Logger;
  private readonly episodeMs: number;
  private readonly episodes = new Map<string, Episode>();
  private timer: NodeJS.Timeout | null = null;

  /** `episodeMs`: a refusal episode ends once none of its kind came for this long (console.refusalEpisodeMs). */
  constructor(logger: Logger, options: { episodeMs?: number } = {}) {
    this.logger = logger.child({ component: 'audit' });
    this.episodeMs = options.episodeMs ?? 10_000;
  }

  attach(
    s: AuditSubject,
    details: { from: number | null; offset: number; clamped: boolean; origin: string | undefined },
  ): void {
    this.logger.info({ event: 'console.attach', ...who(s), ...details }, 'console viewer attached');
  }

  detach(
    s: AuditSubject,
    details: {
      code: number;
      reason: string;
      durationMs: number;
      bytesSent: number;
      skippedBytes: number;
      keystrokeBytes: number;
    },
  ): void {
    this.logger.info({ event: 'console.detach', ...who(s), ...details }, 'console viewer detached');
  }

  /**
   * A refused connection. Refusals come in floods (a client retrying, a scan), so
   * they are aggregated per episode: the first of a code from an address is logged at
   * once (`console.refused`), the rest are counted, and when none came for
   * `episodeMs` one `console.refused.episode` line gives the count, the span and the
   * first few guests asked for.
   */
  refused(details: RefusalDetails): void {
    const now = Date.now();
    // Not per guest: a flood can name a new guest id in every request.
    let key = `${details.code}\u0000${addressBudgetKey(details.address)}`;
    if (!this.episodes.has(key) && this.episodes.size >= MAX_EPISODES) key = '*';
    const episode = this.episodes.get(key);
    if (episode) {
      episode.repeated++;
      episode.lastMs = now;
      if (episode.guests.size < MAX_EPISODE_GUESTS) episode.guests.add(details.guest);
      return;
    }
    this.episodes.set(key, {
      first: details,
      startedMs: now,
      lastMs: now,
      repeated: 0,
      guests: new Set([details.guest]),
    });
    this.logger.warn({ event: 'console.refused', ...details }, 'console connection refused');
    this.timer ??= setInterval(() => this.endEpisodes(false), Math.max(50, this.episodeMs / 4)).unref();
  }

  /** Writes the summary of every episode that ended (all of them when `all`, at shutdown). */
  endEpisodes(all: boolean): void {
    const now = Date.now();
    for (const [key, e] of this.episodes) {
      if (!all && now - e.lastMs < this.episodeMs) continue;
      this.episodes.delete(key);
      if (e.repeated === 0) continue;
      this.logger.warn(
        {
          event: 'console.refused.episode',
          code: key === '*' ? 'various' : e.first.code,
          address: key === '*' ? 'various' : e.first.address,
          guests: [...e.guests],
          repeated: e.repeated,
          startedAt: new Date(e.startedMs).toISOString(),
          durationMs: e.lastMs - e.startedMs,
        },
        'console connections refused (episode)',
      );
    }
    if (this.episodes.size === 0 && this.timer) {
      clearInterval(this.timer);
      this.timer = null;
    }
  }

  lock(guest: string, from: AuditSubject | null, to: AuditSubject | null, cause: string): void {
    this.logger.info(
      {
        event: 'console.lock',
        guest,
        cause,
        from: from ? { viewerId: from.viewerId, jti: from.tokenId, name: from.name } : null,
        to: to ? { viewerId: to.viewerId, jti: to.tokenId, name: to.name } : null,
      },
      'console writer lock changed',
    );
  }

  /** One writer's tenure ended: what it sent toward the guest. */
  writerBytes(s: AuditSubject, details: { bytes: number; frames: number; durationMs: number }): void {
    this.logger.info({ event: 'console.write', ...who(s), ...details }, 'console writer sent keystrokes');
  }

  tokenIssued(details: {
    guest: string;
    jti: string;
    mode: string;
    ttlMs: number;
    singleUse: boolean;
    name: string | undefined;
    renewableForMs: number | undefined;
    by: string;
  }): void {
    this.logger.info({ event: 'console.token', ...details }, 'viewer token issued');
  }

  /** A connection renewed its token in band: `jti` is the token it had, `newJti` the one it got. */
  tokenRenewed(
    s: AuditSubject,
    details: { jti: string; newJti: string; chain: string; expiresAt: string },
  ): void {
    this.logger.info({ event: 'console.renew', ...who(s), ...details }, 'console viewer renewed its token');
  }

  /** A connection is closed because its token expired (4402 TOKEN_EXPIRED; its `console.detach` follows). */
  tokenExpired(s: AuditSubject, details: { jti: string; chain: string; expiredAt: string }): void {
    this.logger.info({ event: 'console.expire', ...who(s), ...details }, 'console viewer token expired');
  }

  /**
   * A token id was revoked: by the admin on this host (`by: admin`), or on another host
   * and heard through Redis (`by: <host id>`); the sessions it ended here close with
   * 4407 TOKEN_REVOKED (each with its `console.detach`).
   */
  tokenRevoked(details: {
    id: string;
    until: string;
    endedSessions: number;
    shared: boolean;
    by: string;
  }): void {
    this.logger.warn({ event: 'console.revoke', ...details }, 'viewer token revoked');
  }
}
