/**
 * The `console` section of the configuration: the WebSocket console's buffers,
 * limits, timeouts and auth. Every option has its unit in its name and a default.
 */
import { z } from 'zod';
import { GUEST_ID_PATTERN } from '../../common/guest-id.js';
import { validateOriginAllowlist } from './origin-check.js';
import { DEFAULT_MAX_KEYSTROKE_FRAME_BYTES } from './protocol.js';

const KiB = 1024;
const MiB = 1024 * KiB;

const perGuestSchema = z
  .object({
    /** Viewers of this guest at once. @default console.maxViewersPerGuest */
    maxViewers: z.number().int().min(1).optional(),
    /** Whether a `rw` viewer may take the writer lock from another. @default console.allowTakeover */
    allowTakeover: z.boolean().optional(),
  })
  .strict();

const allowedOrigins = z
  .array(z.string())
  .default([])
  .transform((entries, ctx) => {
    try {
      return validateOriginAllowlist(entries);
    } catch (err) {
      ctx.addIssue({ code: 'custom', message: (err as Error).message });
      return z.NEVER;
    }
  });

export const CONSOLE_DEFAULTS = {
  replayBytes: 64 * KiB,
  viewerBufferBytes: 1 * MiB,
  socketHighWaterBytes: 256 * KiB,
  slowViewerTimeoutMs: 30_000,
  coalesceMs: 25,
  bulkBytesPerSec: 64 * KiB,
  maxFramesPerSec: 20_000,
  maxFrameBytes: 64 * KiB,
  maxKeystrokeFrameBytes: DEFAULT_MAX_KEYSTROKE_FRAME_BYTES,
  keystrokeBytesPerSec: 64 * KiB,
  keystrokeBurstBytes: 1 * MiB,
  authTimeoutMs: 5000,
  idleTimeoutMs: 3_600_000,
  keepaliveIntervalMs: 30_000,
  maxViewersPerGuest: 64,
  maxConnections: 1024,
  maxPendingConnections: 128,
  maxPendingPerAddress: 8,
  refusalEpisodeMs: 10_000,
  allowTakeover: true,
  writerReservationMs: 5000,
  maxTokenTtlMs: 86_400_000,
  maxSessionTtlMs: 43_200_000,
  maxUsedTokens: 100_000,
} as const;

