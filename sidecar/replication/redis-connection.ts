/**
 * The daemon's Redis connection: one ioredis client (a URL, Sentinel, or Cluster)
 * built from the `redis:` config, its state as one union with one setter, the
 * pub/sub subscriber for handoff notifications, and the `maxmemory-policy` check.
 */
import { EventEmitter } from 'node:events';
import { readFileSync } from 'node:fs';
import type { ConnectionOptions } from 'node:tls';
import { Cluster, Redis, type RedisOptions } from 'ioredis';
import type { Logger } from 'pino';
import { Backoff } from '../../common/backoff.js';
import { ConsoledError } from '../../common/errors.js';
import type { RedisClient } from '../../store/replication/redis-commands.js';
import { hostChannel } from '../../store/replication/redis-keys.js';
import type { HandoffNotice, RedisLink } from '../../store/replication/replicator.js';
import type { RedisConfig } from './replication-config.js';

/** `connecting`: first connection; `ready`: commands flow; `reconnecting`: lost, retrying; `closed`: by us. */
export type RedisConnectionState = 'connecting' | 'ready' | 'reconnecting' | 'closed';

export interface RedisConnectionEvents {
  state: [{ from: RedisConnectionState; to: RedisConnectionState; reason: string }];
  notice: [HandoffNotice];
  /** The subscriber (re)connected: notifications sent meanwhile may have been missed. */
  resubscribed: [];
}

function readTls(config: RedisConfig): ConnectionOptions | undefined {
  const tls = config.tls;
  const wantTls = tls !== undefined || config.url?.startsWith('rediss://') === true;
  if (!wantTls) return undefined;
  const read = (path: string | undefined, field: string): Buffer | undefined => {
    if (path === undefined) return undefined;
    try {
      return readFileSync(path);
    } catch (err) {
      throw new ConsoledError(
        'BAD_CONFIG',
        `redis.tls.${field}: cannot read ${path}: ${(err as NodeJS.ErrnoException).code}`,
      );
    }
  };
  const ca = read(tls?.caFile, 'caFile');
  const cert = read(tls?.certFile, 'certFile');
  const key = read(tls?.keyFile, 'keyFile');
  return {
    ...(ca ? { ca } : {}),
    ...(cert ? { cert } : {}),
    ...(key ? { key } : {}),
    ...(tls?.servername ? { servername: tls.servername } : {}),
    rejectUnauthorized: tls?.rejectUnauthorized ?? true,
  };
}

function readPassword(config: RedisConfig): string | undefined {
  if (config.password) return config.password;
  if (!config.passwordFile) return undefined;
  try {
    return readFileSync(config.passwordFile, 'utf8').split('\n')[0]!.trim();
  } catch (err) {
    throw new ConsoledError(
      'BAD_CONFIG',
      `redis.passwordFile: cannot read ${config.passwordFile}: ${(err as NodeJS.ErrnoException).code}`,
    );
  }
}

/**
 * Builds the ioredis client for `config`. Commands fail at once while disconnected
 * (no offline queue, no automatic re-send): the replicator waits for `ready` and
 * reconciles, which is what makes a re-send exactly-once. The reply mapping stays
 * ioredis' default, which SharedLog needs.
 */
