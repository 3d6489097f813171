/**
 * The watch on Redis' memory (README "Retention and capacity"): Redis runs with
 * `noeviction`, so once `used_memory` reaches `maxmemory` every append fails. Reads
 * `INFO memory` on the replication connection every `redis.memory.checkIntervalMs`
 * (on a Cluster, every master, reporting the fullest), keeps the numbers for the
 * metrics, and logs one warning per episode above `redis.memory.warnFraction` (and a
 * line when it is over), and one warning when `maxmemory` is 0: nothing bounds Redis
 * short of the machine's memory.
 */
import { Cluster } from 'ioredis';
import type { Logger } from 'pino';
import type { RedisClient } from '../../store/replication/redis-commands.js';
import type { MetricFamily } from '../http/metrics.js';
import type { RedisConnection } from './redis-connection.js';
import type { RedisConfig } from './replication-config.js';

/** `unknown`: not read yet; `unbounded`: maxmemory is 0; `high`: above the warning fraction. */
export type RedisMemoryLevel = 'unknown' | 'ok' | 'high' | 'unbounded';

export interface RedisMemoryReading {
  readonly usedBytes: number;
  /** 0: no limit. */
  readonly maxBytes: number;
}

/** `used_memory` and `maxmemory` from an `INFO memory` reply. */
export function parseMemoryInfo(info: string): RedisMemoryReading {
  const field = (name: string): number => {
    const match = new RegExp(`^${name}:(\\d+)\\r?$`, 'm').exec(info);
    return match ? Number(match[1]) : 0;
  };
  return { usedBytes: field('used_memory'), maxBytes: field('maxmemory') };
}

function fraction(r: RedisMemoryReading): number {
  return r.maxBytes > 0 ? r.usedBytes / r.maxBytes : 0;
}

export class RedisMemoryWatch {
  private reading: RedisMemoryReading | null = null;
  private levelValue: RedisMemoryLevel = 'unknown';
  private warnedUnbounded = false;
  private readonly timer: NodeJS.Timeout;
  private readonly logger: Logger;
  private checking = false;

  constructor(
    private readonly connection: RedisConnection,
    private readonly config: RedisConfig['memory'],
    logger: Logger,
  ) {
    this.logger = logger.child({ component: 'redis' });
    this.timer = setInterval(() => void this.check(), config.checkIntervalMs);
    this.timer.unref();
    connection.on('state', ({ to }) => {
      if (to === 'ready') void this.check();
    });
    if (connection.ready) void this.check();
  }

  get level(): RedisMemoryLevel {
    return this.levelValue;
  }

  get last(): RedisMemoryReading | null {
    return this.reading;
  }

  stop(): void {
    clearInterval(this.timer);
  }

  /** Reads `INFO memory` now (skipped while Redis is away or a read is under way). */
  async check(): Promise<void> {
    if (this.checking || !this.connection.ready) return;
    this.checking = true;
    try {
      const client = this.connection.client;
      const nodes: RedisClient[] = client instanceof Cluster ? client.nodes('master') : [client];
      const readings = await Promise.all(nodes.map(async (n) => parseMemoryInfo(await n.info('memory'))));
      // The fullest node is the one that refuses appends first; an unbounded one counts as unbounded.
      const unbounded = readings.find((r) => r.maxBytes === 0);
      const fullest = readings.reduce((a, b) => (fraction(b) > fraction(a) ? b : a));
      this.update(unbounded ?? fullest);
    } catch (err) {
      this.logger.debug({ err: String(err) }, 'INFO memory failed; read again at the next check');
    } finally {
      this.checking = false;
    }
  }

  private update(r: RedisMemoryReading): void {
    this.reading = r;
    const from = this.levelValue;
    const to: RedisMemoryLevel =
      r.maxBytes === 0 ? 'unbounded' : fraction(r) >= this.config.warnFraction ? 'high' : 'ok';
    this.levelValue = to;
    const details = { usedBytes: r.usedBytes, maxBytes: r.maxBytes, warnFraction: this.config.warnFraction };
    if (to === 'high' && from !== 'high') {
      this.logger.warn(
        { ...details, fraction: Number(fraction(r).toFixed(3)) },
        'redis memory is near maxmemory: appends fail once it is reached (noeviction); purge or expire history, or raise maxmemory',
      );
    } else if (from === 'high' && to !== 'high') {
      this.logger.info(details, 'redis memory is below the warning fraction again');
    }
    if (to === 'unbounded' && !this.warnedUnbounded) {
      this.warnedUnbounded = true;
      this.logger.warn(
        details,
        'redis has no maxmemory: nothing bounds its memory short of the machine; set maxmemory (README "Retention and capacity")',
      );
    }
  }

  metrics(): MetricFamily[] {
    const r = this.reading;
    if (!r) return [];
    return [
      {
        name: 'consoled_redis_used_memory_bytes',
        help: 'used_memory of Redis as last read (INFO memory; on a Cluster, the fullest master).',
        type: 'gauge',
        samples: [{ value: r.usedBytes }],
      },
      {
        name: 'consoled_redis_maxmemory_bytes',
        help: 'maxmemory of Redis as last read; 0: no limit.',
        type: 'gauge',
        samples: [{ value: r.maxBytes }],
      },
      {
        name: 'consoled_redis_memory_high',
        help: '1 while used_memory is above redis.memory.warnFraction of maxmemory.',
        type: 'gauge',
        samples: [{ value: this.levelValue === 'high' ? 1 : 0 }],
      },
    ];
  }
}
