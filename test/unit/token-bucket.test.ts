/** TokenBucket (sidecar/capture/token-bucket.ts) on a clock the test moves: starts full, refills at its rate, never past its burst. */
import { describe, expect, it } from 'vitest';
import { TokenBucket } from '../../sidecar/capture/token-bucket.js';

/** A clock the test sets; the bucket reads it through its `now` parameter. */
function clock(): { now: () => number; advance: (ms: number) => void } {
  let t = 1_000;
  return { now: () => t, advance: (ms) => (t += ms) };
}

describe('TokenBucket', () => {
  it('starts with its whole burst and refills at ratePerSec, in whole bytes', () => {
    const c = clock();
    const bucket = new TokenBucket(1000, 500, c.now);
    expect(bucket.available()).toBe(500);
    bucket.consume(500);
    expect(bucket.available()).toBe(0);
    c.advance(10);
    expect(bucket.available()).toBe(10);
    c.advance(0.5);
    expect(bucket.available()).toBe(10); // 10.5 tokens: whole bytes only
    c.advance(89.5);
    expect(bucket.available()).toBe(100);
  });

  it('never holds more than its burst, however long it was idle', () => {
    const c = clock();
    const bucket = new TokenBucket(1000, 500, c.now);
    bucket.consume(100);
    c.advance(3_600_000);
    expect(bucket.available()).toBe(500);
    bucket.consume(500);
    c.advance(250);
    expect(bucket.available()).toBe(250);
  });

  it('a clock that steps back neither refills nor drains', () => {
    const c = clock();
    const bucket = new TokenBucket(1000, 500, c.now);
    bucket.consume(300);
    c.advance(-50);
    expect(bucket.available()).toBe(200);
    c.advance(50);
    expect(bucket.available()).toBe(200);
    c.advance(100);
    expect(bucket.available()).toBe(300);
  });
});
