/** FlushPacer: interactive output goes at once, bulk output is coalesced, and the frame budget holds. */
import { describe, expect, it } from 'vitest';
import { FlushPacer } from '../../sidecar/console/flush-pacer.js';

const options = { coalesceMs: 10, bulkBytesPerSec: 64 * 1024, maxFramesPerSec: 20_000 };

/** 100 ms of bulk output, 1 MiB/s in 1 KiB chunks, from `t`; returns the time after. */
function bulkOutput(p: FlushPacer, t: number): number {
  for (let i = 0; i < 100; i++) p.noteBytes(1024, t + i);
  return t + 100;
}

describe('FlushPacer', () => {
  it('flushes a keystroke echo at once, even many in a row', () => {
    const p = new FlushPacer(options);
    let t = 1000;
    for (let i = 0; i < 2000; i++) {
      p.noteBytes(1, t);
      expect(p.delayMs(1, t)).toBe(0);
      p.noteFlush(1, t);
      t += 0.1; // 10 000 round trips a second
    }
  });

  it('coalesces bulk output over coalesceMs', () => {
    const p = new FlushPacer(options);
    const t = bulkOutput(p, 1000);
    expect(p.bytesPerSec(t)).toBeGreaterThan(500 * 1024);
    p.noteFlush(100, t);
    p.noteBytes(1024, t + 1);
    expect(p.delayMs(100, t + 1)).toBeCloseTo(9, 5);
    expect(p.delayMs(100, t + 12)).toBe(0);
  });

  it('sends a lone chunk at once after bulk output, once coalesceMs has passed since the last flush', () => {
    const p = new FlushPacer(options);
    const t = bulkOutput(p, 1000);
    p.noteFlush(100, t);
    // A keystroke's echo 15 ms later: the rate estimate still says bulk, yet nothing waits.
    p.noteBytes(1, t + 15);
    expect(p.bytesPerSec(t + 15)).toBeGreaterThan(options.bulkBytesPerSec);
    expect(p.delayMs(1, t + 15)).toBe(0);
  });

  it('holds many tiny flushes to many viewers to the frame budget', () => {
    const p = new FlushPacer({ ...options, maxFramesPerSec: 1000 });
    const t = 1000;
    p.noteBytes(1, t);
    expect(p.delayMs(100, t)).toBe(0);
    p.noteFlush(100, t); // the whole burst allowance
    p.noteBytes(1, t);
    expect(p.delayMs(100, t)).toBeCloseTo(100, 5); // 100 frames at 1000 a second
  });
});