export function createRedisClient(
  config: RedisConfig,
  options: { queueUntilConnected?: boolean } = {},
): RedisClient {
  const offlineQueue = options.queueUntilConnected === true;
  const backoff = new Backoff(config.reconnect);
  const retry = (attempt: number): number => {
    if (attempt <= 1) backoff.reset();
    return backoff.next();
  };
  const password = readPassword(config);
  const tls = readTls(config);
  const auth = {
    ...(config.username ? { username: config.username } : {}),
    ...(password ? { password } : {}),
    ...(tls ? { tls } : {}),
  };
  // Without `replyMapping`: the default (legacy) mapping is the one SharedLog reads.
  const common: Omit<RedisOptions, 'replyMapping'> = {
    ...auth,
    ...(config.db !== undefined ? { db: config.db } : {}),
    connectTimeout: config.connectTimeoutMs,
    commandTimeout: config.commandTimeoutMs,
    enableOfflineQueue: offlineQueue,
    autoResendUnfulfilledCommands: false,
    maxRetriesPerRequest: 1,
    retryStrategy: retry,
    // No auto-pipelining: in ioredis 6.0.0 a pipeline answered short (its connection
    // closing under it) throws `results[i] is not iterable` from a callback, an uncaught
    // exception that ends the process (redis/ioredis#1931; seen here in a CI run). The
    // guests' appends already leave together, as one script call per turn
    // (store/replication/append-batch.ts).
    enableAutoPipelining: false,
  };
  if (config.cluster) {
    return new Cluster(config.cluster.nodes, {
      clusterRetryStrategy: retry,
      enableOfflineQueue: offlineQueue,
      enableAutoPipelining: false, // see above
      redisOptions: {
        ...auth,
        connectTimeout: config.connectTimeoutMs,
        commandTimeout: config.commandTimeoutMs,
        autoResendUnfulfilledCommands: false,
        maxRetriesPerRequest: 1,
      },
    });
  }
  if (config.sentinels) {
    return new Redis({
      ...common,
      sentinels: config.sentinels,
      name: config.name!,
      ...(config.sentinelUsername ? { sentinelUsername: config.sentinelUsername } : {}),
      ...(config.sentinelPassword ? { sentinelPassword: config.sentinelPassword } : {}),
      ...(tls ? { enableTLSForSentinelMode: true, sentinelTLS: tls } : {}),
      sentinelRetryStrategy: retry,
    });
  }
  return new Redis(config.url!, common);
}

/**
 * A connection of its own for blocking reads (XREAD BLOCK) and subscriptions: it
 * queues its first command until connected, and a command may last a whole block.
 */
export function duplicateForBlocking(client: RedisClient, config: RedisConfig): RedisClient {
  const commandTimeout = config.followBlockMs + config.commandTimeoutMs;
  const dup: RedisClient =
    client instanceof Cluster
      ? client.duplicate([], { enableOfflineQueue: true, redisOptions: { commandTimeout } })
      : client.duplicate({ enableOfflineQueue: true, commandTimeout });
  return dup;
}

/** Redis connection of the daemon; implements the `RedisLink` the replicators wait on. */
export class RedisConnection extends EventEmitter<RedisConnectionEvents> implements RedisLink {
  readonly client: RedisClient;
  private subscriber: RedisClient | null = null;
  /** Channels besides the host's own (`subscribe`), with their listener and who waits for the subscription. */
  private readonly channels = new Map<
    string,
    { listener: (message: string) => void; subscribed: () => void }
  >();
  /** The subscriber connected once: channels added since are subscribed at once. */
  private subscribed = false;
  private stateValue: RedisConnectionState = 'connecting';
  private generationValue = 0;
  private readonly logger: Logger;
  /** `maxmemory-policy` as last read (null: not read, or CONFIG is not allowed). */
  evictionPolicy: string | null = null;
  readonly counters = { connects: 0, disconnects: 0, noticesSent: 0, noticesReceived: 0 };

  constructor(
    readonly config: RedisConfig,
    private readonly hostId: string,
    logger: Logger,
  ) {
    super();
    this.logger = logger.child({ component: 'redis' });
    this.client = createRedisClient(config);
    this.client.on('ready', () => {
      this.counters.connects++;
      this.generationValue++;
      this.setState('ready', 'connected');
      void this.checkEvictionPolicy();
    });
    this.client.on('close', () => {
      if (this.stateValue === 'ready') this.counters.disconnects++;
      this.setState('reconnecting', 'connection closed');
    });
    this.client.on('end', () => this.setState('closed', 'ended'));
    // ioredis reports each failed attempt; the state change is logged once per episode.
    this.client.on('error', () => {});
    this.startSubscriber();
  }

  get state(): RedisConnectionState {
    return this.stateValue;
  }

  get ready(): boolean {
    return this.stateValue === 'ready';
  }

  get generation(): number {
    return this.generationValue;
  }

  waitReady(signal: AbortSignal): Promise<void> {
    if (this.ready || signal.aborted) return Promise.resolve();
    return new Promise((resolve) => {
      const done = (): void => {
        this.off('state', onState);
        signal.removeEventListener('abort', done);
        resolve();
      };
      const onState = ({ to }: { to: RedisConnectionState }): void => {
        if (to === 'ready' || to === 'closed') done();
      };
      this.on('state', onState);
      signal.addEventListener('abort', done, { once: true });
    });
  }

