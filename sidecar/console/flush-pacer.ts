/** Time constant of the output-rate estimate. */
const RATE_WINDOW_MS = 100;

export interface FlushPacerOptions {
  /** During bulk output, frames are coalesced over this window. */
  readonly coalesceMs: number;
  /** Output rate above which output counts as bulk. */
  readonly bulkBytesPerSec: number;
  /** Frames per second (summed over viewers) the hub sends before it coalesces anyway. */
  readonly maxFramesPerSec: number;
}

/**
 * Decides when a hub hands the output it has gathered to its viewers. Sending costs
 * per frame, not per byte (a plain `ws` fan-out of 1 KiB chunks to 100 viewers costs
 * about 65% of a core, of 10 KiB chunks about 12%), so bulk output is coalesced into
 * one frame per viewer per `coalesceMs`. Interactive output (a keystroke's echo) is
 * sent at once: coalescing it would add the whole window to every round trip.
 *
 * Bulk is told apart by rate: an exponentially decaying byte count over about
 * 100 ms, compared with `bulkBytesPerSec`. A frame budget (a token bucket of
 * `maxFramesPerSec`, charged one token per viewer a flush reaches) bounds the
 * remaining case, many tiny chunks at a low byte rate to many viewers.
 */
export class FlushPacer {
  private level = 0;
  private levelAtMs = 0;
  private tokens: number;
  private tokensAtMs = 0;
  private lastFlushMs = Number.NEGATIVE_INFINITY;
  private readonly capacity: number;

  constructor(private readonly options: FlushPacerOptions) {
    // A tenth of a second's worth of frames may go out in a burst.
    this.capacity = Math.max(1, options.maxFramesPerSec / 10);
    this.tokens = this.capacity;
  }

  /** Output arrived. */
  noteBytes(bytes: number, nowMs: number): void {
    this.level = this.decayed(nowMs) + bytes;
    this.levelAtMs = nowMs;
  }

  /** Estimated output rate, bytes per second. */
  bytesPerSec(nowMs: number): number {
    return (this.decayed(nowMs) * 1000) / RATE_WINDOW_MS;
  }

  /** Milliseconds to wait before flushing to `viewers` viewers; 0 means now. */
  delayMs(viewers: number, nowMs: number): number {
    let delay = 0;
    if (this.bytesPerSec(nowMs) > this.options.bulkBytesPerSec) {
      delay = Math.max(0, this.lastFlushMs + this.options.coalesceMs - nowMs);
    }
    const tokens = this.refilled(nowMs);
    if (tokens < viewers) {
      delay = Math.max(
        delay,
        ((Math.min(viewers, this.capacity) - tokens) * 1000) / this.options.maxFramesPerSec,
      );
    }
    return delay;
  }

  /** A flush sent `frames` frames. */
  noteFlush(frames: number, nowMs: number): void {
    this.tokens = Math.max(0, this.refilled(nowMs) - frames);
    this.tokensAtMs = nowMs;
    this.lastFlushMs = nowMs;
  }

  private decayed(nowMs: number): number {
    if (this.level === 0) return 0;
    return this.level * Math.exp(-(nowMs - this.levelAtMs) / RATE_WINDOW_MS);
  }

  private refilled(nowMs: number): number {
    return Math.min(
      this.capacity,
      this.tokens + ((nowMs - this.tokensAtMs) * this.options.maxFramesPerSec) / 1000,
    );
  }
}
