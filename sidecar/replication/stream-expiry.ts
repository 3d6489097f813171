/**
 * The expiry of the streams of guests that are gone (docs/design.md "Retention"):
 * every host sweeps the owner records with SCAN, a bounded step per tick, and runs
 * scripts/expire-gone-5.lua on each, which deletes the guest's keys only if the guest
 * is still gone (released, nobody owns it, nothing appended) for `goneAfterMs`. The
 * script re-checks atomically, so several hosts sweeping at once, or a claim racing a
 * sweep, delete nothing that is in use.
 */
import { Cluster } from 'ioredis';
import type { Logger } from 'pino';
import { isGuestId } from '../../common/guest-id.js';
import { type RedisClient, replicationCommands } from '../../store/replication/redis-commands.js';
import { guestKeys, skipsKey } from '../../store/replication/redis-keys.js';
import type { RedisConnection } from './redis-connection.js';
import type { RedisConfig } from './replication-config.js';

/** Escapes Redis' glob characters (`*`, `?`, `[`, `]`, `\`) so the prefix matches itself. */
function globLiteral(text: string): string {
  return text.replace(/[*?[\]\\]/g, '\\$&');
}

export class StreamExpiry {
  /** Streams this host deleted, and sweep steps that failed. */
  readonly counters = { expiredStreams: 0, sweepErrors: 0, passes: 0 };
  private readonly cursors = new Map<string, string>();
  private readonly timer: NodeJS.Timeout | null;
  private running = false;
  private readonly pattern: string;
  private readonly ownerKey: RegExp;

  constructor(
    private readonly connection: RedisConnection,
    private readonly config: RedisConfig,
    private readonly logger: Logger,
  ) {
    const prefix = config.keyPrefix;
    this.pattern = `${globLiteral(prefix)}{*}:owner`;
    this.ownerKey = /^\{(.+)\}:owner$/;
    const { goneAfterMs, sweepIntervalMs } = config.retention;
    this.timer = goneAfterMs > 0 ? setInterval(() => void this.step(), sweepIntervalMs) : null;
    this.timer?.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
  }

  /** One step: a SCAN batch on each node, and the script on each owner record found. */
  async step(): Promise<void> {
    if (this.running || !this.connection.ready) return;
    this.running = true;
    try {
      const client = this.connection.client;
      const nodes: RedisClient[] = client instanceof Cluster ? client.nodes('master') : [client];
      for (const node of nodes) await this.scanNode(node);
    } catch (err) {
      this.counters.sweepErrors++;
      this.logger.debug({ err: String(err) }, 'stream expiry step failed; retried at the next tick');
    } finally {
      this.running = false;
    }
  }

  private async scanNode(node: RedisClient): Promise<void> {
    const name = nodeName(node);
    const [cursor, keys] = await node.scan(
      this.cursors.get(name) ?? '0',
      'MATCH',
      this.pattern,
      'COUNT',
      this.config.retention.sweepBatch,
    );
    if (cursor === '0') {
      this.cursors.delete(name);
      this.counters.passes++;
    } else {
      this.cursors.set(name, cursor);
    }
    const { keyPrefix: prefix } = this.config;
    const commands = replicationCommands(this.connection.client);
    for (const key of keys) {
      const id = this.ownerKey.exec(key.slice(prefix.length))?.[1];
      if (!key.startsWith(prefix) || !id || !isGuestId(id)) continue;
      const reply = await commands.expireGone(
        guestKeys(prefix, id),
        skipsKey(prefix, id),
        this.config.retention.goneAfterMs,
      );
      if (reply.status === 'expired') {
        this.counters.expiredStreams++;
        this.logger.info(
          { guest: id, deletedKeys: reply.deletedKeys, goneAfterMs: this.config.retention.goneAfterMs },
          'stream of a gone guest expired',
        );
      }
    }
  }
}

/** A name for a node's SCAN cursor. */
function nodeName(node: RedisClient): string {
  const o = node.options as { host?: string; port?: number };
  return `${o.host ?? ''}:${o.port ?? ''}`;
}
