import { join } from 'node:path';
import type { Logger } from 'pino';
import { LocalLog, type LocalLogOptions } from '../store/local-log.js';
import { Capture } from './capture.js';
import { type Config, fileModeOf, type GuestSpec } from './config.js';
import { RateLimiter } from './rate-limiter.js';
import { createSource } from './sources/create-source.js';
import type { Source, SourceState } from './sources/source.js';
import type { TokenBucket } from './token-bucket.js';

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
    bytesOut: number;
    bytesOutDropped: number;
    connects: number;
    quickCloses: number;
    refusedConnections: number;
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

  private constructor(
    readonly id: string,
    readonly spec: GuestSpec,
    readonly declared: boolean,
    readonly log: LocalLog,
    readonly capture: Capture,
    readonly source: Source,
    private readonly limiter: RateLimiter,
    readonly rateLimit: { readonly bytesPerSec: number; readonly burstBytes: number },
    private readonly logger: Logger,
  ) {
    source.on('data', (chunk) => capture.ingest(chunk));
    source.on('open', () => capture.sourceOpened());
    source.on('established', () => capture.sourceEstablished());
    source.on('close', ({ cause, established }) => capture.sourceClosed(cause, established));
  }

  static async open(options: {
    id: string;
    spec: GuestSpec;
    declared: boolean;
    config: Readonly<Config>;
    hostBucket: TokenBucket | null;
    logger: Logger;
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
    const capture = new Capture(log, limiter, logger);
    const source = createSource(spec.source, {
      logger,
      reconnect: config.defaults.reconnect,
      terminal: config.exec,
    });
    return new Guest(id, spec, options.declared, log, capture, source, limiter, rateLimit, logger);
  }

  start(): void {
    // A guest handed off to another host keeps its stopped source (replication).
    if (!this.source.stopped) this.source.start();
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
      rateLimit: { ...this.rateLimit },
      rotation,
    };
    for (const [name, section] of this.statusSections) status[name] = section();
    return status;
  }

  /** Stops the source, writes what is queued, closes the files. Logs stay on disk. */
  async close(timeoutMs: number): Promise<void> {
    await this.source.stop();
    this.capture.close();
    const { lostBytes } = await this.log.close(timeoutMs);
    if (lostBytes > 0)
      this.logger.error({ lostBytes }, 'bytes still queued for a failing disk were lost at close');
  }
}
