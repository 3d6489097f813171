/** OutputRing: bytes at their offsets, views within a block, copies across blocks, trimming by whole blocks. */
import { describe, expect, it } from 'vitest';
import { RING_BLOCK_BYTES as B, OutputRing } from '../../sidecar/console/output-ring.js';

function pattern(n: number, seed = 0): Buffer {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = (i * 31 + seed) & 0xff;
  return b;
}

describe('OutputRing', () => {
  it('returns exactly the bytes appended, at their offsets, across block boundaries', () => {
    const ring = new OutputRing(1000);
    const all: Buffer[] = [];
    let offset = 1000;
    for (const size of [1, 7, 65_530, 3, 200_000, 12, 70_000]) {
      const chunk = pattern(size, size);
      ring.append(offset, chunk);
      all.push(chunk);
      offset += size;
    }
    const whole = Buffer.concat(all);
    expect(ring.start).toBe(1000);
    expect(ring.end).toBe(offset);
    for (const [a, b] of [
      [1000, 1001],
      [1000, offset],
      [66_000, 66_100],
      [B + 1000 - 10, B + 1000 + 10],
      [1000 + 3 * B - 1, 1000 + 7 * B + 1],
      [offset - 5, offset],
      [offset, offset],
    ] as const) {
      expect(ring.slice(a, b).equals(whole.subarray(a - 1000, b - 1000))).toBe(true);
      // copy: the same bytes, placed at an offset of a larger buffer.
      const target = Buffer.alloc(b - a + 7, 0xee);
      ring.copy(a, b, target, 3);
      expect(target.subarray(3, 3 + b - a).equals(whole.subarray(a - 1000, b - 1000))).toBe(true);
      expect([...target.subarray(0, 3), ...target.subarray(3 + b - a)]).toEqual(Array(7).fill(0xee));
    }
    expect(() => ring.slice(999, 1005)).toThrow(RangeError);
    expect(() => ring.copy(999, 1005, Buffer.alloc(6), 0)).toThrow(RangeError);
    expect(() => ring.slice(offset - 1, offset + 1)).toThrow(RangeError);
  });

  it('hands out views that later appends never change', () => {
    const ring = new OutputRing(0);
    ring.append(0, Buffer.from('abc'));
    const view = ring.slice(0, 3);
    ring.append(3, Buffer.from('defghi'));
    expect(view.toString()).toBe('abc');
    expect(ring.slice(0, 9).toString()).toBe('abcdefghi');
  });

  it('trims whole blocks only, keeping every byte from the offset asked for', () => {
    const ring = new OutputRing(0);
    ring.append(0, pattern(300_000));
    ring.trimBefore(150_000);
    expect(ring.start).toBeLessThanOrEqual(150_000);
    expect(ring.start).toBe(Math.floor(150_000 / B) * B);
    expect(ring.slice(150_000, 150_010).equals(pattern(300_000).subarray(150_000, 150_010))).toBe(true);
    ring.trimBefore(10_000_000);
    // The last block is always kept.
    expect(ring.end).toBe(300_000);
    expect(ring.start).toBe(Math.floor((300_000 - 1) / B) * B);
  });

  it('restarts at a new offset if output ever jumps', () => {
    const ring = new OutputRing(0);
    ring.append(0, Buffer.from('old'));
    ring.append(100, Buffer.from('new'));
    expect(ring.start).toBe(100);
    expect(ring.slice(100, 103).toString()).toBe('new');
  });

  it('reuses the blocks it drops, but never one of which a view was handed out', () => {
    const ring = new OutputRing(0);
    ring.append(0, pattern(4 * B, 1));
    const view = ring.slice(10, 20); // a view into the first block: lent
    const kept = Buffer.from(view);
    const second = ring.slice(B + 1, B + 2); // and one into the second
    const keptSecond = Buffer.from(second);
    ring.trimBefore(3 * B); // drops blocks 0-2, of which block 2 was never lent
    // Unwatched floods restart the ring at each read: the dropped blocks are filled again.
    // More blocks than the spare list holds, so every spare block is taken.
    let offset = 10 * B;
    for (let i = 0; i < 3; i++) {
      const bytes = pattern(80 * B, i + 2);
      ring.append(offset, bytes);
      const target = Buffer.alloc(bytes.length);
      ring.copy(offset, offset + bytes.length, target, 0);
      expect(target.equals(bytes)).toBe(true);
      offset += bytes.length + 5;
    }
    expect(view.equals(kept)).toBe(true);
    expect(second.equals(keptSecond)).toBe(true);
  });

  it('hands reused blocks to another ring with the right bytes', () => {
    const a = new OutputRing(0);
    a.append(0, pattern(8 * B, 3));
    a.trimBefore(8 * B); // seven blocks given back
    const b = new OutputRing(500);
    b.append(500, pattern(3 * B + 17, 4));
    const target = Buffer.alloc(3 * B + 17);
    b.copy(500, 500 + 3 * B + 17, target, 0);
    expect(target.equals(pattern(3 * B + 17, 4))).toBe(true);
    expect(a.slice(a.start, a.end).equals(pattern(8 * B, 3).subarray(a.start, a.end))).toBe(true);
  });
});
