import type { RedisClient } from '../../store/replication/redis-commands.js';
import { usedTokenKey } from '../../store/replication/redis-keys.js';

/**
 * Spent single-use token ids in Redis, where replication is configured: hosts that
 * share `console.tokenSecret` refuse a token spent on any of them, and a host that
 * lost its state directory still refuses one it spent before. One `SET NX PX` per
 * spent token, under the configured key prefix, expiring with the token.
 */
export class SharedUsedTokens {
  constructor(
    private readonly client: RedisClient,
    private readonly prefix: string,
  ) {}

  /** Records the id; true when it was not recorded before (the first use). Throws when Redis fails. */
  async claim(guest: string, jti: string, ttlMs: number): Promise<boolean> {
    const key = usedTokenKey(this.prefix, guest, jti);
    const answer = await this.client.set(key, '1', 'PX', Math.max(1, Math.ceil(ttlMs)), 'NX');
    return answer === 'OK';
  }
}
