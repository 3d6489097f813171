import type { Logger } from 'pino';
import type { OverflowPolicy } from '../config.js';

/** What the gate watches of a guest's local log. */
export interface GatedLog {
  readonly queuedBytes: number;
  readonly maxQueueBytes: number;
  /** Offset up to which the disk acknowledged bytes. */
  readonly flushedEnd: number;
  watchFlushed(listener: (end: number) => void): () => void;
}

/** What the gate holds of a guest's source. */
export interface GatedSource {
  pauseReading(reason: string): void;
  resumeReading(reason: string): void;
}

export interface OverflowGateOptions {
  readonly policy: OverflowPolicy;
  /** The window over which the disk's progress is judged. */
  readonly maxStallMs: number;
  /** Bytes the disk must acknowledge per window to count as making progress. */
  readonly minProgressBytes: number;
}

/** The reason the gate gives the source (sources/source.ts `pauseReading`). */
export const OVERFLOW_HOLD = 'overflow';

/**
 * The overflow policy `block` of one guest (docs/design.md "Local store"): when the
 * log's queue rises above half its bound, reading the source stops, so the guest waits
 * in the kernel's socket buffer, then in QEMU, then at its UART, as under virtlogd; it
 * resumes once the queue is back under a quarter. The disk is judged every `maxStallMs`
 * while the guest is held: when it acknowledged fewer than `minProgressBytes` (full,
 * failing, hung, or slower than a serial console) the disk is stalled, reading resumes
 * and capture drops and marks what does not fit (sidecar/capture/capture.ts), until a window
 * shows progress again. A stuck disk thus holds the guest at most `maxStallMs`.
 *
 * Under `drop` the gate does nothing: capture drops and marks as soon as the queue is full.
 */
export class OverflowGate {
  private holding = false;
  private stalled = false;
  private timer: NodeJS.Timeout | null = null;
  private windowStart = 0;
  private readonly highWaterBytes: number;
  private readonly lowWaterBytes: number;
  private readonly unwatch: () => void;
  /** Counters for status and metrics. */
  readonly counters = { holds: 0, stalls: 0 };

  constructor(
    private readonly log: GatedLog,
    private readonly source: GatedSource,
    private readonly options: OverflowGateOptions,
    private readonly logger: Logger,
  ) {
    this.highWaterBytes = Math.floor(log.maxQueueBytes / 2);
    this.lowWaterBytes = Math.floor(log.maxQueueBytes / 4);
    this.unwatch = options.policy === 'block' ? log.watchFlushed(() => this.onFlushed()) : () => undefined;
  }

  get policy(): OverflowPolicy {
    return this.options.policy;
  }

  /** Whether the guest is being held (its source not read). */
  get blocking(): boolean {
    return this.holding;
  }

  /**
   * Whether capture keeps a chunk that does not fit the queue's bound rather than drop it:
   * under `block` while the disk makes progress, since reading stops right after it (the
   * queue then exceeds its bound by at most the one read in hand).
   */
  get absorbing(): boolean {
    return this.options.policy === 'block' && !this.stalled;
  }

  /** Whether the disk was last judged stalled (the guest is read and its output dropped). */
  get diskStalled(): boolean {
    return this.stalled;
  }

  /** After each chunk capture took: hold the guest when the queue passed its high-water mark. */
  afterIngest(): void {
    if (this.holding || this.stalled || this.options.policy !== 'block') return;
    if (this.log.queuedBytes < this.highWaterBytes) return;
    this.holding = true;
    this.counters.holds++;
    this.source.pauseReading(OVERFLOW_HOLD);
    this.startJudging();
  }

  private onFlushed(): void {
    if (this.holding && this.log.queuedBytes <= this.lowWaterBytes) this.release();
  }

  private release(): void {
    this.holding = false;
    this.source.resumeReading(OVERFLOW_HOLD);
    if (!this.stalled) this.stopJudging();
  }

  private startJudging(): void {
    this.windowStart = this.log.flushedEnd;
    if (this.timer) return;
    this.timer = setInterval(() => this.judge(), this.options.maxStallMs);
    this.timer.unref();
  }

  private stopJudging(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }

  /** One window is over: did the disk make progress? */
  private judge(): void {
    // A renumbering can move offsets back; that is no progress, but no stall either.
    const progress = Math.max(0, this.log.flushedEnd - this.windowStart);
    this.windowStart = this.log.flushedEnd;
    // An empty queue means the disk took everything there was.
    const moving = progress >= this.options.minProgressBytes || this.log.queuedBytes === 0;
    if (!moving && !this.stalled) {
      this.stalled = true;
      this.counters.stalls++;
      this.logger.warn(
        { acknowledgedBytes: progress, windowMs: this.options.maxStallMs, queued: this.log.queuedBytes },
        'disk not keeping up; reading the guest again and dropping what does not fit',
      );
      if (this.holding) this.release();
    } else if (moving && this.stalled) {
      this.stalled = false;
      this.logger.info(
        { acknowledgedBytes: progress },
        'disk keeping up again; holding the guest when its queue is full',
      );
      if (!this.holding) this.stopJudging();
    } else if (!this.holding && !this.stalled) this.stopJudging();
  }

  /** The guest is detaching: let go of the source and stop the timer. */
  close(): void {
    this.unwatch();
    this.stopJudging();
    if (this.holding) {
      this.holding = false;
      this.source.resumeReading(OVERFLOW_HOLD);
    }
  }
}
