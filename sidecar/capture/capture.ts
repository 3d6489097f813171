import type { Logger } from 'pino';
import { keepBytes } from '../../common/borrowed-bytes.js';
import { formatMarker, type MarkerEvent } from '../../common/marker.js';
import { OrderedSinks } from '../../common/ordered-sinks.js';
import type { LogSink } from '../../store/log-sink.js';
import type { BootStart } from '../../store/log-view.js';
import type { MarkerKind, MarkerRecord } from '../../store/marker-index.js';
import type { Continuation } from '../sources/chardev-handle.js';
import type { RateLimiter } from './rate-limiter.js';

/** Bytes that reached the log, at their offset. */
export interface CapturedChunk {
  readonly offset: number;
  readonly bytes: Buffer;
}

/** What receives what capture placed in the log (see `CAPTURE_STAGES`). */
export interface CaptureSink {
  /** Every byte appended to the log (guest output and markers), at its offset, in order. */
  output?(chunk: CapturedChunk): void;
  /** A boot started; its marker was output just before. */
  boot?(record: BootStart): void;
}

/**
 * The order in which capture's sinks are called for each chunk and boot: the console's
 * viewers (its hub), then the replicator (its segments). Where the chardev's events
 * reach capture itself is guest.ts CHARDEV_STAGES.
 */
export const CAPTURE_STAGES = ['console', 'replication'] as const;
export type CaptureStage = (typeof CAPTURE_STAGES)[number];

/** Guest bytes carry no marker: one shared empty list, no allocation per chunk. */
const NO_MARKERS: readonly MarkerRecord[] = [];

/** Room kept free in the disk queue for the marker that reports a gap. */
const MARKER_RESERVE_BYTES = 256;
/** Output kept back while a connection after a reconnect storm is not yet established. */
const MAX_HELD_BYTES = 64 * 1024;

/**
 * Where output goes while it must not be numbered yet (a migration's destination
 * before it owns the stream, docs/design.md "Migration handoff"): a spool log of its
 * own on disk, or, for the short final copy of that spool, memory.
 */
type Aside =
  | { readonly kind: 'spool'; readonly log: LogSink; readonly unwatch: () => void }
  | {
      readonly kind: 'memory';
      readonly chunks: Array<{ readonly bytes: Buffer; readonly marker?: MarkerKind }>;
      bytes: number;
      /** The spool it follows held output: a connection opened now is a reattach. */
      readonly afterOutput: boolean;
    };

/**
 * Between a source and the log: decides what is kept (rate limit, queue bound),
 * places it at offsets, starts boots, and writes markers for everything it did
 * not keep. It never waits: every decision is made on the chunk in hand. What it
 * placed goes to its sinks, in the order of CAPTURE_STAGES.
 */
export class Capture {
  /** The guest's overflow policy (sidecar/capture/overflow-gate.ts); none: drop past the bound. */
  private overflow: { readonly absorbing: boolean } | null = null;
  private lostBytes = 0;
  private lostReason: 'queue-overflow' | 'disk-error' = 'queue-overflow';
  private settleTimer: NodeJS.Timeout | null = null;
  private aside: Aside | null = null;
  /** The chardev as capture last heard of it (`outputMayBeUnread`). */
  private chardev: 'never-opened' | 'open' | 'closed-by-guest' | 'closed-here' = 'never-opened';
  private readonly sinks = new OrderedSinks<CaptureStage, CaptureSink>(CAPTURE_STAGES);
  /**
   * Set while the guest continues a log that another host keeps (an incoming
   * migration, until this host owns the shared stream): opening the chardev then
   * neither starts a boot nor writes a reattach marker, since the guest did neither.
   */
  private continuing = false;
  readonly counters = { capturedBytes: 0, lostBytes: 0, markers: 0, gapEpisodes: 0, suppressEpisodes: 0 };

  constructor(
    private readonly log: LogSink,
    private readonly limiter: RateLimiter | null,
    private readonly logger: Logger,
  ) {
    // A gap is reported as soon as the queue has room again, not only when the
    // guest next writes (a flood that ends would otherwise leave it unreported).
    log.watchFlushed(() => {
      if (this.lostBytes > 0) this.reportGap();
    });
  }

