/**
 * The `redis` and `handoff` sections of the configuration (docs/replication.md,
 * "Configuration"). Every default is written once, in `REDIS_DEFAULTS` and
 * `HANDOFF_DEFAULTS`.
 */
import { z } from 'zod';
import { backoffConfigSchema } from '../../common/backoff.js';
import { DEFAULT_KEY_PREFIX } from '../../store/replication/redis-keys.js';

const KiB = 1024;
const MiB = 1024 * KiB;

export const REDIS_DEFAULTS = {
  keyPrefix: DEFAULT_KEY_PREFIX,
  retentionBytes: 16 * MiB,
  segmentMaxBytes: 64 * KiB,
  segmentMaxAgeMs: 80,
  recentBytesPerGuest: 256 * KiB,
  maxInFlightSegments: 64,
  maxInFlightBytes: 16 * MiB,
  connectTimeoutMs: 5_000,
  commandTimeoutMs: 5_000,
  reconnect: { initialDelayMs: 100, maxDelayMs: 10_000 },
  followBlockMs: 5_000,
  stateSaveIntervalMs: 30_000,
  drainTimeoutMs: 5_000,
  retention: { goneAfterMs: 30 * 24 * 3_600_000, sweepIntervalMs: 60_000, sweepBatch: 100 },
  memory: { checkIntervalMs: 30_000, warnFraction: 0.8 },
  hosts: { heartbeatMs: 5_000, ttlMs: 30_000 },
} as const;

export const HANDOFF_DEFAULTS = {
  completionTimeoutMs: 10_000,
  timeoutAction: 'force_complete',
  pollIntervalMs: 5_000,
  sealPollIntervalMs: 100,
  drainQuietMs: 50,
  drainTimeoutMs: 2_000,
} as const;

const endpoint = z.object({ host: z.string().min(1), port: z.number().int().min(1).max(65535) }).strict();

const tlsSchema = z
  .object({
    /** CA bundle (PEM) to verify the server with; the system CAs when absent. */
    caFile: z.string().startsWith('/').optional(),
    /** Client certificate and key (PEM), for servers that require mutual TLS. */
    certFile: z.string().startsWith('/').optional(),
    keyFile: z.string().startsWith('/').optional(),
    /** Name to verify the certificate against (SNI); the host name when absent. */
    servername: z.string().min(1).optional(),
    /** Only for test setups with self-signed certificates. @default true */
    rejectUnauthorized: z.boolean().default(true),
  })
  .strict();

/**
 * `redis:` in the config file. Exactly one of `url`, `sentinels` (with `name`) or
 * `cluster`. Without a `redis` section replication is off (the embedded demo).
 *
 * Redis must run with `maxmemory-policy noeviction`: an evicted stream or owner hash
 * would look like a Redis that lost its data (the history is re-sent, and a fencing
 * epoch may be lost). consoled checks the policy at connect and logs an error if not.
 */
