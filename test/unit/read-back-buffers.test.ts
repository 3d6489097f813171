/**
 * The replicators' read-back buffers (store/replication/read-back-buffers.ts): a buffer
 * is reused only once every hold on it is released, in any order; a few free ones are
 * kept; a read larger than a pooled buffer gets one of its own, never pooled; at most
 * `maxHeld` are held at once.
 * Generated sequences of takes, holds and releases are checked against a model.
 */
import { describe, expect, it } from 'vitest';
import { ReadBackBuffers } from '../../store/replication/read-back-buffers.js';
import { prng } from '../support/prng.js';

describe('read-back buffers', () => {
  it('reuses a buffer only after its last hold is released', () => {
    const pool = new ReadBackBuffers(1024, 2);
    const a = pool.take(1000);
    pool.hold(a); // an append in flight
    pool.release(a); // the read-ahead moved on
    const b = pool.take(1000);
    expect(b).not.toBe(a); // the append still holds a
    pool.release(a); // the append settled
    const c = pool.take(500);
    expect(c).toBe(a);
    expect(pool.counters).toEqual({ taken: 3, allocated: 2 });
    pool.release(b);
    pool.release(c);
    expect(pool.counts).toEqual({ held: 0, free: 2 });
  });

  it('keeps at most `keep` free buffers and never pools an oversized one', () => {
    const pool = new ReadBackBuffers(1024, 1);
    const taken = [pool.take(1024), pool.take(1024), pool.take(1024)];
    for (const b of taken) pool.release(b);
    expect(pool.counts).toEqual({ held: 0, free: 1 });
    const big = pool.take(4096);
    expect(big.length).toBe(4096);
    pool.hold(big);
    pool.release(big);
    pool.release(big);
    expect(pool.counts).toEqual({ held: 0, free: 1 });
    expect(pool.counters.taken).toBe(3);
  });

  it('allows a pooled buffer only while fewer than `maxHeld` are held', () => {
    const pool = new ReadBackBuffers(1024, 2, 2);
    const a = pool.take(10);
    expect(pool.canTake()).toBe(true);
    const b = pool.take(10);
    expect(pool.canTake()).toBe(false);
    pool.hold(a); // a second hold on a held buffer is not another buffer
    pool.release(a);
    expect(pool.canTake()).toBe(false);
    pool.release(b);
    expect(pool.canTake()).toBe(true);
    pool.release(a);
    expect(pool.counts).toEqual({ held: 0, free: 2 });
  });

  it.each([1, 2, 3])('never hands out a buffer someone holds (generated, seed %i)', (seed) => {
    const random = prng(seed);
    const pool = new ReadBackBuffers(64, 3);
    /** The model: holds per buffer we were given. */
    const holds = new Map<Buffer, number>();
    for (let step = 0; step < 2000; step++) {
      const r = random();
      const held = [...holds.keys()];
      if (r < 0.3 || held.length === 0) {
        const b = pool.take(1 + Math.floor(random() * 64));
        expect(holds.has(b)).toBe(false); // not held by anyone
        holds.set(b, 1);
      } else if (r < 0.55) {
        const b = held[Math.floor(random() * held.length)]!;
        pool.hold(b);
        holds.set(b, holds.get(b)! + 1);
      } else {
        const b = held[Math.floor(random() * held.length)]!;
        pool.release(b);
        const left = holds.get(b)! - 1;
        if (left === 0) holds.delete(b);
        else holds.set(b, left);
      }
      expect(pool.counts.held).toBe(holds.size);
    }
    expect(pool.counters.allocated).toBeLessThan(pool.counters.taken);
  });
});
