/**
 * The local log's write queue (store/log-write-queue.ts) on its own: the bound covers
 * pending and in-flight bytes, small appends coalesce behind a short timer while a
 * backlog drains at once, chunks are taken in order across appends, and a failed
 * write's chunks go back to the front in order.
 */
import { describe, expect, it } from 'vitest';
import { COALESCE_BYTES, COALESCE_MS, WriteQueue } from '../../store/log-write-queue.js';
import { sleep } from '../support/wait.js';

/** A queue whose drains are counted; `drained()` resolves at the next one. */
function counted(maxBytes = 1024 * 1024) {
  let drains = 0;
  let wake: (() => void) | null = null;
  const queue = new WriteQueue(maxBytes, () => {
    drains++;
    wake?.();
    wake = null;
  });
  return {
    queue,
    get drains() {
      return drains;
    },
    drained: () => new Promise<void>((resolve) => (wake = resolve)),
  };
}

describe('WriteQueue', () => {
  it('bounds pending and in-flight bytes together', () => {
    const { queue } = counted(100);
    queue.push(Buffer.alloc(60));
    expect(queue.canAccept(40)).toBe(true);
    expect(queue.canAccept(41)).toBe(false);
    queue.take(50); // in flight now: still counted
    expect(queue.pendingBytes).toBe(10);
    expect(queue.inflightBytes).toBe(50);
    expect(queue.queuedBytes).toBe(60);
    expect(queue.canAccept(41)).toBe(false);
    queue.acknowledge(50);
    expect(queue.queuedBytes).toBe(10);
    expect(queue.canAccept(90)).toBe(true);
    queue.stopTimer();
  });

  it("drains the first small append right after the caller's turn, holds the next ones for one coalesced drain, and drains a backlog at once", async () => {
    const q = counted();
    q.queue.push(Buffer.alloc(100, 0));
    expect(q.drains).toBe(0); // not inside the caller's turn (the hub sends an echo first)
    await null;
    expect(q.drains).toBe(1); // but right after it: after a quiet spell, waiting would gather nothing
    q.queue.take(100);
    q.queue.acknowledge(100);
    q.queue.written();

    const next = q.drained();
    for (let i = 1; i < 10; i++) q.queue.push(Buffer.alloc(100, i));
    expect(q.drains).toBe(1); // right after a write: they wait to leave together
    await next;
    expect(q.drains).toBe(2);
    expect(q.queue.pendingBytes).toBe(900);
    q.queue.take(900);
    q.queue.acknowledge(900);

    q.queue.push(Buffer.alloc(COALESCE_BYTES));
    expect(q.drains).toBe(3); // a full write's worth goes at once
    q.queue.stopTimer();
  });

  it('drains a small append at once again after a quiet COALESCE_MS', async () => {
    const q = counted();
    q.queue.push(Buffer.alloc(10));
    q.queue.take(10);
    q.queue.acknowledge(10);
    await sleep(COALESCE_MS + 5);
    q.queue.push(Buffer.alloc(10));
    await null;
    expect(q.drains).toBe(2);
    q.queue.stopTimer();
  });

  it('arms no timer while a write is in flight: its acknowledgement drains the queue', async () => {
    const q = counted();
    q.queue.push(Buffer.alloc(COALESCE_BYTES));
    expect(q.drains).toBe(1);
    q.queue.take(COALESCE_BYTES);
    q.queue.push(Buffer.alloc(10));
    await sleep(300);
    expect(q.drains).toBe(1);
  });

  it('takes chunks in order, across and within appends, without copying them', () => {
    const { queue } = counted();
    queue.push(Buffer.from('abc'));
    queue.push(Buffer.from('defg'));
    queue.push(Buffer.from('hi'));
    const taken = (size: number) => Buffer.concat(queue.take(size)).toString();
    expect(taken(2)).toBe('ab');
    expect(taken(4)).toBe('cdef');
    expect(taken(3)).toBe('ghi');
    expect(queue.pendingBytes).toBe(0);
    // A short write: the first 3 bytes landed, the rest is still in flight, in order.
    queue.acknowledge(3);
    expect(Buffer.concat([...queue.unacknowledged]).toString()).toBe('defghi');
    expect(queue.inflightBytes).toBe(6);
    queue.stopTimer();
  });

  it('puts a failed write back at the front, in order, ahead of later appends', () => {
    const { queue } = counted();
    queue.push(Buffer.from('0123456789'));
    queue.take(3);
    queue.take(3);
    queue.push(Buffer.from('XY'));
    queue.requeueInflight();
    expect(queue.inflightBytes).toBe(0);
    expect(queue.pendingBytes).toBe(12);
    expect(Buffer.concat(queue.take(12)).toString()).toBe('0123456789XY');
    expect(() => queue.acknowledge(13)).toThrow(/not in flight/);
    queue.stopTimer();
  });
});
