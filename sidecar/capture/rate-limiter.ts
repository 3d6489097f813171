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

/** What an upgrade carries over of a guest's limiter (docs/design.md "Upgrade"). */
export interface RateLimitState {
  /** Tokens in the guest's bucket, or null when the guest has no limit. */
  readonly tokens: number | null;
  /** Bytes dropped in a suppression episode still running (its marker is still owed). */
  readonly suppressedBytes: number;
}

/**
 * One guest's limit, combined with the host-wide bucket it shares with every guest.
 * Suppression runs in episodes: once a byte is dropped, everything is dropped until
 * the guest's bucket has refilled to half its burst, so the log shows whole stretches
 * of output separated by one marker each, not a marker per chunk.
 */
function bucketFor(limit: RateLimit): TokenBucket | null {
  return limit.bytesPerSec > 0 ? new TokenBucket(limit.bytesPerSec, Math.max(1, limit.burstBytes)) : null;
}

export class RateLimiter {
  private guest: TokenBucket | null;
  private suppressing = false;
  /** A reload changed the limits: the running episode ends at the next chunk. */
  private episodeEndsNow = false;
  private suppressedBytes = 0;
  /** Bytes dropped over the guest's lifetime. */
  totalSuppressed = 0;

  constructor(
    private limit: RateLimit,
    private host: TokenBucket | null,
  ) {
    this.guest = bucketFor(limit);
  }

  /**
   * Another limit or host bucket from now on (a reload, docs/design.md "Service
   * lifecycle"). A changed guest limit starts with a full bucket, as at attach; when
   * anything changed, a running suppression episode ends at the next chunk with its
   * count, so a raised limit takes effect at once. The same limit and bucket again is
   * a no-op.
   */
  reconfigure(limit: RateLimit, host: TokenBucket | null): void {
    const limitChanged =
      limit.bytesPerSec !== this.limit.bytesPerSec || limit.burstBytes !== this.limit.burstBytes;
    if (!limitChanged && host === this.host) return;
    if (limitChanged) {
      this.limit = { bytesPerSec: limit.bytesPerSec, burstBytes: limit.burstBytes };
      this.guest = bucketFor(limit);
    }
    this.host = host;
    if (this.suppressing) this.episodeEndsNow = true;
  }

  get active(): boolean {
    return this.suppressing;
  }

  /** No limit applies (neither the guest's nor the host's): every chunk is kept as it is. */
  get unlimited(): boolean {
    return !this.guest && !this.host;
  }

  admit(length: number): Admission {
    // No limit at all, unless a reload lifted one in the middle of an episode: that
    // episode still ends below, with its count.
    if (!this.guest && !this.host && !this.suppressing) return { accepted: length, suppressedBefore: 0 };
    const guestTokens = this.guest ? this.guest.available() : Number.POSITIVE_INFINITY;
    const hostTokens = this.host ? this.host.available() : Number.POSITIVE_INFINITY;
    let suppressedBefore = 0;
    if (this.suppressing) {
      const refilled =
        this.episodeEndsNow ||
        ((!this.guest || guestTokens >= this.guest.burst / 2) &&
          (!this.host || hostTokens >= this.host.burst / 2));
      if (!refilled) return this.drop(length);
      this.suppressing = false;
      this.episodeEndsNow = false;
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

  /** The bucket and the running episode, for a successor to carry on with. */
  get state(): RateLimitState {
    return {
      tokens: this.guest ? this.guest.available() : null,
      suppressedBytes: this.suppressing ? this.suppressedBytes : 0,
    };
  }

  /** Carries on from `state` (taken by the process before an upgrade). */
  restore(state: RateLimitState): void {
    if (this.guest && state.tokens !== null) this.guest.refillTo(state.tokens);
    if (state.suppressedBytes > 0) {
      this.suppressing = true;
      this.suppressedBytes = state.suppressedBytes;
    }
  }

  /** Bytes dropped in the episode still running (reported by the next marker). */
  get pendingSuppressed(): number {
    return this.suppressedBytes;
  }
}
