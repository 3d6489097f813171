import { readFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import { backoffConfigSchema, backoffWarning } from '../common/backoff.js';
import { DEFAULT_STATE_DIR } from '../common/default-paths.js';
import { ConsoledError } from '../common/errors.js';
import { GUEST_ID_PATTERN } from '../common/guest-id.js';
import { consoleConfigSchema } from './console/console-config.js';
import { advertiseConfigSchema } from './http/advertise-config.js';
import { httpConfigSchema, trustedProxiesSchema } from './http/http-config.js';
import { libvirtConfigSchema } from './libvirt/libvirt-config.js';
import { handoffConfigSchema, redisConfigSchema } from './replication/replication-config.js';
import { sourceSchema } from './sources/create-source.js';

const MiB = 1024 * 1024;

const port = z.number().int().min(0).max(65535);

const rateLimitSchema = z
  .object({
    /** Sustained bytes per second; 0 turns the limit off. */
    bytesPerSec: z.number().int().min(0),
    burstBytes: z.number().int().min(1),
  })
  .strict();

const rotationSchema = z
  .object({
    maxFileBytes: z.number().int().min(4096),
    maxFiles: z.number().int().min(1).max(1000),
  })
  .strict();

/**
 * What a guest's capture does when its disk queue is above the high-water mark
 * (docs/design.md "Local store"): `block` stops reading the guest while the disk makes
 * progress, `drop` drops and marks at once.
 */
export const overflowSchema = z.enum(['block', 'drop']);
export type OverflowPolicy = z.infer<typeof overflowSchema>;

/** A guest as declared in the config file or attached with `PUT /v1/guests/{id}`. */
export const guestSpecSchema = z
  .object({
    source: sourceSchema,
    incoming: z.boolean().optional(),
    rateLimit: rateLimitSchema.optional(),
    rotation: rotationSchema.optional(),
    overflow: overflowSchema.optional(),
  })
  .strict();
export type GuestSpec = z.infer<typeof guestSpecSchema>;

const declaredGuestSchema = guestSpecSchema.extend({
  id: z.string().regex(GUEST_ID_PATTERN, 'invalid guest id'),
});

/**
 * Every default of the sections below, written once (README, "Configuration"). The
 * `console`, `http`, `redis` and `handoff` sections keep theirs in their own modules.
 */
export const CONFIG_DEFAULTS = {
  stateDir: DEFAULT_STATE_DIR,
  listen: { host: '127.0.0.1', port: 7070, tlsPort: 7443 },
  metrics: { requireAuth: true },
  audit: { file: null as string | null, maxFileBytes: 10 * MiB, maxFiles: 10 },
  limits: { maxGuests: 4096, maxBodyBytes: 64 * 1024 },
  defaults: {
    rotation: { maxFileBytes: 2 * MiB, maxFiles: 4 },
    rateLimit: { bytesPerSec: 256 * 1024, burstBytes: 4 * MiB },
    reconnect: { initialDelayMs: 100, maxDelayMs: 1000, minUptimeMs: 1000 },
    overflow: 'block' as OverflowPolicy,
    readCoalescing: { windowMs: 100, bulkBytesPerSec: 64 * 1024 },
  },
  hostRateLimit: { bytesPerSec: 0, burstBytes: 64 * MiB },
  store: {
    maxQueueBytes: 16 * MiB,
    maxWriteBytes: 4 * MiB,
    fileMode: '0640',
    diskRetryMs: 1000,
    closeTimeoutMs: 10_000,
    retention: { detachedAfterMs: 0, sweepIntervalMs: 3_600_000 },
    maxStallMs: 500,
    minProgressBytes: 64 * 1024,
  },
  exec: { cols: 80, rows: 24 },
  upgrade: { readyTimeoutMs: 30_000 },
} as const;

const D = CONFIG_DEFAULTS;

/** Every option with its unit in its name; defaults follow virtlogd and nova where they have one. */
export const configSchema = z
  .object({
    /** This host's name in the shared stream and in handoffs. */
    hostId: z
      .string()
      .regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/)
      .default(hostname()),
    stateDir: z.string().startsWith('/').default(D.stateDir),
    listen: z
      .object({
        host: z.string().default(D.listen.host),
        port: port.default(D.listen.port),
        /** A unix socket to listen on instead of TCP. */
        socketPath: z.string().startsWith('/').optional(),
        /**
         * A second listener serving the same API and consoles over TLS (https, wss), for
         * browsers on other machines (README "TLS"). The plain listener stays for the
         * host's own tools. `cert` and `key` are PEM files, read again at every reload.
         */
        tls: z
          .object({
            /** Defaults to `listen.host`. */
            host: z.string().optional(),
            port: port.default(D.listen.tlsPort),
            cert: z.string().startsWith('/'),
            key: z.string().startsWith('/'),
          })
          .strict()
          .optional(),
      })
      .strict()
      .prefault({}),
    /**
     * The URLs other hosts and browsers use to reach this host, published in the host
     * registry (docs/design.md "Host registry"); derived from `listen` when absent, which
     * is right only for a single host. See http/advertise-config.ts.
     */
    advertise: advertiseConfigSchema,
    /** Admin bearer token; when absent one is generated into `<stateDir>/admin-token`. */
    adminToken: z.string().min(16).optional(),
    adminTokenFile: z.string().startsWith('/').optional(),
    /** HTTP timeouts and connection limits; see http-config.ts. */
    http: httpConfigSchema,
    /**
     * Addresses (IPs or CIDRs) of reverse proxies whose forwarded headers (client
     * address, scheme, host) are believed. @default []
     */
    trustedProxies: trustedProxiesSchema,
    metrics: z
      .object({
        /** Whether `GET /metrics` needs the admin token (it names guests and the host). */
        requireAuth: z.boolean().default(D.metrics.requireAuth),
      })
      .strict()
      .prefault({}),
    /** A file of its own for the audit lines (they go to the daemon's log in any case). */
    audit: z
      .object({
        /** Absolute path, in a directory only consoled writes (/var/log/consoled); null: none. */
        file: z.string().startsWith('/').nullable().default(D.audit.file),
        maxFileBytes: z.number().int().min(4096).default(D.audit.maxFileBytes),
        maxFiles: z.number().int().min(1).max(1000).default(D.audit.maxFiles),
      })
      .strict()
      .prefault({}),
    limits: z
      .object({
        maxGuests: z.number().int().min(1).default(D.limits.maxGuests),
        maxBodyBytes: z.number().int().min(1024).default(D.limits.maxBodyBytes),
      })
      .strict()
      .prefault({}),
    defaults: z
      .object({
        rotation: rotationSchema.default(D.defaults.rotation),
        rateLimit: rateLimitSchema.default(D.defaults.rateLimit),
        /** Source reconnect backoff (jittered; see common/backoff.ts). */
        reconnect: backoffConfigSchema(D.defaults.reconnect)
          .extend({
            /** A connection lasting this long is established (sources/source.ts). */
            minUptimeMs: z.number().int().min(1).default(D.defaults.reconnect.minUptimeMs),
          })
          .prefault({}),
        /** A guest's overflow policy unless its spec sets one (docs/design.md "Local store"). */
        overflow: overflowSchema.default(D.defaults.overflow),
        /** Small reads during bulk output wait a short window to be read as one (sources/read-coalescer.ts). */
        readCoalescing: z
          .object({
            windowMs: z.number().int().min(0).max(100).default(D.defaults.readCoalescing.windowMs),
            bulkBytesPerSec: z.number().int().min(0).default(D.defaults.readCoalescing.bulkBytesPerSec),
          })
          .strict()
          .prefault({}),
      })
      .strict()
      .prefault({}),
    /** The host-wide bucket every guest draws from as well; 0 turns it off. */
    hostRateLimit: rateLimitSchema.default(D.hostRateLimit),
    store: z
      .object({
        /** Bytes a guest may hold in memory while its disk is slow or failing. */
        maxQueueBytes: z
          .number()
          .int()
          .min(64 * 1024)
          .default(D.store.maxQueueBytes),
        maxWriteBytes: z.number().int().min(4096).default(D.store.maxWriteBytes),
        fileMode: z
          .string()
          .regex(/^0?[0-7]{3}$/)
          .default(D.store.fileMode),
        diskRetryMs: z.number().int().min(10).default(D.store.diskRetryMs),
        closeTimeoutMs: z.number().int().min(0).default(D.store.closeTimeoutMs),
        /** Detached guests' directories (docs/design.md "Retention"). */
        retention: z
          .object({
            /** A detached guest's directory with no write for this long is removed; 0 keeps it. */
            detachedAfterMs: z.number().int().min(0).default(D.store.retention.detachedAfterMs),
            /** How often the guests' directories are looked over. */
            sweepIntervalMs: z.number().int().min(10).default(D.store.retention.sweepIntervalMs),
          })
          .strict()
          .prefault({}),
        /**
         * The disk is stalled when it acknowledged fewer than `minProgressBytes` in the
         * last `maxStallMs`: a guest under `overflow: block` is then read again and its
         * output dropped and marked, so a stuck disk never stalls the guest.
         */
        maxStallMs: z.number().int().min(10).default(D.store.maxStallMs),
        minProgressBytes: z.number().int().min(1).default(D.store.minProgressBytes),
      })
      .strict()
      .prefault({}),
    exec: z
      .object({
        cols: z.number().int().min(1).default(D.exec.cols),
        rows: z.number().int().min(1).default(D.exec.rows),
      })
      .strict()
      .prefault({}),
    /** The in-place upgrade (docs/design.md "Upgrade"). */
    upgrade: z
      .object({
        /** How long the successor may take to become ready before the upgrade is called off. */
        readyTimeoutMs: z.number().int().min(100).default(D.upgrade.readyTimeoutMs),
      })
      .strict()
      .prefault({}),
    /** Settings of other subsystems (console, redis, handoff) live in their own sections. */
    console: consoleConfigSchema,
    /** Replication to a shared Redis stream; off when absent. See replication/replication-config.ts. */
    redis: redisConfigSchema.optional(),
    handoff: handoffConfigSchema,
    /** The libvirt QEMU hook and its spool; see libvirt/libvirt-config.ts. */
    libvirt: libvirtConfigSchema,
    guests: z.array(declaredGuestSchema).default([]),
  })
  .strict();

