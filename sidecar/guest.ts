import { join } from 'node:path';
import type { Logger } from 'pino';
import { OrderedSinks } from '../common/ordered-sinks.js';
import { LocalLog, type LocalLogOptions } from '../store/local-log.js';
import { Capture } from './capture/capture.js';
import { OverflowGate } from './capture/overflow-gate.js';
import { type RateLimit, RateLimiter, type RateLimitState } from './capture/rate-limiter.js';
import type { TokenBucket } from './capture/token-bucket.js';
import { type Config, fileModeOf, type GuestSpec, type OverflowPolicy } from './config.js';
import type { ChardevHandle, InheritedChardev } from './sources/chardev-handle.js';
import { createSource } from './sources/create-source.js';
import type { Source, SourceEvents, SourceState } from './sources/source.js';

/** What `GET /v1/guests/{id}` reports. Other subsystems add their sections. */
export interface GuestStatus {
  id: string;
  state: SourceState;
  stateReason: string;
  stateSince: string;
  source: GuestSpec['source'];
  declared: boolean;
  incoming: boolean;
  boot: number;
  /**
   * Bytes read from and written to the chardev since attach, keystrokes dropped while
   * it was down, connections made, closed before they were established, and refused
   * (a listening source whose guest connection was up).
   */
  chardev: {
    bytesIn: number;
    /** Of `bytesIn`, read in large reads lent for the length of the call (docs/design.md "Borrowed reads"). */
    bytesLent: number;
    bytesOut: number;
    bytesOutDropped: number;
    connects: number;
    quickCloses: number;
    refusedConnections: number;
    coalescedWindows: number;
    /** Keystroke bytes accepted and not yet taken by the guest side. */
    pendingKeystrokeBytes: number;
  };
  /** Connections keep closing before they are established: reconnects back off and start no boot. */
  reconnectStorm: { active: boolean; closesInRow: number };
  offset: number;
  flushedOffset: number;
  oldestOffset: number;
  drops: { suppressedBytes: number; lostBytes: number; suppressing: boolean };
  disk: { state: string; lastError: string | null; queuedBytes: number; rotations: number };
  /**
   * The overflow policy (docs/design.md "Local store"): whether the guest is held now
   * (its source not read), whether the disk was last judged stalled, and how often each
   * happened since attach.
   */
  overflow: {
    policy: OverflowPolicy;
    blocking: boolean;
    diskStalled: boolean;
    holds: number;
    stalls: number;
  };
  rateLimit: { bytesPerSec: number; burstBytes: number };
  rotation: { maxFileBytes: number; maxFiles: number };
  [section: string]: unknown;
}

/** The local log settings the configuration gives a guest (its own rotation, or the default). */
export function localLogOptions(
  config: Readonly<Pick<Config, 'defaults' | 'store'>>,
  rotation: { readonly maxFileBytes: number; readonly maxFiles: number } = config.defaults.rotation,
): Omit<LocalLogOptions, 'dir' | 'logger'> {
  return {
    maxFileBytes: rotation.maxFileBytes,
    maxFiles: rotation.maxFiles,
    maxQueueBytes: config.store.maxQueueBytes,
    maxWriteBytes: config.store.maxWriteBytes,
    fileMode: fileModeOf(config),
    diskRetryMs: config.store.diskRetryMs,
  };
}

/** What a subsystem receives of the guest's chardev (see `CHARDEV_STAGES`). */
export interface ChardevSink {
  /** Guest output, as read. */
  data?(chunk: Buffer): void;
  /** A connection is up. */
  open?(event: SourceEvents['open'][0]): void;
  /** The connection proved itself. */
  established?(): void;
  /** The connection went away. */
  close?(event: SourceEvents['close'][0]): void;
  /** The guest side can take more keystrokes. */
  drain?(): void;
}

