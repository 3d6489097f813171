/**
 * Borrowed reads (docs/design.md "Borrowed reads"): bytes lent for the length of one call
 * are copied by whoever keeps them. The write queue copies them into slabs it reuses once
 * they are written; a slab from a write given up on is never reused; the replicator's
 * recent bytes copy them; bytes that are not borrowed are kept as they are.
 *
 * Each case lends a buffer, pushes views of it, then overwrites the buffer as the next
 * read would: what was kept must still hold the first bytes.
 */
import { describe, expect, it } from 'vitest';
import { isBorrowed, keepBytes, lendsItsBytes } from '../../common/borrowed-bytes.js';
import { WriteQueue } from '../../store/log-write-queue.js';
import { RecentBytes } from '../../store/replication/recent-bytes.js';
import { SLAB_BYTES } from '../../store/slab-copies.js';

/** A buffer read into again, as a chardev socket's shared one. */
function lentBuffer(size: number): Buffer {
  const buf = Buffer.allocUnsafeSlow(size);
  lendsItsBytes(buf);
  return buf;
}

/** `size` bytes numbered from `seed`: a pattern whose every position differs between seeds. */
function pattern(size: number, seed: number): Buffer {
  const out = Buffer.allocUnsafe(size);
  for (let i = 0; i < size; i++) out[i] = (i * 7 + seed * 13) & 0xff;
  return out;
}

/** Reads `bytes` "into" the lent buffer and returns the view a read would lend. */
function read(into: Buffer, bytes: Buffer): Buffer {
  bytes.copy(into);
  return into.subarray(0, bytes.length);
}

function takeAll(queue: WriteQueue): Buffer {
  const size = queue.pendingBytes;
  return Buffer.concat(queue.take(size), size);
}

describe('borrowed bytes', () => {
  it('only a buffer that owns its memory can be lent (a pooled one would lend the pool)', () => {
    expect(() => lendsItsBytes(Buffer.allocUnsafe(100))).toThrow(/own its memory/);
    expect(() => lendsItsBytes(Buffer.allocUnsafeSlow(100).subarray(1))).toThrow(/own its memory/);
    expect(isBorrowed(Buffer.allocUnsafe(100))).toBe(false);
  });

  it('keepBytes copies a borrowed view and keeps any other buffer as it is', () => {
    const lent = lentBuffer(1024);
    const view = read(lent, pattern(100, 1));
    expect(isBorrowed(view)).toBe(true);
    expect(isBorrowed(view.subarray(10, 20))).toBe(true);
    const kept = keepBytes(view);
    expect(kept).not.toBe(view);
    expect(isBorrowed(kept)).toBe(false);
    read(lent, pattern(100, 2));
    expect(kept.equals(pattern(100, 1))).toBe(true);
    const own = pattern(10, 3);
    expect(keepBytes(own)).toBe(own);
  });

  it('the write queue copies borrowed bytes, and adjacent copies leave as one view', () => {
    const lent = lentBuffer(256 * 1024);
    const queue = new WriteQueue(16 * 1024 * 1024, () => undefined);
    const own = pattern(50, 9);
    const sent: Buffer[] = [];
    for (let seed = 0; seed < 3; seed++) {
      const bytes = pattern(100_000, seed);
      sent.push(bytes);
      queue.push(read(lent, bytes)); // the next read overwrites the lent buffer
    }
    queue.push(own);
    sent.push(own);
    expect(queue.pendingBytes).toBe(300_050);
    const parts = queue.take(queue.pendingBytes);
    // 300 000 copied bytes in 256 KiB slabs: two views, then the buffer that was not borrowed, as it is.
    expect(parts.map((p) => p.length)).toEqual([SLAB_BYTES, 300_000 - SLAB_BYTES, 50]);
    expect(parts[2]).toBe(own);
    expect(Buffer.concat(parts).equals(Buffer.concat(sent))).toBe(true);
  });

  it('a slab goes back once its bytes are written, and the next copy reuses it', () => {
    const lent = lentBuffer(64 * 1024);
    const queue = new WriteQueue(16 * 1024 * 1024, () => undefined);
    queue.push(read(lent, pattern(40_000, 1)));
    queue.push(read(lent, pattern(40_000, 2)));
    expect(queue.slabsHeld).toBe(1);
    const first = queue.take(30_000);
    const slab = first[0]!.buffer;
    queue.acknowledge(30_000); // part of the slab written: it stays
    expect(queue.slabsHeld).toBe(1);
    const rest = takeAll(queue);
    expect(rest.equals(Buffer.concat([pattern(40_000, 1), pattern(40_000, 2)]).subarray(30_000))).toBe(true);
    queue.acknowledge(50_000);
    expect(queue.slabsHeld).toBe(0); // the queue is empty: no slab kept by an idle guest
    const other = new WriteQueue(16 * 1024 * 1024, () => undefined);
    other.push(read(lent, pattern(1000, 3)));
    const [view] = other.take(1000);
    expect(view!.buffer).toBe(slab);
    expect(view!.equals(pattern(1000, 3))).toBe(true);
  });

  it('a slab whose write was given up on is never reused', () => {
    const lent = lentBuffer(64 * 1024);
    const queue = new WriteQueue(16 * 1024 * 1024, () => undefined);
    queue.push(read(lent, pattern(10_000, 1)));
    const [given] = queue.take(10_000);
    const slab = given!.buffer;
    queue.requeueInflight(); // the writer gave the write up (a disk error); it may still run
    const again = takeAll(queue);
    expect(again.equals(pattern(10_000, 1))).toBe(true);
    queue.acknowledge(10_000);
    expect(queue.slabsHeld).toBe(0);
    for (let i = 0; i < 4; i++) {
      const q = new WriteQueue(16 * 1024 * 1024, () => undefined);
      q.push(read(lent, pattern(1000, i)));
      expect(q.take(1000)[0]!.buffer).not.toBe(slab);
    }
  });

  it("the replicator's recent bytes copy what is borrowed", () => {
    const lent = lentBuffer(64 * 1024);
    const recent = new RecentBytes(1024 * 1024);
    recent.add(0, read(lent, pattern(5000, 1)));
    recent.add(5000, read(lent, pattern(5000, 2)));
    read(lent, pattern(5000, 3));
    expect(recent.get(0, 10_000)!.equals(Buffer.concat([pattern(5000, 1), pattern(5000, 2)]))).toBe(true);
  });

  it('recent bytes keep nothing of a chunk larger than their bound, and say what was dropped', () => {
    const lent = lentBuffer(1024 * 1024);
    const recent = new RecentBytes(256 * 1024);
    recent.add(0, pattern(1000, 1));
    recent.add(1000, read(lent, pattern(300_000, 2)));
    expect(recent.get(0, 1000)).toBeNull();
    expect(recent.get(1000, 2000)).toBeNull();
    expect(recent.counters.dropped).toBe(301_000);
    // What follows is kept again, from its own offset.
    recent.add(301_000, pattern(500, 3));
    expect(recent.get(301_000, 301_500)!.equals(pattern(500, 3))).toBe(true);
  });
});
