/**
 * RateLimiter (sidecar/capture/rate-limiter.ts) without a daemon: the guest's bucket and the
 * host-wide one together, and suppression in episodes (everything dropped until the
 * buckets are back at half their burst, then one count of what was dropped).
 * The host bucket runs on a clock the test moves; a guest bucket reads the real
 * clock, so the guest-only cases use a rate of 1 byte/s, which cannot refill
 * anything that matters while a test runs.
 */
import { describe, expect, it } from 'vitest';
import { RateLimiter } from '../../sidecar/capture/rate-limiter.js';
import { TokenBucket } from '../../sidecar/capture/token-bucket.js';

const OFF = { bytesPerSec: 0, burstBytes: 0 };

function hostBucket(
  ratePerSec: number,
  burst: number,
): { bucket: TokenBucket; advance: (ms: number) => void } {
  let t = 0;
  return { bucket: new TokenBucket(ratePerSec, burst, () => t), advance: (ms) => (t += ms) };
}

describe('RateLimiter', () => {
  it('keeps everything when neither the guest nor the host has a limit', () => {
    const limiter = new RateLimiter(OFF, null);
    expect(limiter.admit(10 * 1024 * 1024)).toEqual({ accepted: 10 * 1024 * 1024, suppressedBefore: 0 });
    expect(limiter.active).toBe(false);
    expect(limiter.totalSuppressed).toBe(0);
  });

  it('keeps the prefix the guest bucket holds and drops the rest', () => {
    const limiter = new RateLimiter({ bytesPerSec: 1, burstBytes: 1000 }, null);
    expect(limiter.admit(600)).toEqual({ accepted: 600, suppressedBefore: 0 });
    expect(limiter.admit(600)).toEqual({ accepted: 400, suppressedBefore: 0 });
    expect(limiter.active).toBe(true);
    expect(limiter.pendingSuppressed).toBe(200);
    expect(limiter.totalSuppressed).toBe(200);
  });

  it('a burst of 0 still lets one byte through (the burst is at least 1)', () => {
    const limiter = new RateLimiter({ bytesPerSec: 1, burstBytes: 0 }, null);
    expect(limiter.admit(5).accepted).toBe(1);
  });

  it('drops whole chunks until the bucket is back at half its burst, then reports the episode once', () => {
    const host = hostBucket(1000, 100);
    const limiter = new RateLimiter(OFF, host.bucket);
    expect(limiter.admit(60).accepted).toBe(60);
    expect(limiter.admit(60)).toEqual({ accepted: 40, suppressedBefore: 0 });
    // Tokens come back, but below half the burst nothing is kept, not even a byte that would fit.
    host.advance(10);
    expect(limiter.admit(5)).toEqual({ accepted: 0, suppressedBefore: 0 });
    host.advance(39);
    expect(limiter.admit(1)).toEqual({ accepted: 0, suppressedBefore: 0 });
    expect(limiter.pendingSuppressed).toBe(26);
    expect(limiter.active).toBe(true);
    // 50 tokens: the episode ends; its count comes with the first chunk kept after it.
    host.advance(1);
    expect(limiter.admit(20)).toEqual({ accepted: 20, suppressedBefore: 26 });
    expect(limiter.active).toBe(false);
    expect(limiter.pendingSuppressed).toBe(0);
    expect(limiter.totalSuppressed).toBe(26);
  });

  it('admit(0) ends an episode that is due without keeping anything (what capture polls when the guest is quiet)', () => {
    const host = hostBucket(1000, 100);
    const limiter = new RateLimiter(OFF, host.bucket);
    limiter.admit(130);
    expect(limiter.admit(0)).toEqual({ accepted: 0, suppressedBefore: 0 });
    host.advance(50);
    expect(limiter.admit(0)).toEqual({ accepted: 0, suppressedBefore: 30 });
    expect(limiter.active).toBe(false);
  });

  it('the host bucket is shared: what one guest used, another does not get', () => {
    const host = hostBucket(1000, 100);
    const a = new RateLimiter(OFF, host.bucket);
    const b = new RateLimiter(OFF, host.bucket);
    expect(a.admit(70).accepted).toBe(70);
    expect(b.admit(70)).toEqual({ accepted: 30, suppressedBefore: 0 });
    expect(a.active).toBe(false);
    expect(b.active).toBe(true);
  });

  it('with both limits the smaller budget decides, and an episode ends only when both refilled to half', () => {
    const host = hostBucket(1000, 100);
    const limiter = new RateLimiter({ bytesPerSec: 1, burstBytes: 200 }, host.bucket);
    // The host's 100 is the smaller budget.
    expect(limiter.admit(150)).toEqual({ accepted: 100, suppressedBefore: 0 });
    // The host is full again and the guest holds 100 of 200, half: the episode ends.
    host.advance(100);
    expect(limiter.admit(10)).toEqual({ accepted: 10, suppressedBefore: 50 });
    // Now the guest's 90 is the smaller budget.
    host.advance(1000);
    expect(limiter.admit(1000)).toEqual({ accepted: 90, suppressedBefore: 0 });
    // The host refills; the guest (1 byte/s) does not: the episode goes on.
    host.advance(1000);
    expect(limiter.admit(0)).toEqual({ accepted: 0, suppressedBefore: 0 });
    expect(limiter.active).toBe(true);
    expect(limiter.pendingSuppressed).toBe(910);
  });

  it('reconfigure (a reload): a changed limit starts full and ends a running episode at once; the same limit is a no-op', () => {
    const limiter = new RateLimiter(OFF, null);
    expect(limiter.admit(5000).accepted).toBe(5000);
    limiter.reconfigure({ bytesPerSec: 1, burstBytes: 1000 }, null);
    expect(limiter.admit(1500)).toEqual({ accepted: 1000, suppressedBefore: 0 });
    expect(limiter.active).toBe(true);
    limiter.reconfigure({ bytesPerSec: 1, burstBytes: 1000 }, null); // unchanged: the episode goes on
    expect(limiter.admit(100)).toEqual({ accepted: 0, suppressedBefore: 0 });
    limiter.reconfigure({ bytesPerSec: 1, burstBytes: 4000 }, null); // raised: full bucket, episode over
    expect(limiter.admit(700)).toEqual({ accepted: 700, suppressedBefore: 600 });
    expect(limiter.active).toBe(false);
    limiter.reconfigure({ bytesPerSec: 1, burstBytes: 100 }, null);
    expect(limiter.admit(300)).toEqual({ accepted: 100, suppressedBefore: 0 });
    limiter.reconfigure(OFF, null); // lifted: the episode ends at the next chunk, with its count
    expect(limiter.admit(700)).toEqual({ accepted: 700, suppressedBefore: 200 });
    const host = hostBucket(1, 300);
    limiter.reconfigure(OFF, host.bucket);
    expect(limiter.admit(400)).toEqual({ accepted: 300, suppressedBefore: 0 });
  });
});

describe('RateLimiter carried over an upgrade', () => {
  it('goes on with the bucket and the suppression episode of the process before', () => {
    const limit = { bytesPerSec: 100, burstBytes: 1000 };
    const before = new RateLimiter(limit, null);
    expect(before.admit(1000).accepted).toBe(1000);
    expect(before.admit(500).accepted).toBe(0); // the bucket is empty: an episode starts
    const state = before.state;
    expect(state.tokens).toBeLessThan(10);
    expect(state.suppressedBytes).toBe(500);

    const fresh = new RateLimiter(limit, null);
    expect(fresh.admit(10).accepted).toBe(10); // what a successor without the state would do

    const after = new RateLimiter(limit, null);
    after.restore(state);
    expect(after.active).toBe(true);
    expect(after.admit(10).accepted).toBe(0); // still suppressing, still counting
    expect(after.pendingSuppressed).toBe(510);
  });
});