/**
 * The order in which the chardev's events reach their sinks, the one place it is set.
 * - `handoff`: a migration's destination claims the shared stream on the guest's
 *   first byte (replication), before capture places that byte, so the handoff
 *   marker comes first in the log.
 * - `capture`: the capture numbers the bytes, starts boots, writes markers; its own
 *   sinks (capture.ts CAPTURE_STAGES) see what it placed before the next stage runs.
 * - `console`: the hub tells viewers the guest came or went, once capture wrote the
 *   boot or reattach marker, and resumes paused keystrokes.
 * - `replication`: the replicator's view of when the guest last printed.
 */
export const CHARDEV_STAGES = ['handoff', 'capture', 'console', 'replication'] as const;
export type ChardevStage = (typeof CHARDEV_STAGES)[number];

export function guestDir(stateDir: string, id: string): string {
  return join(stateDir, 'guests', id);
}

/** One attached guest: its source, its capture and its local log. */
export class Guest {
  /** Status sections contributed by other subsystems (console viewers, replication). */
  readonly statusSections = new Map<string, () => unknown>();
  /**
   * Checks run before a status report is taken (replication confirms with Redis that
   * this host still owns the stream, so two hosts never both report `owner`).
   */
  readonly statusChecks = new Set<() => Promise<void>>();
  private readonly chardev = new OrderedSinks<ChardevStage, ChardevSink>(CHARDEV_STAGES);

  private constructor(
    readonly id: string,
    private specValue: GuestSpec,
    readonly declared: boolean,
    readonly log: LocalLog,
    readonly capture: Capture,
    readonly source: Source,
    private readonly limiter: RateLimiter,
    private rateLimitValue: RateLimit,
    private readonly gate: OverflowGate,
    private readonly logger: Logger,
  ) {
    this.chardev.connect('capture', {
      data: (chunk) => {
        capture.ingest(chunk);
        gate.afterIngest();
      },
      open: ({ continuation }) => capture.sourceOpened(continuation),
      established: () => capture.sourceEstablished(),
      close: ({ cause, established }) => capture.sourceClosed(cause, established),
    });
    const sinks = this.chardev;
    source.on('data', (chunk) => sinks.each((sink) => sink.data?.(chunk)));
    source.on('open', (event) => sinks.each((sink) => sink.open?.(event)));
    source.on('established', () => sinks.each((sink) => sink.established?.()));
    source.on('close', (event) => sinks.each((sink) => sink.close?.(event)));
    source.on('drain', () => sinks.each((sink) => sink.drain?.()));
  }

  /** The spec it was attached with (a reload may change its `rateLimit`: `retune`). */
  get spec(): GuestSpec {
    return this.specValue;
  }

  /** The rate limit in force: the spec's, or the configured default. */
  get rateLimit(): RateLimit {
    return this.rateLimitValue;
  }

  /**
   * A reload's new limits, applied without touching the source (docs/design.md
   * "Service lifecycle"): `spec` differs from the current one at most in `rateLimit`.
   */
  retune(spec: GuestSpec, rateLimit: RateLimit, hostBucket: TokenBucket | null): void {
    this.specValue = spec;
    this.rateLimitValue = { bytesPerSec: rateLimit.bytesPerSec, burstBytes: rateLimit.burstBytes };
    this.limiter.reconfigure(rateLimit, hostBucket);
  }

  /** Connects `sink` to the chardev's events at `stage` (CHARDEV_STAGES); returns its disconnect. */
  observeChardev(stage: Exclude<ChardevStage, 'capture'>, sink: ChardevSink): () => void {
    return this.chardev.connect(stage, sink);
  }