  /** Tells `host` about a handoff step (fire and forget: the receiver also polls). */
  notify(host: string, notice: HandoffNotice): void {
    if (!this.ready) return;
    this.counters.noticesSent++;
    this.client
      .publish(hostChannel(this.config.keyPrefix, host), JSON.stringify(notice))
      .catch((err: unknown) => this.logger.debug({ err: String(err) }, 'handoff notification not sent'));
  }

  /**
   * Listens on another pub/sub channel (the console's revocations) on the same
   * subscriber connection, which subscribes again by itself after a reconnect; a
   * `resubscribed` event says messages may have been missed meanwhile. Resolves once
   * Redis confirmed the subscription (never, if it keeps failing: each failure is logged).
   */
  subscribe(channel: string, listener: (message: string) => void): Promise<void> {
    return new Promise((subscribed) => {
      this.channels.set(channel, { listener, subscribed });
      if (this.subscribed) this.subscribeTo(channel);
    });
  }

  private subscribeTo(channel: string): void {
    this.subscriber?.subscribe(channel).then(
      () => this.channels.get(channel)?.subscribed(),
      (err: unknown) => this.logger.warn({ err: String(err), channel }, 'subscribing failed'),
    );
  }

  async close(): Promise<void> {
    this.setState('closed', 'closed by consoled');
    const quit = async (c: RedisClient | null): Promise<void> => {
      if (!c) return;
      try {
        await Promise.race([c.quit(), new Promise((r) => setTimeout(r, 1_000))]);
      } catch {
        // already gone
      }
      c.disconnect();
    };
    await Promise.all([quit(this.subscriber), quit(this.client)]);
    this.subscriber = null;
  }

  private setState(to: RedisConnectionState, reason: string): void {
    const from = this.stateValue;
    if (from === to || from === 'closed') return;
    this.stateValue = to;
    const level = to === 'ready' ? 'info' : 'warn';
    this.logger[level]({ from, to, reason }, `redis ${from} -> ${to}`);
    this.emit('state', { from, to, reason });
  }

  private startSubscriber(): void {
    const c = this.client;
    // The subscriber re-subscribes by itself after a reconnect.
    const sub = duplicateForBlocking(c, this.config);
    this.subscriber = sub;
    const channel = hostChannel(this.config.keyPrefix, this.hostId);
    sub.on('error', () => {});
    sub.on('message', (ch: string, message: string) => {
      if (ch !== channel) {
        this.channels.get(ch)?.listener(message);
        return;
      }
      try {
        const notice = JSON.parse(message) as HandoffNotice;
        if (typeof notice.guest !== 'string' || typeof notice.event !== 'string') return;
        this.counters.noticesReceived++;
        this.emit('notice', notice);
      } catch {
        // not ours
      }
    });
    let first = true;
    sub.on('ready', () => {
      if (first) {
        first = false;
        this.subscribed = true;
        sub
          .subscribe(channel)
          .catch((err: unknown) =>
            this.logger.warn({ err: String(err) }, 'subscribing to handoff notifications failed'),
          );
        for (const other of this.channels.keys()) this.subscribeTo(other);
        return;
      }
      this.emit('resubscribed');
    });
  }

  /** Redis must not evict: a lost stream or owner hash looks like Redis lost its data. */
  private async checkEvictionPolicy(): Promise<void> {
    try {
      const nodes: RedisClient[] =
        this.client instanceof Cluster ? this.client.nodes('master') : [this.client];
      const policies = await Promise.all(
        nodes.map(async (n) => ((await n.config('GET', 'maxmemory-policy')) as string[])[1] ?? ''),
      );
      const bad = policies.find((p) => p !== 'noeviction');
      this.evictionPolicy = bad ?? 'noeviction';
      if (bad !== undefined) {
        this.logger.error(
          { policy: bad },
          'Redis maxmemory-policy is not noeviction: evicted streams are sent again, fencing epochs may be lost',
        );
      }
    } catch {
      this.evictionPolicy = null; // CONFIG is often disabled on managed Redis
    }
  }
}
