/**
 * This host's entry in the host registry (docs/design.md "Host registry"): published
 * once the API listens, again every `redis.hosts.heartbeatMs` with a TTL of
 * `redis.hosts.ttlMs`, and at once after every (re)connect, since a restarted Redis
 * may have come back empty. Its timer is unref'd: the heartbeat never keeps the
 * process alive. A shutdown takes the entry out; an upgrade leaves it: the successor
 * has the same host id and takes the heartbeat over (the old process pauses while
 * the handover runs and stops when it retires).
 */
import type { Logger } from 'pino';
import { ConsoledError } from '../../common/errors.js';
import type { HostAnnouncement, HostRecord, HostRegistry } from '../../store/replication/host-registry.js';
import type { RedisConnection, RedisConnectionState } from './redis-connection.js';
import type { RedisConfig } from './replication-config.js';

export class HostHeartbeat {
  /** What `GET /v1/hosts` answers from (sidecar/http/hosts-route.ts). */
  readonly kind = 'redis';
  private self: HostAnnouncement | null = null;
  private timer: NodeJS.Timeout | null = null;
  private paused = false;
  private stopped = false;
  private stopping: Promise<void> | null = null;
  private beating: Promise<void> | null = null;
  /** A beat was asked for while one ran. */
  private again = false;
  /** Whether the last beat failed: one warning per episode. */
  private failing = false;
  private readonly logger: Logger;
  readonly counters = { beats: 0, failures: 0 };
  private readonly onState = ({ to }: { to: RedisConnectionState }): void => {
    if (to === 'ready') void this.beat();
  };

  constructor(
    private readonly connection: RedisConnection,
    private readonly registry: HostRegistry,
    private readonly config: RedisConfig['hosts'],
    logger: Logger,
  ) {
    this.logger = logger.child({ component: 'hosts' });
  }

  /** Starts publishing `self` (the API listens: its URLs are known). */
  start(self: HostAnnouncement): void {
    if (this.stopped || this.self) return;
    this.self = self;
    this.timer = setInterval(() => void this.beat(), this.config.heartbeatMs);
    this.timer.unref();
    this.connection.on('state', this.onState);
    void this.beat();
  }

  /** An upgrade under way: its successor publishes the entry; no beat from here meanwhile. */
  pause(): void {
    this.paused = true;
  }

  /** The upgrade failed: this process is the host again, and says so at once. */
  resume(): void {
    this.paused = false;
    void this.beat();
  }

  /**
   * Stops the heartbeat; `remove` takes the entry out of the registry (a shutdown),
   * otherwise it stays until its TTL or the successor's next beat (an upgrade).
   */
  stop(options: { remove: boolean }): Promise<void> {
    this.stopping ??= this.leave(options.remove);
    return this.stopping;
  }

  private async leave(remove: boolean): Promise<void> {
    this.stopped = true;
    if (this.timer) clearInterval(this.timer);
    this.connection.off('state', this.onState);
    await this.beating;
    const self = this.self;
    if (!remove || !self || !this.connection.ready) return;
    try {
      await this.registry.remove(self.hostId);
      this.logger.info({ hostId: self.hostId }, 'left the host registry');
    } catch (err) {
      this.logger.warn(
        { err: String(err) },
        'could not leave the host registry; the entry expires by itself',
      );
    }
  }

  /** The registry's hosts; REPLICATION_UNAVAILABLE while Redis does not answer. */
  async list(): Promise<HostRecord[]> {
    if (!this.connection.ready)
      throw new ConsoledError('REPLICATION_UNAVAILABLE', 'Redis is not reachable from this host');
    try {
      return await this.registry.list();
    } catch (err) {
      throw new ConsoledError('REPLICATION_UNAVAILABLE', `listing the hosts failed: ${String(err)}`);
    }
  }

  private beat(): Promise<void> {
    const self = this.self;
    if (!self || this.paused || this.stopped || !this.connection.ready) return Promise.resolve();
    if (this.beating) {
      // A reconnect during a beat: that beat may have failed, so one more follows it.
      this.again = true;
      return this.beating;
    }
    const beating = (async () => {
      try {
        await this.registry.publish(self, this.config.ttlMs);
        this.counters.beats++;
        if (this.failing) this.logger.info({ hostId: self.hostId }, 'host registry entry published again');
        this.failing = false;
      } catch (err) {
        this.counters.failures++;
        if (!this.failing)
          this.logger.warn(
            { err: String(err) },
            'publishing this host in the registry failed; retried at the next beat',
          );
        this.failing = true;
      } finally {
        this.beating = null;
      }
      if (this.again) {
        this.again = false;
        await this.beat();
      }
    })();
    this.beating = beating;
    return beating;
  }
}