  /** Connects `sink` at `stage` (CAPTURE_STAGES); returns its disconnect. */
  connect(stage: CaptureStage, sink: CaptureSink): () => void {
    return this.sinks.connect(stage, sink);
  }

  /** Follows `gate`'s overflow policy: a chunk past the queue's bound is kept while it absorbs. */
  setOverflowGate(gate: { readonly absorbing: boolean }): void {
    this.overflow = gate;
  }

  /** See `continuing`: replication sets it while this host does not own the guest's stream. */
  setContinuing(value: boolean): void {
    this.continuing = value;
  }

  /** Guest output from the source. */
  ingest(chunk: Buffer): void {
    let bytes = chunk;
    if (this.limiter && !this.limiter.unlimited) {
      const { accepted, suppressedBefore } = this.limiter.admit(chunk.length);
      if (suppressedBefore > 0) this.writeMarker({ kind: 'suppressed', bytes: suppressedBefore });
      if (accepted === 0) {
        if (suppressedBefore === 0 && this.limiter.pendingSuppressed === chunk.length) {
          this.counters.suppressEpisodes++;
          this.logger.warn({ bytes: chunk.length }, 'rate limit reached; suppressing output');
        }
        this.settleLater();
        return;
      }
      if (accepted < chunk.length) {
        this.counters.suppressEpisodes++;
        this.logger.warn({ dropped: chunk.length - accepted }, 'rate limit reached; suppressing output');
        bytes = chunk.subarray(0, accepted);
        this.settleLater();
      }
    }
    if (this.held) this.hold(bytes);
    else this.appendGuestBytes(bytes);
  }

  /** Output of a connection whose boot is not decided yet (see `sourceOpened`), kept back a little. */
  private hold(bytes: Buffer): void {
    const held = this.held!;
    held.push(keepBytes(bytes));
    this.heldBytes += bytes.length;
    // Past the bound the output goes out without waiting for the decision.
    if (this.heldBytes > MAX_HELD_BYTES) this.releaseHeld();
  }

  private releaseHeld(): void {
    const held = this.held;
    if (!held) return;
    this.held = [];
    this.heldBytes = 0;
    for (const bytes of held) this.appendGuestBytes(bytes);
  }

  /**
   * A chunk larger than the whole queue is dropped with the queue empty: no write is
   * under way, so no `flushed` will come to report the gap. It is reported now (the
   * marker fits an empty queue), or the gap would stay unmarked until the guest next
   * prints.
   */
  private reportGapIfIdle(): void {
    const sink = this.aside?.kind === 'spool' ? this.aside.log : this.aside ? null : this.log;
    if (sink !== null && sink.queuedBytes === 0) this.reportGap();
  }

  /** Writes the marker of a queue-overflow gap once there is room for it. */
  private reportGap(): void {
    if (!this.canAccept(MARKER_RESERVE_BYTES)) return;
    const lost = this.lostBytes;
    this.lostBytes = 0;
    this.logger.warn({ lost, reason: this.lostReason }, 'capture resumed after a gap');
    this.writeMarker({ kind: 'gap', bytes: lost, reason: this.lostReason });
  }

  /**
   * While the rate limit suppresses, check now and then whether the episode has
   * ended, so its marker is written even when the guest has gone quiet.
   */
  private settleLater(): void {
    if (this.settleTimer || !this.limiter) return;
    this.settleTimer = setTimeout(() => {
      this.settleTimer = null;
      if (!this.limiter?.active) return;
      const { suppressedBefore } = this.limiter.admit(0);
      if (suppressedBefore > 0) this.writeMarker({ kind: 'suppressed', bytes: suppressedBefore });
      else this.settleLater();
    }, 250);
    this.settleTimer.unref();
  }

  /** Stops the timers (the guest is detaching); output held back goes to the log. */
  close(): void {
    this.releaseHeld();
    this.held = null;
    if (this.settleTimer) clearTimeout(this.settleTimer);
    this.settleTimer = null;
  }