  static async open(options: {
    id: string;
    spec: GuestSpec;
    declared: boolean;
    config: Readonly<Config>;
    hostBucket: TokenBucket | null;
    logger: Logger;
    /** A chardev to adopt instead of connecting (docs/design.md "Upgrade"). */
    inherited?: InheritedChardev | undefined;
  }): Promise<Guest> {
    const { id, spec, config } = options;
    const logger = options.logger.child({ guest: id });
    const rotation = spec.rotation ?? config.defaults.rotation;
    const log = await LocalLog.open({
      dir: guestDir(config.stateDir, id),
      ...localLogOptions(config, rotation),
      logger,
    });
    const rateLimit = spec.rateLimit ?? config.defaults.rateLimit;
    const limiter = new RateLimiter(rateLimit, options.hostBucket);
    if (options.inherited?.rateLimit) limiter.restore(options.inherited.rateLimit);
    const capture = new Capture(log, limiter, logger);
    const source = createSource(spec.source, {
      logger,
      reconnect: config.defaults.reconnect,
      terminal: config.exec,
      inherited: options.inherited,
    });
    source.setReadCoalescing(config.defaults.readCoalescing);
    const gate = new OverflowGate(
      log,
      source,
      {
        policy: spec.overflow ?? config.defaults.overflow,
        maxStallMs: config.store.maxStallMs,
        minProgressBytes: config.store.minProgressBytes,
      },
      logger,
    );
    capture.setOverflowGate(gate);
    return new Guest(id, spec, options.declared, log, capture, source, limiter, rateLimit, gate, logger);
  }

  start(): void {
    // A guest handed off to another host keeps its stopped source (replication).
    if (!this.source.stopped) this.source.start();
  }

  /** The rate limiter's bucket and running episode (what an upgrade carries over). */
  get rateLimitState(): RateLimitState {
    return this.limiter.state;
  }

  /** Keystrokes toward the guest; false means wait for the source's `drain`. */
  write(bytes: Buffer): boolean {
    return this.source.write(bytes);
  }

  /** `status()` after the status checks (bounded by each check). */
  async checkedStatus(): Promise<GuestStatus> {
    await Promise.all([...this.statusChecks].map((check) => check()));
    return this.status();
  }

  status(): GuestStatus {
    const rotation = this.spec.rotation ?? {
      maxFileBytes: this.log.options.maxFileBytes,
      maxFiles: this.log.options.maxFiles,
    };
    const status: GuestStatus = {
      id: this.id,
      state: this.source.state,
      stateReason: this.source.stateReason,
      stateSince: new Date(this.source.stateSinceMs).toISOString(),
      source: this.spec.source,
      declared: this.declared,
      incoming: this.spec.incoming ?? false,
      boot: this.log.currentBoot,
      chardev: { ...this.source.counters, pendingKeystrokeBytes: this.source.pendingKeystrokeBytes },
      reconnectStorm: { active: this.source.storm, closesInRow: this.source.quickClosesRecent },
      offset: this.log.end,
      flushedOffset: this.log.flushedEnd,
      oldestOffset: this.log.oldest,
      drops: {
        suppressedBytes: this.limiter.totalSuppressed,
        lostBytes: this.capture.counters.lostBytes,
        suppressing: this.limiter.active,
      },
      disk: {
        state: this.log.state,
        lastError: this.log.lastDiskError,
        queuedBytes: this.log.queuedBytes,
        rotations: this.log.counters.rotations,
      },
      overflow: {
        policy: this.gate.policy,
        blocking: this.gate.blocking,
        diskStalled: this.gate.diskStalled,
        ...this.gate.counters,
      },
      rateLimit: { ...this.rateLimit },
      rotation,
    };
    for (const [name, section] of this.statusSections) status[name] = section();
    return status;
  }

  /**
   * Lets go of the chardev without closing it (reading stops, the guest's bytes wait in
   * the kernel), writes what is queued and closes the files, so their offsets are final
   * on disk: what an upgrade does before the successor opens them (docs/design.md
   * "Upgrade"). Returns the live chardev, or null when it cannot be handed over (`exec`).
   */
  async handOver(timeoutMs: number): Promise<ChardevHandle | null> {
    const handle = await this.source.release();
    this.capture.close();
    const { lostBytes } = await this.log.close(timeoutMs);
    if (lostBytes > 0)
      this.logger.error({ lostBytes }, 'bytes still queued for a failing disk were lost at close');
    return handle;
  }

  /** Stops the source, writes what is queued, closes the files. Logs stay on disk. */
  async close(timeoutMs: number): Promise<void> {
    await this.source.stop();
    this.gate.close();
    this.capture.close();
    const { lostBytes } = await this.log.close(timeoutMs);
    if (lostBytes > 0)
      this.logger.error({ lostBytes }, 'bytes still queued for a failing disk were lost at close');
  }
}
