import { EventEmitter } from 'node:events';
import type { Logger } from 'pino';
import { z } from 'zod';
import { Backoff, type BackoffOptions } from '../../common/backoff.js';
import { isBorrowed } from '../../common/borrowed-bytes.js';
import type { ChardevHandle, Continuation, InheritedChardev } from './chardev-handle.js';
import { ReadCoalescer, type ReadCoalescingOptions } from './read-coalescer.js';

/**
 * A source's connection states; one setter (`setState`) changes them, logs
 * `old -> new` with the reason, and emits `state`.
 */
export type SourceState =
  | 'idle' // created, not started
  | 'connecting' // dialling, opening, spawning
  | 'listening' // waiting for the guest side to connect to us
  | 'connected' // bytes flow
  | 'backoff' // waiting before the next attempt
  | 'stopped'; // stopped by us; final

/** Who ended a connection: the guest side (a new QEMU process will start a new boot) or us. */
export type CloseCause = 'guest' | 'self' | 'error';

export interface SourceEvents {
  data: [Buffer];
  /** A connection is up; `continuation` says whether it goes on from another process (chardev-handle.ts). */
  open: [{ continuation: Continuation }];
  /** The connection proved itself: a byte from the guest (all kinds but exec) or `minUptimeMs` up. Before its `data`. */
  established: [];
  /**
   * The connection went away. `established` says whether it had proven itself (see
   * `Source`): a connection that had not closes quietly, starting no boot.
   */
  close: [{ cause: CloseCause; reason: string; established: boolean }];
  state: [{ from: SourceState; to: SourceState; reason: string }];
  /** The guest side can take more keystrokes after `write` returned false. */
  drain: [];
}

/** How a source reconnects. */
export interface ReconnectOptions extends BackoffOptions {
  /**
   * A connection is established once it has lasted this long, or (all kinds but
   * `exec`) once the guest side sent a byte. Only an established connection resets
   * the backoff, and only its close by the guest side makes the next one a new boot.
   */
  readonly minUptimeMs: number;
}

/** What every source is made with, besides its spec. */
export interface SourceContext {
  readonly logger: Logger;
  readonly reconnect: ReconnectOptions;
  /** The initial window size of a source that runs a terminal (`exec`). */
  readonly terminal: { readonly cols: number; readonly rows: number };
  /** A connection to adopt at start instead of dialling, listening or opening (docs/design.md "Upgrade"). */
  readonly inherited?: InheritedChardev | undefined;
}

/**
 * One source type: the schema of its spec in the config and the API (a strict object
 * whose `type` is a literal), and the factory that makes a Source from a valid spec.
 * Each sources/<kind>-source.ts exports its own; create-source.ts lists them.
 */
export interface SourceType<Schema extends z.ZodObject> {
  readonly schema: Schema;
  create(spec: z.infer<Schema>, context: SourceContext): Source;
}

export function sourceType<Schema extends z.ZodObject>(
  schema: Schema,
  create: (spec: z.infer<Schema>, context: SourceContext) => Source,
): SourceType<Schema> {
  return { schema, create };
}

/** Spec fields several source types share. */
export const specFields = {
  host: z.string().min(1),
  port: z.number().int().min(0).max(65535),
  /** A file system path, absolute. */
  path: z.string().startsWith('/'),
} as const;

/**
 * Keystroke bytes that may wait toward the guest (in our queue or a socket's) before
 * `write` returns false and the writer is paused until `drain`.
 */
export const MAX_KEYSTROKE_INFLIGHT_BYTES = 64 * 1024;

/** Closes in a row of connections that were never established that make a reconnect storm. */
export const STORM_CLOSES = 3;

/**
 * The longest read-coalescing window of a source read through a pseudo-terminal (pty,
 * exec): the kernel's pty buffer is tens of KiB, so a longer window would slow a guest
 * printing in small writes rather than gather them.
 */
export const PTY_MAX_COALESCING_WINDOW_MS = 20;

/**
 * Attaches to one guest's serial chardev. Reads never wait on a consumer (viewers,
 * Redis): every `data` event is handed on at once. The one exception is the guest's
 * overflow policy `block` (sidecar/capture/overflow-gate.ts): while the local log's queue is
 * above its high-water mark and the disk is making progress, reading stops
 * (`pauseReading`), so the kernel's socket buffer, then QEMU, then the guest's UART wait.
 *
 * Reconnect storms (a program that exits at once, a peer that accepts and resets)
 * are held back: a connection resets the backoff only once it is established, so
 * one that closes before keeps the delay growing to its cap, and the next
 * connection starts no boot unless it is established itself (capture.ts). Three such
 * closes in a row flag the guest (`storm`) until a connection is established again.
 * A real QEMU restart keeps the fast reconnect: its connection delivered output, so
 * it was established.
 */
