import type { Replicator } from '../../store/replication/replicator.js';
import { type MetricFamily, perGuestFamily } from '../http/metrics.js';
import type { RedisConnection } from './redis-connection.js';

const CONNECTION_STATES = ['connecting', 'ready', 'reconnecting', 'closed'] as const;

type HandoffCounter = 'handoffsCompleted' | 'handoffsForced' | 'handoffsAborted' | 'handoffsCancelled';

/** What the metrics read from replication (the ReplicationService). */
export interface ReplicationMetricsSource {
  /** Every live replicator, with its guest id. */
  replicators(): Array<[string, Replicator]>;
  /** Handoff totals of replicators that are gone. */
  readonly retired: Readonly<Record<HandoffCounter, number>>;
  readonly connection: RedisConnection;
}

/** Replication metrics, read from the live replicators when scraped. */
export function replicationMetrics(service: ReplicationMetricsSource): () => MetricFamily[] {
  return () => {
    const now = service.replicators().map(([id, r]) => ({ id, r, s: r.status() }));
    const per = perGuestFamily(now);
    const sum = (f: (x: (typeof now)[number]) => number): number => now.reduce((a, x) => a + f(x), 0);
    const handoffs = (kind: HandoffCounter): number => service.retired[kind] + sum((x) => x.r.counters[kind]);
    const conn = service.connection;
    return [
      {
        name: 'consoled_redis_connection_state',
        help: '1 for the current state of the Redis connection.',
        type: 'gauge',
        samples: CONNECTION_STATES.map((state) => ({
          labels: { state },
          value: conn.state === state ? 1 : 0,
        })),
      },
      {
        name: 'consoled_redis_connects_total',
        help: 'Connections made to Redis.',
        type: 'counter',
        samples: [{ value: conn.counters.connects }],
      },
      {
        name: 'consoled_redis_eviction_policy_ok',
        help: '1 when Redis runs with maxmemory-policy noeviction, 0 when not, -1 when unknown.',
        type: 'gauge',
        samples: [
          { value: conn.evictionPolicy === null ? -1 : conn.evictionPolicy === 'noeviction' ? 1 : 0 },
        ],
      },
      per(
        'consoled_replication_lag_bytes',
        'Bytes in the local log not yet in the stream.',
        'gauge',
        (x) => x.s.lagBytes,
      ),
      per(
        'consoled_replication_lag_seconds',
        'Age of the oldest byte not yet in the stream.',
        'gauge',
        (x) => x.s.lagSeconds,
      ),
      {
        name: 'consoled_replication_backlog_bytes',
        help: 'Bytes of every guest waiting in local logs for the stream.',
        type: 'gauge',
        samples: [{ value: sum((x) => x.s.lagBytes) }],
      },
      per('consoled_replication_owner', "1 while this host writes the guest's stream.", 'gauge', (x) =>
        x.r.writing ? 1 : 0,
      ),
      {
        name: 'consoled_replication_role',
        help: '1 for this host\'s ownership role of each guest (docs/design.md "Ownership").',
        type: 'gauge',
        samples: now.map((x) => ({ labels: { guest: x.id, role: x.s.role }, value: 1 })),
      },
      per(
        'consoled_replication_known_epoch',
        "The highest fencing epoch this host has known for the guest (its own or another host's).",
        'gauge',
        (x) => x.s.knownEpoch,
      ),
      per(
        'consoled_replication_releases_total',
        'Streams this host released at a DELETE of their guest.',
        'counter',
        (x) => x.r.counters.releases,
      ),
      per(
        'consoled_replication_epoch',
        'The fencing epoch this host holds or held.',
        'gauge',
        (x) => x.s.epoch,
      ),
      per(
        'consoled_replication_appended_bytes_total',
        'Bytes appended to the stream.',
        'counter',
        (x) => x.r.counters.appendedBytes,
      ),
      per(
        'consoled_replication_appends_total',
        'Segments appended to the stream.',
        'counter',
        (x) => x.r.counters.appends,
      ),
      per(
        'consoled_replication_duplicates_total',
        'Re-sent segments the stream already held.',
        'counter',
        (x) => x.r.counters.duplicates,
      ),
      per(
        'consoled_replication_skipped_bytes_total',
        'Bytes the stream skipped: rotated away locally before they were sent.',
        'counter',
        (x) => x.s.skippedBytes,
      ),
      per(
        'consoled_replication_unpublished_bytes',
        'Bytes kept locally that the stream will not get (fenced, handed off, spooled).',
        'gauge',
        (x) => x.s.unpublishedBytes + x.s.spooledBytes,
      ),
      per(
        'consoled_replication_redis_data_losses_total',
        "Times Redis was found without the guest's stream.",
        'counter',
        (x) => x.r.counters.redisDataLosses,
      ),
      per(
        'consoled_replication_lost_tails_total',
        'Times the stream had lost its tail (a failover).',
        'counter',
        (x) => x.r.counters.lostTails,
      ),
      per(
        'consoled_replication_fenced_total',
        'Times this host found itself fenced out.',
        'counter',
        (x) => x.r.counters.fenced,
      ),
      {
        name: 'consoled_handoffs_total',
        help: 'Migration handoffs by outcome, on this host (source or destination).',
        type: 'counter',
        samples: [
          { labels: { result: 'completed' }, value: handoffs('handoffsCompleted') },
          { labels: { result: 'forced' }, value: handoffs('handoffsForced') },
          { labels: { result: 'aborted' }, value: handoffs('handoffsAborted') },
          { labels: { result: 'cancelled' }, value: handoffs('handoffsCancelled') },
        ],
      },
    ];
  };
}