  private appendGuestBytes(bytes: Buffer): void {
    if (this.lostBytes > 0) {
      if (!this.canAccept(bytes.length + MARKER_RESERVE_BYTES)) {
        this.lostBytes += bytes.length;
        this.counters.lostBytes += bytes.length;
        this.reportGapIfIdle();
        return;
      }
      this.reportGap();
    } else if (!this.canAccept(bytes.length + MARKER_RESERVE_BYTES)) {
      this.lostReason = this.log.diskFailing ? 'disk-error' : 'queue-overflow';
      this.lostBytes = bytes.length;
      this.counters.lostBytes += bytes.length;
      this.counters.gapEpisodes++;
      this.logger.warn(
        { reason: this.lostReason, queued: this.log.queuedBytes },
        'log queue full; dropping guest output',
      );
      this.reportGapIfIdle();
      return;
    }
    this.append(bytes);
    this.counters.capturedBytes += bytes.length;
  }

  /** The last connection closed before it was established (sources/source.ts): the next open waits. */
  private quietReopen = false;
  /** Output of the current connection while its boot waits for it to be established; null when not waiting. */
  private held: Buffer[] | null = null;
  private heldBytes = 0;

  /**
   * The chardev is up. A new boot starts when the log is empty or the guest side
   * closed it last time; anything else (our own restart or reconnect) is a reattach.
   *
   * After a connection that closed before it was established (a program that exited
   * at once, a peer that closed without a byte: a reconnect storm) nothing is decided
   * yet: the connection's output is held back (up to MAX_HELD_BYTES) until it is
   * established, and then it is a new boot (the guest side changed: a VM that was
   * not running now is); if it closes first, its output goes to the log as it is,
   * under no new boot and no marker. A storm thus starts no boots.
   */
  sourceOpened(continuation: Continuation = 'new'): void {
    this.chardev = 'open';
    // An upgrade handed the same connection over: nothing happened, as far as the log goes.
    if (continuation === 'continued') return;
    if (continuation === 'restarted' && !this.aside && !this.log.awaitingBoot && this.log.currentBoot > 0) {
      this.writeMarker({ kind: 'restarted', at: new Date(), reason: 'upgrade' });
      return;
    }
    // While output is held nothing is numbered: a boot record would point into the wrong
    // log. A reconnect after held output (this daemon restarted) is marked where output
    // goes: in the spool, or in memory while the spool is copied into the log (a restart
    // resumes that copy at once, and the chardev often connects during it).
    if (this.aside) {
      const afterOutput = this.aside.kind === 'spool' ? this.aside.log.end > 0 : this.aside.afterOutput;
      if (afterOutput) this.writeMarker({ kind: 'reattach', at: new Date() });
      return;
    }
    if (this.continuing && !this.log.awaitingBoot) return;
    if (this.quietReopen) this.held = [];
    else if (this.log.currentBoot === 0 || this.log.awaitingBoot) this.startBoot();
    else this.writeMarker({ kind: 'reattach', at: new Date() });
  }

  /** The connection proved itself (a byte from the guest, or `minUptimeMs`): the held boot starts. */
  sourceEstablished(): void {
    if (!this.held) return;
    const held = this.held;
    this.held = null;
    this.heldBytes = 0;
    this.startBoot();
    for (const bytes of held) this.appendGuestBytes(bytes);
  }

  /**
   * The chardev went away. When the guest side closed an established connection the
   * next open is a new boot; one that was never established starts none.
   */
  sourceClosed(cause: 'guest' | 'self' | 'error', established: boolean): void {
    this.chardev = cause === 'guest' ? 'closed-by-guest' : 'closed-here';
    this.releaseHeld();
    this.held = null;
    this.quietReopen = !established;
    if (cause === 'guest' && established) this.log.setAwaitingBoot(true);
  }

  /**
   * Whether the guest may have printed what nobody read: the chardev is not connected,
   * and it never was since this process started (a restart that has not reconnected
   * yet) or it went away on this side. A guest that closed it (QEMU exited) lost nothing.
   */
  get outputMayBeUnread(): boolean {
    return this.chardev !== 'open' && this.chardev !== 'closed-by-guest' && this.log.end > 0;
  }

  /** Starts a boot now (`POST /v1/guests/{id}/boots`, or the chardev coming back). */
  startBoot(): BootStart {
    const record = this.log.startBoot(Date.now());
    this.writeMarker({ kind: 'boot', boot: record.boot, at: new Date(record.atMs) });
    this.sinks.each((sink) => sink.boot?.(record));
    return record;
  }

