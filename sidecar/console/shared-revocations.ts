import type { RedisClient } from '../../store/replication/redis-commands.js';
import { revocationChannel, revokedTokenKey } from '../../store/replication/redis-keys.js';
import { TOKEN_ID_PATTERN } from './viewer-token.js';

/** A revocation as it travels between hosts. */
export interface RevocationNotice {
  /** The revoked id: a token's `jti`, or a chain's. */
  readonly id: string;
  /** Until when it is held (ms since the epoch). */
  readonly untilMs: number;
  /** The host that revoked it. */
  readonly host: string;
}

/** What the console needs of the daemon's Redis connection (sidecar/replication/redis-connection.ts). */
export interface RevocationBus {
  readonly client: RedisClient;
  /** Listens on a pub/sub channel; resolves once subscribed. The subscription survives reconnects. */
  subscribe(channel: string, listener: (message: string) => void): Promise<void>;
  /** Called when the subscriber reconnected: notices sent meanwhile may have been missed. */
  onResubscribed(listener: () => void): void;
}

/** A notice from the channel, or null when it is not one. */
export function parseRevocationNotice(message: string): RevocationNotice | null {
  try {
    const n = JSON.parse(message) as Partial<Record<keyof RevocationNotice, unknown>>;
    if (typeof n.id !== 'string' || !TOKEN_ID_PATTERN.test(n.id)) return null;
    if (!Number.isSafeInteger(n.untilMs) || typeof n.host !== 'string') return null;
    return { id: n.id, untilMs: n.untilMs as number, host: n.host };
  } catch {
    return null;
  }
}

/**
 * Revoked token ids in Redis, where replication is configured, so that every host
 * sharing `console.tokenSecret` honours a revocation made on any of them
 * (README "Tokens"): one key per id (`<prefix>{_tokens}:revoked:<id>`, value and PX
 * TTL its end), read at every new connection, and a notice on the channel
 * `<prefix>tokens:revoked`, on which every host ends its matching sessions at once.
 */
export class SharedRevocations {
  private readonly channel: string;

  constructor(
    private readonly bus: RevocationBus,
    private readonly prefix: string,
    private readonly hostId: string,
  ) {
    this.channel = revocationChannel(prefix);
  }

  /** Calls `listener` with each notice another host publishes; resolves once subscribed. */
  listen(listener: (notice: RevocationNotice) => void): Promise<void> {
    return this.bus.subscribe(this.channel, (message) => {
      const notice = parseRevocationNotice(message);
      if (notice !== null && notice.host !== this.hostId) listener(notice);
    });
  }

  /** Records the revocation and tells the other hosts. Throws when Redis fails. */
  async publish(id: string, untilMs: number): Promise<void> {
    const ttlMs = Math.max(1, untilMs - Date.now());
    await this.bus.client.set(revokedTokenKey(this.prefix, id), String(untilMs), 'PX', ttlMs);
    const notice: RevocationNotice = { id, untilMs, host: this.hostId };
    await this.bus.client.publish(this.channel, JSON.stringify(notice));
  }

  /**
   * Those of `ids` Redis holds as revoked, with their end; empty when none is. One
   * MGET (every key shares the `{_tokens}` hash tag). Throws when Redis fails.
   */
  async find(ids: readonly string[]): Promise<Array<{ id: string; untilMs: number }>> {
    const unique = [...new Set(ids)];
    if (unique.length === 0) return [];
    const values = await this.bus.client.mget(...unique.map((id) => revokedTokenKey(this.prefix, id)));
    return values.flatMap((value, i) => {
      const untilMs = Number(value);
      return value !== null && Number.isSafeInteger(untilMs) ? [{ id: unique[i]!, untilMs }] : [];
    });
  }
}