export const redisConfigSchema = z
  .object({
    /** `redis://[user:password@]host:port[/db]` or `rediss://...` (TLS). */
    url: z
      .string()
      .regex(/^rediss?:\/\//, 'must start with redis:// or rediss://')
      .optional(),
    /** Redis Sentinel: the sentinels to ask for the master named `name`. */
    sentinels: z.array(endpoint).min(1).optional(),
    name: z.string().min(1).optional(),
    sentinelUsername: z.string().min(1).optional(),
    sentinelPassword: z.string().min(1).optional(),
    /** Redis Cluster: some of the cluster's nodes (the rest are discovered). */
    cluster: z
      .object({ nodes: z.array(endpoint).min(1) })
      .strict()
      .optional(),
    username: z.string().min(1).optional(),
    password: z.string().min(1).optional(),
    /** A file holding the password (first line), instead of `password`. */
    passwordFile: z.string().startsWith('/').optional(),
    /** TLS towards Redis (and the sentinels); `rediss://` turns it on too. */
    tls: tlsSchema.optional(),
    db: z.number().int().min(0).optional(),
    /** Prefix of every key, so several deployments can share one Redis. No braces. */
    keyPrefix: z
      .string()
      .max(64)
      .regex(/^[^{}]*$/, 'must not contain braces (they would move the hash tag)')
      .default(REDIS_DEFAULTS.keyPrefix),
    /** Bytes of the newest history kept in the stream per guest, trimmed by offset. */
    retentionBytes: z
      .number()
      .int()
      .min(64 * KiB)
      .default(REDIS_DEFAULTS.retentionBytes),
    /** A segment (stream entry) holds at most this many bytes. */
    segmentMaxBytes: z
      .number()
      .int()
      .min(512)
      .max(16 * MiB)
      .default(REDIS_DEFAULTS.segmentMaxBytes),
    /** A segment is sent once its oldest byte is this old, even if smaller. */
    segmentMaxAgeMs: z.number().int().min(0).max(60_000).default(REDIS_DEFAULTS.segmentMaxAgeMs),
    /**
     * Recent output each guest keeps in memory so segments are sent without reading the
     * files back; past it (a flood, an outage) they are read from the local log.
     */
    recentBytesPerGuest: z.number().int().min(0).default(REDIS_DEFAULTS.recentBytesPerGuest),
    /** Appends of one guest pipelined on the connection before waiting for replies. */
    maxInFlightSegments: z.number().int().min(1).max(64).default(REDIS_DEFAULTS.maxInFlightSegments),
    /**
     * Bytes of all guests' appends in flight at most (store/replication/in-flight-budget.ts);
     * a guest with none in flight may always send one.
     */
    maxInFlightBytes: z
      .number()
      .int()
      .min(64 * KiB)
      .default(REDIS_DEFAULTS.maxInFlightBytes),
    connectTimeoutMs: z.number().int().min(100).default(REDIS_DEFAULTS.connectTimeoutMs),
    /** A command without a reply after this long fails (a hung server). */
    commandTimeoutMs: z.number().int().min(100).default(REDIS_DEFAULTS.commandTimeoutMs),
    /** Backoff between connection attempts (jittered; see common/backoff.ts). */
    reconnect: backoffConfigSchema(REDIS_DEFAULTS.reconnect).prefault({}),
    /** How long one blocking read of a `follow` waits before it looks again. */
    followBlockMs: z.number().int().min(10).default(REDIS_DEFAULTS.followBlockMs),
    /** The replication cursor is saved at most this often (it is a hint: the stream is the truth). */
    stateSaveIntervalMs: z.number().int().min(10).default(REDIS_DEFAULTS.stateSaveIntervalMs),
    /** At shutdown and detach, how long replication may take to publish what is left. */
    drainTimeoutMs: z.number().int().min(0).default(REDIS_DEFAULTS.drainTimeoutMs),
    /** Expiry of the streams of guests that are gone (docs/design.md "Retention"). */
    retention: z
      .object({
        /**
         * A released stream (nobody owns it) with no release and no append for this long
         * is deleted with its keys; 0 keeps streams forever.
         */
        goneAfterMs: z.number().int().min(0).default(REDIS_DEFAULTS.retention.goneAfterMs),
        /** How often each host takes one step of its sweep over the owner records. */
        sweepIntervalMs: z.number().int().min(10).default(REDIS_DEFAULTS.retention.sweepIntervalMs),
        /** Keys one step asks SCAN for (its COUNT), per Redis node. */
        sweepBatch: z.number().int().min(1).max(10_000).default(REDIS_DEFAULTS.retention.sweepBatch),
      })
      .strict()
      .prefault({}),
    /** The watch on Redis' memory (`INFO memory`). */
    memory: z
      .object({
        /** How often `used_memory` and `maxmemory` are read. */
        checkIntervalMs: z.number().int().min(10).default(REDIS_DEFAULTS.memory.checkIntervalMs),
        /** A warning is logged when used_memory passes this fraction of maxmemory. */
        warnFraction: z.number().gt(0).max(1).default(REDIS_DEFAULTS.memory.warnFraction),
      })
      .strict()
      .prefault({}),
    /** This host's entry in the host registry (docs/design.md "Host registry"). */
    hosts: z
      .object({
        /** How often the entry is published again (and at once after every reconnect). */
        heartbeatMs: z.number().int().min(50).default(REDIS_DEFAULTS.hosts.heartbeatMs),
        /** The entry's TTL: a host that stops publishing drops out of the listing after this long. */
        ttlMs: z.number().int().min(100).default(REDIS_DEFAULTS.hosts.ttlMs),
      })
      .strict()
      .prefault({})
      .refine((h) => h.ttlMs > h.heartbeatMs, {
        path: ['ttlMs'],
        message: 'must be longer than hosts.heartbeatMs, or a live host drops out between two beats',
      }),
  })
  .strict()
  .superRefine((value, ctx) => {
    const kinds = [value.url, value.sentinels, value.cluster].filter((v) => v !== undefined).length;
    if (kinds !== 1) {
      ctx.addIssue({ code: 'custom', message: 'give exactly one of url, sentinels (with name) or cluster' });
    }
    if (value.sentinels && !value.name) {
      ctx.addIssue({ code: 'custom', path: ['name'], message: 'sentinels need the master name' });
    }
    if (value.password && value.passwordFile) {
      ctx.addIssue({
        code: 'custom',
        path: ['passwordFile'],
        message: 'give password or passwordFile, not both',
      });
    }
    if (value.cluster && value.db !== undefined) {
      ctx.addIssue({ code: 'custom', path: ['db'], message: 'Redis Cluster has only database 0' });
    }
  });

export type RedisConfig = z.infer<typeof redisConfigSchema>;

/** What a migration's destination does when the source does not seal in time. */
export type HandoffTimeoutAction = 'force_complete' | 'abort';

/** `handoff:` in the config file (docs/replication.md, "Migration handoff"). */
export const handoffConfigSchema = z
  .object({
    /** From the destination's claim to the source's seal, at most this long. */
    completionTimeoutMs: z.number().int().min(100).default(HANDOFF_DEFAULTS.completionTimeoutMs),
    /** `force_complete`: fence the source and publish; `abort`: keep spooling until the seal or an operator. */
    timeoutAction: z.enum(['force_complete', 'abort']).default(HANDOFF_DEFAULTS.timeoutAction),
    /**
     * How often an owner looks for a pending handoff of each of its guests, in case a
     * notification was lost; the notification (Redis pub/sub) is the fast path.
     */
    pollIntervalMs: z.number().int().min(50).default(HANDOFF_DEFAULTS.pollIntervalMs),
    /** How often a destination waiting for the seal looks at the owner record. */
    sealPollIntervalMs: z.number().int().min(10).default(HANDOFF_DEFAULTS.sealPollIntervalMs),
    /** The source's chardev counts as drained after this long without a byte. */
    drainQuietMs: z.number().int().min(0).default(HANDOFF_DEFAULTS.drainQuietMs),
    /** ...or after this long in all, whatever still comes. */
    drainTimeoutMs: z.number().int().min(0).default(HANDOFF_DEFAULTS.drainTimeoutMs),
  })
  .strict()
  .prefault({});

export type HandoffConfig = z.infer<typeof handoffConfigSchema>;
