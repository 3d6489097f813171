import { keepBytes } from '../../common/borrowed-bytes.js';

/**
 * The newest bytes of a log, kept in memory as the capture appended them, so the
 * replicator sends most segments without reading the files back. Bounded: past
 * `maxBytes` the oldest chunks are dropped and those bytes are read from the local
 * log, which stays the backlog (a bound, and the fall-back is counted).
 */
export class RecentBytes {
  private readonly chunks: Array<{ offset: number; bytes: Buffer }> = [];
  private size = 0;
  /** Reads served from memory, and from the files. */
  readonly counters = { hits: 0, misses: 0, dropped: 0 };

  constructor(private readonly maxBytes: number) {}

  /** Bytes appended to the log at `offset` (copied if they are borrowed: common/borrowed-bytes.ts). */
  add(offset: number, bytes: Buffer): void {
    if (bytes.length === 0) return;
    if (bytes.length > this.maxBytes) {
      // It would push out everything held, itself too: keep nothing, and copy nothing (a
      // flood's lent megabyte used to be copied here only to be dropped).
      this.counters.dropped += this.size + bytes.length;
      this.clear();
      return;
    }
    bytes = keepBytes(bytes);
    const last = this.chunks[this.chunks.length - 1];
    if (last && last.offset + last.bytes.length !== offset) this.clear(); // the offsets jumped
    this.chunks.push({ offset, bytes });
    this.size += bytes.length;
    while (this.size > this.maxBytes && this.chunks.length > 0) {
      const dropped = this.chunks.shift()!;
      this.size -= dropped.bytes.length;
      this.counters.dropped += dropped.bytes.length;
    }
  }

  /** Forgets everything before `offset` (sent). */
  release(offset: number): void {
    while (this.chunks.length > 0) {
      const first = this.chunks[0]!;
      if (first.offset + first.bytes.length > offset) break;
      this.chunks.shift();
      this.size -= first.bytes.length;
    }
  }

  clear(): void {
    this.chunks.length = 0;
    this.size = 0;
  }

  /** Bytes `[start, end)` if all held, else null (read them from the log). */
  get(start: number, end: number): Buffer | null {
    const first = this.chunks[0];
    const last = this.chunks[this.chunks.length - 1];
    if (!first || !last || start < first.offset || end > last.offset + last.bytes.length) {
      this.counters.misses++;
      return null;
    }
    this.counters.hits++;
    const parts: Buffer[] = [];
    for (const c of this.chunks) {
      const cEnd = c.offset + c.bytes.length;
      if (cEnd <= start) continue;
      if (c.offset >= end) break;
      parts.push(c.bytes.subarray(Math.max(0, start - c.offset), Math.min(c.bytes.length, end - c.offset)));
    }
    return parts.length === 1 ? parts[0]! : Buffer.concat(parts, end - start);
  }
}