/** `console:` in the config file (README "WebSocket console", "Configuration"). */
export const consoleConfigSchema = z
  .object({
    /** Recent output a viewer gets first when it joins without `from`. @default 64 KiB */
    replayBytes: z
      .number()
      .int()
      .min(0)
      .max(64 * MiB)
      .default(CONSOLE_DEFAULTS.replayBytes),
    /** Output queued for one viewer beyond which it skips ahead (`skipped`). @default 1 MiB */
    viewerBufferBytes: z
      .number()
      .int()
      .min(4 * KiB)
      .max(256 * MiB)
      .default(CONSOLE_DEFAULTS.viewerBufferBytes),
    /** A viewer's socket buffer (`bufferedAmount`) above which nothing more is handed to it. @default 256 KiB */
    socketHighWaterBytes: z
      .number()
      .int()
      .min(1 * KiB)
      .default(CONSOLE_DEFAULTS.socketHighWaterBytes),
    /** A viewer behind (skipping) continuously for this long is closed with 4429 VIEWER_TOO_SLOW. @default 30000 */
    slowViewerTimeoutMs: z.number().int().min(100).default(CONSOLE_DEFAULTS.slowViewerTimeoutMs),
    /**
     * During bulk output, frames to viewers are coalesced over this window: on
     * loopback a frame costs a viewer's socket about 20 µs of kernel time whatever its
     * size, so 40 frames a second to 100 viewers cost a tenth of what one per 1 KiB
     * chunk would. Interactive output is never delayed (flush-pacer.ts). @default 25
     */
    coalesceMs: z.number().int().min(0).max(1000).default(CONSOLE_DEFAULTS.coalesceMs),
    /** Output rate above which a guest's output counts as bulk and is coalesced. @default 64 KiB/s */
    bulkBytesPerSec: z.number().int().min(0).default(CONSOLE_DEFAULTS.bulkBytesPerSec),
    /** Frames per second a guest's hub sends to all its viewers before it coalesces anyway. @default 20000 */
    maxFramesPerSec: z.number().int().min(100).default(CONSOLE_DEFAULTS.maxFramesPerSec),
    /** Largest binary frame sent to a viewer. @default 64 KiB */
    maxFrameBytes: z
      .number()
      .int()
      .min(1 * KiB)
      .max(16 * MiB)
      .default(CONSOLE_DEFAULTS.maxFrameBytes),
    /** Largest keystroke frame from a client; a larger one closes the connection (1009). @default 4096 */
    maxKeystrokeFrameBytes: z
      .number()
      .int()
      .min(1)
      .max(1 * MiB)
      .default(CONSOLE_DEFAULTS.maxKeystrokeFrameBytes),
    /**
     * Sustained keystroke rate of one writer; 0 turns the limit off. A writer over it
     * is not read (its socket is paused) until its budget refills: nothing is dropped.
     * Each frame counts at least KEYSTROKE_FRAME_COST_BYTES (hub.ts), so a flood of
     * 1-byte frames is held to about 1000 frames a second. @default 65536
     */
    keystrokeBytesPerSec: z.number().int().min(0).default(CONSOLE_DEFAULTS.keystrokeBytesPerSec),
    /** Keystroke bytes one writer may send at once above the rate (a paste). @default 1 MiB */
    keystrokeBurstBytes: z
      .number()
      .int()
      .min(1 * KiB)
      .default(CONSOLE_DEFAULTS.keystrokeBurstBytes),
    /** Time for the first-frame `auth` message to arrive. @default 5000 */
    authTimeoutMs: z.number().int().min(100).default(CONSOLE_DEFAULTS.authTimeoutMs),
    /** A connection that sends no frame (keystroke or control message) for this long is closed; 0: never. @default 3600000 */
    idleTimeoutMs: z.number().int().min(0).default(CONSOLE_DEFAULTS.idleTimeoutMs),
    /** WebSocket ping interval; a peer that has not answered the previous ping is dropped. @default 30000 */
    keepaliveIntervalMs: z.number().int().min(100).default(CONSOLE_DEFAULTS.keepaliveIntervalMs),
    /** Viewers of one guest at once (unless `perGuest` says otherwise). @default 64 */
    maxViewersPerGuest: z.number().int().min(1).default(CONSOLE_DEFAULTS.maxViewersPerGuest),
    /**
     * Authenticated console connections on this host at once; connections with the
     * admin token are never refused by it. @default 1024
     */
    maxConnections: z.number().int().min(1).default(CONSOLE_DEFAULTS.maxConnections),
    /**
     * Console connections waiting for their auth frame, on this host at once. They
     * have their own budget, so they never keep an authenticated client out. @default 128
     */
    maxPendingConnections: z.number().int().min(1).default(CONSOLE_DEFAULTS.maxPendingConnections),
    /** Console connections waiting for their auth frame from one client address. @default 8 */
    maxPendingPerAddress: z.number().int().min(1).default(CONSOLE_DEFAULTS.maxPendingPerAddress),
    /**
     * Refusals of one kind from one address are one audit episode: the first is logged,
     * the rest counted, and one summary line is written once none came for this long. @default 10000
     */
    refusalEpisodeMs: z.number().int().min(100).default(CONSOLE_DEFAULTS.refusalEpisodeMs),
    /** Whether a `rw` viewer may take the writer lock from another. @default true */
    allowTakeover: z.boolean().default(CONSOLE_DEFAULTS.allowTakeover),
    /**
     * How long the writer lock stays kept for the writer's token name when an upgrade
     * closes the consoles (writer-lock.ts LockReservation); 0 keeps nothing. @default 5000
     */
    writerReservationMs: z.number().int().min(0).default(CONSOLE_DEFAULTS.writerReservationMs),
    /** Per-guest overrides of `maxViewers` and `allowTakeover`, keyed by guest id. */
    perGuest: z.record(z.string().regex(GUEST_ID_PATTERN, 'invalid guest id'), perGuestSchema).default({}),
    /**
     * Origins (`scheme://host[:port]`, or `*`) allowed to open a console besides the
     * daemon's own host (origin-check.ts). @default []
     */
    allowedOrigins,
    /**
     * Host names (no port) a console without auth (`requireAuth: false`) answers to,
     * besides `localhost`, `127.0.0.1` and `[::1]`. @default []
     */
    allowedHosts: z
      .array(z.string().regex(/^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)$/, 'not a host name'))
      .default([]),
    /**
     * Whether a console connection needs a token. `false` admits anonymous viewers
     * (mode `rw`, or `mode=`) and then only with a loopback `Host` (or one of
     * `allowedHosts`), against DNS rebinding: for a demo on localhost, never for a shared host. @default true
     */
    requireAuth: z.boolean().default(true),
    /** HMAC secret for viewer tokens; when absent one is generated into `<stateDir>/console-secret`. */
    tokenSecret: z.string().min(32).optional(),
    /** Longest lifetime of a token issued through the API or consolectl. @default 86400000 (24 h) */
    maxTokenTtlMs: z.number().int().min(1000).default(CONSOLE_DEFAULTS.maxTokenTtlMs),
    /**
     * Longest `renewableFor` a token may be issued with: how long a session can go on
     * by renewing its token in band (README "Tokens"). @default 43200000 (12 h)
     */
    maxSessionTtlMs: z.number().int().min(1000).default(CONSOLE_DEFAULTS.maxSessionTtlMs),
    /** Single-use token ids remembered at once (until they expire). @default 100000 */
    maxUsedTokens: z.number().int().min(1).default(CONSOLE_DEFAULTS.maxUsedTokens),
  })
  .strict()
  .prefault({});

export type ConsoleConfig = z.infer<typeof consoleConfigSchema>;

/** The limits that apply to one guest. */
export function guestConsoleLimits(
  config: Readonly<ConsoleConfig>,
  guestId: string,
): { maxViewers: number; allowTakeover: boolean } {
  const own = config.perGuest[guestId];
  return {
    maxViewers: own?.maxViewers ?? config.maxViewersPerGuest,
    allowTakeover: own?.allowTakeover ?? config.allowTakeover,
  };
}
