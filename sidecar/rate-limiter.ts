import { TokenBucket } from './token-bucket.js';

export interface RateLimit {
  /** Sustained bytes per second; 0 turns the limit off. */
  readonly bytesPerSec: number;
  readonly burstBytes: number;
}

/** What the limiter decided for one chunk. */
export interface Admission {
  /** Bytes of the chunk to keep (a prefix). */
  readonly accepted: number;
  /** When > 0: a suppression episode just ended with this many bytes dropped; write the marker first. */
  readonly suppressedBefore: number;
}

/**
 * One guest's limit, combined with the host-wide bucket it shares with every guest.
 * Suppression runs in episodes: once a byte is dropped, everything is dropped until
 * the guest's bucket has refilled to half its burst, so the log shows whole stretches
 * of output separated by one marker each, not a marker per chunk.
 */
export class RateLimiter {
  private readonly guest: TokenBucket | null;
  private suppressing = false;
  private suppressedBytes = 0;
  /** Bytes dropped over the guest's lifetime. */
  totalSuppressed = 0;

  constructor(
    limit: RateLimit,
    private readonly host: TokenBucket | null,
  ) {
    this.guest =
      limit.bytesPerSec > 0 ? new TokenBucket(limit.bytesPerSec, Math.max(1, limit.burstBytes)) : null;
  }

  get active(): boolean {
    return this.suppressing;
  }

  /** No limit applies (neither the guest's nor the host's): every chunk is kept as it is. */
  get unlimited(): boolean {
    return !this.guest && !this.host;
  }

  admit(length: number): Admission {
    if (!this.guest && !this.host) return { accepted: length, suppressedBefore: 0 };
    const guestTokens = this.guest ? this.guest.available() : Number.POSITIVE_INFINITY;
    const hostTokens = this.host ? this.host.available() : Number.POSITIVE_INFINITY;
    let suppressedBefore = 0;
    if (this.suppressing) {
      const refilled =
        (!this.guest || guestTokens >= this.guest.burst / 2) &&
        (!this.host || hostTokens >= this.host.burst / 2);
      if (!refilled) return this.drop(length);
      this.suppressing = false;
      suppressedBefore = this.suppressedBytes;
      this.suppressedBytes = 0;
    }
    const accepted = Math.max(0, Math.min(length, guestTokens, hostTokens));
    this.guest?.consume(accepted);
    this.host?.consume(accepted);
    if (accepted < length) {
      this.suppressing = true;
      this.suppressedBytes += length - accepted;
      this.totalSuppressed += length - accepted;
    }
    return { accepted, suppressedBefore };
  }

  private drop(length: number): Admission {
    this.suppressedBytes += length;
    this.totalSuppressed += length;
    return { accepted: 0, suppressedBefore: 0 };
  }

  /** Bytes dropped in the episode still running (reported by the next marker). */
  get pendingSuppressed(): number {
    return this.suppressedBytes;
  }
}