export abstract class Source extends EventEmitter<SourceEvents> {
  abstract readonly kind: string;
  private stateValue: SourceState = 'idle';
  private reasonValue = 'created';
  private sinceMs = Date.now();
  protected readonly backoff: Backoff;
  private retryTimer: NodeJS.Timeout | null = null;
  private uptimeTimer: NodeJS.Timeout | null = null;
  /** Whether the current connection is established (null: no connection). */
  private establishedValue: boolean | null = null;
  /** Closes in a row of connections that were not established. */
  private quickClosesInRow = 0;
  /** `write` returned false: emit `drain` once the bytes toward the guest are below the bound. */
  private owesDrain = false;
  /** Why reading is paused: each reason counted, so that independent holders compose. */
  private readonly readingHolds = new Map<string, number>();
  /** Pauses reading for a short window after each small read during bulk output (read-coalescer.ts). */
  private coalescer: ReadCoalescer | null = null;
  /** Counters for status and metrics. */
  readonly counters = {
    connects: 0,
    bytesIn: 0,
    /** Of `bytesIn`, bytes read in large reads lent for the length of the call (docs/design.md "Borrowed reads"). */
    bytesLent: 0,
    bytesOut: 0,
    /** Keystroke bytes dropped because no connection was up. */
    bytesOutDropped: 0,
    /** Connections closed before they were established. */
    quickCloses: 0,
    /** Connections to a listening source refused because the guest's was up. */
    refusedConnections: 0,
    /** Windows in which reading paused to gather small reads of bulk output into one (read-coalescer.ts). */
    coalescedWindows: 0,
  };

  /** What `start` adopts, taken once (`takeInherited`). */
  private inherited: InheritedChardev | null;

  constructor(
    protected readonly logger: Logger,
    private readonly reconnect: ReconnectOptions,
    inherited?: InheritedChardev,
  ) {
    super();
    this.backoff = new Backoff(reconnect);
    this.inherited = inherited ?? null;
  }

  /** The chardev to adopt at start, once: a later reconnect dials, listens or opens as usual. */
  protected takeInherited(): InheritedChardev | null {
    const inherited = this.inherited;
    this.inherited = null;
    return inherited;
  }

  get state(): SourceState {
    return this.stateValue;
  }

  get stateReason(): string {
    return this.reasonValue;
  }

  get stateSinceMs(): number {
    return this.sinceMs;
  }

  get stopped(): boolean {
    return this.stateValue === 'stopped';
  }

  /** True while connections keep closing before they are established (a reconnect storm). */
  get storm(): boolean {
    return this.quickClosesInRow >= STORM_CLOSES;
  }

  /** Closes in a row of connections that were not established. */
  get quickClosesRecent(): number {
    return this.quickClosesInRow;
  }

  protected setState(to: SourceState, reason: string): void {
    const from = this.stateValue;
    if (from === 'stopped') return;
    this.reasonValue = reason;
    if (from === to) return;
    this.stateValue = to;
    this.sinceMs = Date.now();
    this.logger.info({ source: this.kind, from, to, reason }, `source ${from} -> ${to}`);
    this.emit('state', { from, to, reason });
  }

  /** Starts connecting (or listening). */
  abstract start(): void;

  /** Stops for good and releases everything. */
  async stop(): Promise<void> {
    this.coalescer?.cancel();
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.retryTimer = null;
    this.clearUptimeTimer();
    this.setState('stopped', 'stopped by consoled');
    await this.close();
  }

  protected abstract close(): Promise<void>;

  /**
   * Stops for good without closing the chardev: reading stops, so the guest's bytes
   * wait in the kernel, and the live connection is returned for another source to
   * adopt (docs/design.md "Upgrade"). Null when it cannot be handed over (`exec`),
   * in which case the chardev is closed as by `stop`.
   */
  async release(): Promise<ChardevHandle | null> {
    this.coalescer?.cancel();
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.retryTimer = null;
    this.clearUptimeTimer();
    this.setState('stopped', 'handed over');
    const handle = this.letGo();
    if (!handle) await this.close();
    return handle;
  }

  /** Pauses the chardev, drops this source's listeners, and returns it; null when it has nothing to hand over. */
  protected abstract letGo(): ChardevHandle | null;

  /**
   * Sends keystrokes to the guest; false means wait for `drain`. Bytes are never
   * dropped once accepted: the bound is kept by the caller waiting.
   */
  write(bytes: Buffer): boolean {
    if (!this.sendToGuest(bytes)) {
      this.counters.bytesOutDropped += bytes.length; // nobody to type to: dropped, never queued
      return true;
    }
    this.counters.bytesOut += bytes.length;
    if (this.guestWritePending < MAX_KEYSTROKE_INFLIGHT_BYTES) return true;
    this.owesDrain = true;
    return false;
  }

  /** Hands keystrokes to the current connection; false when there is none. */
  protected abstract sendToGuest(bytes: Buffer): boolean;

  /** Keystroke bytes accepted and not yet taken by the guest side's kernel buffer. */
  protected abstract get guestWritePending(): number;

  /** Keystroke bytes waiting toward the guest (for status). */
  get pendingKeystrokeBytes(): number {
    return this.guestWritePending;
  }

  /** Subclasses call this when bytes toward the guest left their queue (or the connection closed). */
  protected wroteToGuest(): void {
    if (!this.owesDrain || this.guestWritePending >= MAX_KEYSTROKE_INFLIGHT_BYTES / 2) return;
    this.owesDrain = false;
    this.emit('drain');
  }