export type Config = z.infer<typeof configSchema>;

function deepFreeze<T>(value: T): T {
  if (value && typeof value === 'object') {
    for (const v of Object.values(value)) deepFreeze(v);
    Object.freeze(value);
  }
  return value;
}

/** Validates a parsed config document; errors name the field. Returns a deep-frozen copy. */
export function validateConfig(raw: unknown, source = 'config'): Readonly<Config> {
  const result = configSchema.safeParse(raw ?? {});
  if (!result.success) {
    const problems = result.error.issues.map(
      (i) => `${i.path.length ? i.path.join('.') : '(top level)'}: ${i.message}`,
    );
    throw new ConsoledError('BAD_CONFIG', `${source}: ${problems.join('; ')}`, { problems });
  }
  const ids = new Set<string>();
  for (const g of result.data.guests) {
    if (ids.has(g.id)) throw new ConsoledError('BAD_CONFIG', `${source}: guests: duplicate id ${g.id}`);
    ids.add(g.id);
  }
  return deepFreeze(result.data);
}

/**
 * What a valid config does that is likely a mistake, one sentence each, for the daemon
 * to log at start. Such a config stays accepted: it was accepted before the check.
 */
export function configWarnings(config: Readonly<Config>): string[] {
  const warnings = [backoffWarning('defaults.reconnect', config.defaults.reconnect)];
  if (config.redis) warnings.push(backoffWarning('redis.reconnect', config.redis.reconnect));
  return warnings.filter((w): w is string => w !== null);
}

function parseJsonOrYaml(text: string): unknown {
  if (/^\s*\{/.test(text)) {
    try {
      return JSON.parse(text);
    } catch {
      // YAML's flow style looks like JSON too: the YAML parser decides
    }
  }
  return parseYaml(text);
}

/** Reads and validates a YAML config file (JSON is YAML too). */
export async function loadConfig(path: string): Promise<Readonly<Config>> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    throw new ConsoledError('BAD_CONFIG', `${path}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`);
  }
  let raw: unknown;
  try {
    // JSON is YAML too, but the YAML parser takes far longer over a large JSON file
    // (a thousand declared guests); a file that is not JSON goes to it.
    raw = parseJsonOrYaml(text);
  } catch (err) {
    throw new ConsoledError('BAD_CONFIG', `${path}: not valid YAML: ${(err as Error).message}`);
  }
  return validateConfig(raw, path);
}

export function fileModeOf(config: Readonly<Pick<Config, 'store'>>): number {
  return Number.parseInt(config.store.fileMode, 8);
}