  /** Writes a marker into the log (and its marker index); markers are never rate limited. */
  writeMarker(event: MarkerEvent): void {
    this.releaseHeld(); // output held back comes first, in order
    this.counters.markers++;
    this.append(formatMarker(event), event.kind);
  }

  get pendingLostBytes(): number {
    return this.lostBytes;
  }

  /** Whether output is held outside the log (see `holdInSpool`). */
  get holding(): 'spool' | 'memory' | null {
    return this.aside?.kind ?? null;
  }

  /**
   * From now on, guest output and markers go to `spool`, unnumbered and unseen by
   * viewers, until `holdInMemory` and `endHold`: a migration's destination before it
   * knows where the stream will continue.
   */
  holdInSpool(spool: LogSink): void {
    const unwatch = spool.watchFlushed(() => {
      if (this.lostBytes > 0) this.reportGap();
    });
    this.aside = { kind: 'spool', log: spool, unwatch };
  }

  /** Holds further output in memory (bounded by the log's queue), so the spool can be copied to its end. */
  holdInMemory(): void {
    const afterOutput = this.aside?.kind === 'spool' && this.aside.log.end > 0;
    this.releaseSpool();
    this.aside = { kind: 'memory', chunks: [], bytes: 0, afterOutput };
  }

  /** Appends what memory held to the log and stops holding: output is numbered again. */
  endHold(): void {
    const aside = this.aside;
    this.releaseSpool();
    this.aside = null;
    if (aside?.kind === 'memory') for (const chunk of aside.chunks) this.append(chunk.bytes, chunk.marker);
  }

  /**
   * Appends bytes to the log itself even while output is held (the seam's markers and
   * the spool's copy, with the markers it holds, at offsets relative to `bytes`):
   * viewers see them at their offsets.
   */
  appendToLog(bytes: Buffer, markers: readonly MarkerRecord[] = NO_MARKERS): number {
    const offset = this.log.append(bytes);
    for (const m of markers) this.log.noteMarker(offset + m.offset, m.length, m.kind);
    const chunk: CapturedChunk = { offset, bytes };
    this.sinks.each((sink) => sink.output?.(chunk));
    return offset;
  }

  /** A marker into the log itself, even while output is held. */
  writeLogMarker(event: MarkerEvent): number {
    this.counters.markers++;
    const bytes = formatMarker(event);
    return this.appendToLog(bytes, [{ offset: 0, length: bytes.length, kind: event.kind }]);
  }

  private releaseSpool(): void {
    if (this.aside?.kind === 'spool') this.aside.unwatch();
  }

  private canAccept(bytes: number): boolean {
    const aside = this.aside;
    if (!aside) return this.log.canAccept(bytes) || this.absorbs(this.log);
    if (aside.kind === 'spool') return aside.log.canAccept(bytes) || this.absorbs(aside.log);
    return aside.bytes + bytes <= this.log.maxQueueBytes;
  }

  /**
   * Under the overflow policy `block`, with a disk that makes progress, a chunk that does
   * not fit is kept as long as the queue is within its bound: the gate stops reading the
   * source right after, so the bound is exceeded by at most the one read in hand.
   */
  private absorbs(log: LogSink): boolean {
    return (
      this.overflow?.absorbing === true && log.state !== 'closed' && log.queuedBytes <= log.maxQueueBytes
    );
  }

  /** Guest bytes, or a marker of `marker`'s kind, to wherever output goes now. */
  private append(bytes: Buffer, marker?: MarkerKind): void {
    const aside = this.aside;
    if (aside?.kind === 'spool') {
      if (marker) aside.log.appendMarker(bytes, marker);
      else aside.log.append(bytes);
      return;
    }
    if (aside?.kind === 'memory') {
      aside.chunks.push(marker ? { bytes, marker } : { bytes: keepBytes(bytes) });
      aside.bytes += bytes.length;
      return;
    }
    this.appendToLog(bytes, marker ? [{ offset: 0, length: bytes.length, kind: marker }] : NO_MARKERS);
  }
}