  /**
   * Stops reading from the guest side for `reason` until as many `resumeReading(reason)`
   * calls; reading goes on only when no reason holds it. Bytes wait where they are (the
   * kernel's buffer, then the guest side); a connection made while paused starts paused.
   */
  pauseReading(reason: string): void {
    this.readingHolds.set(reason, (this.readingHolds.get(reason) ?? 0) + 1);
    if (this.readingHolds.size === 1 && this.readingHolds.get(reason) === 1) this.applyReading(false);
  }

  /** Releases one `pauseReading(reason)`; reading resumes when no reason holds it. */
  resumeReading(reason: string): void {
    const held = this.readingHolds.get(reason);
    if (held === undefined) return;
    if (held > 1) this.readingHolds.set(reason, held - 1);
    else {
      this.readingHolds.delete(reason);
      if (this.readingHolds.size === 0) this.applyReading(true);
    }
  }

  /** Whether reading is paused (for any reason). */
  get readingPaused(): boolean {
    return this.readingHolds.size > 0;
  }

  /** Stops (`false`) or resumes (`true`) reading the current connection, if any. */
  protected abstract applyReading(reading: boolean): void;

  /** Whether the chardev has a window size (`exec` and `pty`). */
  get resizable(): boolean {
    return false;
  }

  resize(_cols: number, _rows: number): void {}

  /** Whether a first byte from the guest establishes a connection (not for `exec`: see ExecSource). */
  protected get establishedByData(): boolean {
    return true;
  }

  /** Schedules `attempt` after the next backoff delay. */
  protected retry(reason: string, attempt: () => void): void {
    if (this.stopped) return;
    const delay = this.backoff.next();
    this.setState('backoff', `${reason}; retrying in ${delay} ms`);
    this.retryTimer = setTimeout(() => {
      this.retryTimer = null;
      if (!this.stopped) attempt();
    }, delay);
  }

  protected received(chunk: Buffer): void {
    this.counters.bytesIn += chunk.length;
    if (isBorrowed(chunk)) this.counters.bytesLent += chunk.length;
    if (this.establishedValue === false && this.establishedByData) this.establish();
    this.emit('data', chunk);
    this.coalescer?.noteRead(chunk.length);
  }

  /**
   * The longest read-coalescing window this kind of source takes: the bytes of a window
   * wait in the kernel's buffer, and a pseudo-terminal's is far smaller than a socket's.
   */
  protected readonly maxCoalescingWindowMs: number = Number.POSITIVE_INFINITY;

  /** Coalesces small reads during bulk output (read-coalescer.ts); a window of 0 turns it off. */
  setReadCoalescing(configured: ReadCoalescingOptions): void {
    this.coalescer?.cancel();
    const options = { ...configured, windowMs: Math.min(configured.windowMs, this.maxCoalescingWindowMs) };
    this.coalescer =
      options.windowMs > 0
        ? new ReadCoalescer(
            options,
            () => {
              this.counters.coalescedWindows++;
              this.pauseReading('coalesce');
            },
            () => this.resumeReading('coalesce'),
          )
        : null;
  }

  /**
   * A connection is up. A `continued` one (adopted at an upgrade) had proven itself in
   * the process before: it is established at once.
   */
  protected opened(reason: string, continuation: Continuation = 'new'): void {
    this.counters.connects++;
    this.establishedValue = false;
    this.clearUptimeTimer();
    if (continuation === 'continued') this.establishedValue = true;
    else {
      this.uptimeTimer = setTimeout(() => {
        this.uptimeTimer = null;
        if (this.establishedValue === false) this.establish();
      }, this.reconnect.minUptimeMs);
      this.uptimeTimer.unref();
    }
    this.setState('connected', reason);
    this.emit('open', { continuation });
  }

  /** The current connection went away (not when we stop). */
  protected closed(cause: CloseCause, reason: string): void {
    this.coalescer?.cancel();
    const established = this.establishedValue === true;
    this.establishedValue = null;
    this.clearUptimeTimer();
    if (!established) {
      this.counters.quickCloses++;
      this.quickClosesInRow++;
      if (this.quickClosesInRow === STORM_CLOSES) {
        this.logger.warn(
          { source: this.kind, closes: this.quickClosesInRow, reason },
          'reconnect storm: the guest side keeps closing before it is established; backing off',
        );
      }
    }
    this.emit('close', { cause, reason, established });
    this.wroteToGuest();
  }

  private establish(): void {
    this.establishedValue = true;
    this.clearUptimeTimer();
    this.backoff.reset();
    if (this.quickClosesInRow >= STORM_CLOSES) {
      this.logger.info(
        { source: this.kind, closes: this.quickClosesInRow },
        'reconnect storm over: a connection is established',
      );
    }
    this.quickClosesInRow = 0;
    this.emit('established');
  }

  private clearUptimeTimer(): void {
    if (this.uptimeTimer) clearTimeout(this.uptimeTimer);
    this.uptimeTimer = null;
  }
}
