/**
 * common/backoff.ts: equal jitter (a delay is in [base/2, base], never near zero) and
 * a base that doubles from `initialDelayMs` to the cap, and starts over on `reset`.
 */
import { describe, expect, it } from 'vitest';
import { Backoff, jitter } from '../../common/backoff.js';

describe('backoff', () => {
  it('jitter(ms) stays within [ms/2, ms]', () => {
    const samples = Array.from({ length: 2000 }, () => jitter(1000));
    expect(Math.min(...samples)).toBeGreaterThanOrEqual(500);
    expect(Math.max(...samples)).toBeLessThanOrEqual(1000);
    // Random, not a constant: 2000 samples spread over the upper half.
    expect(new Set(samples).size).toBeGreaterThan(100);
  });

  it('doubles from initialDelayMs to maxDelayMs, and reset starts over', () => {
    const backoff = new Backoff({ initialDelayMs: 100, maxDelayMs: 1000 });
    const bases = [100, 200, 400, 800, 1000, 1000];
    for (const base of bases) {
      const delay = backoff.next();
      expect(delay).toBeGreaterThanOrEqual(base / 2);
      expect(delay).toBeLessThanOrEqual(base);
    }
    expect(backoff.attempts).toBe(bases.length);
    backoff.reset();
    expect(backoff.next()).toBeLessThanOrEqual(100);
  });

  it('initialDelayMs above maxDelayMs gives the cap every time', () => {
    const backoff = new Backoff({ initialDelayMs: 5000, maxDelayMs: 1000 });
    for (let i = 0; i < 5; i++) expect(backoff.next()).toBeLessThanOrEqual(1000);
  });
});
