/**
 * Buffers a flooding chardev socket reads into, whose reads the log's write queue keeps
 * where they landed instead of copying them out (docs/design.md "Borrowed reads").
 *
 * A socket reads a flood into a slab, each read just after the last one kept. During
 * the read's callback its bytes are lent like any other read (common/borrowed-bytes.ts);
 * the write queue alone, instead of copying them, keeps them in place (`keepRead`), and
 * the socket's next read lands after them. Bytes nobody kept (dropped, or kept by a
 * copy) are read over by the next read. A slab goes back to a free list shared by every
 * socket once no socket reads into it and every byte kept in it was released (written),
 * so the slabs go round between the socket and the disk with no copy and no allocation.
 * A slab with a write given up on (a disk error: that write may still be running on a
 * thread) is never used again.
 *
 * Only node: and common/ imports: the chardev sockets (sidecar/sources/chardev-socket.ts)
 * are loaded before anything else at an upgrade.
 */
import { lendsItsBytes } from './borrowed-bytes.js';

/** Size of one read slab: a flood is read in bites of up to this. */
export const READ_SLAB_BYTES = 1024 * 1024;
/** A slab with less room than this left is read into no more: the next read takes a new one. */
export const MIN_READ_ROOM = 64 * 1024;
/** Free slabs kept for reuse; past that, a released one is left to the collector. */
const MAX_FREE_SLABS = 8;
/**
 * Slabs read into at once, across every socket. Past that, a flooding socket reads into
 * the shared buffer and its reads are copied, as before read slabs: many guests bursting
 * at once (a host's guests all booting) hold at most this many megabytes for their reads.
 */
export const MAX_READING_SLABS = 16;
const freeSlabs: Buffer[] = [];
let readingSlabs = 0;
const slabs = new WeakMap<ArrayBufferLike, ReadSlab>();

export class ReadSlab {
  /** Bytes kept so far: the next read lands here. */
  private fill = 0;
  /** End of the read whose callback runs now (`fill` when none does): only it can be kept. */
  private landedEnd = 0;
  /** Bytes kept and not yet released. */
  private held = 0;
  private reading = true;
  private reusable = true;
  private freed = false;

  constructor(readonly buf: Buffer) {}

  /** Room left for reads. */
  get room(): number {
    return this.buf.length - this.fill;
  }

  /** Where the next read goes: the rest of the slab. */
  target(): Buffer {
    return this.buf.subarray(this.fill);
  }

  /** A read of `n` bytes landed at the target; until `readDone` they may be kept. */
  landed(n: number): Buffer {
    this.landedEnd = this.fill + n;
    return this.buf.subarray(this.fill, this.landedEnd);
  }

  /** The read's callback is over: what was not kept is read over next. */
  readDone(): void {
    this.landedEnd = this.fill;
  }

  /** Keeps `bytes`, the next part of the read that just landed; false when they are not. */
  keep(bytes: Buffer): boolean {
    if (bytes.byteOffset !== this.fill || this.fill + bytes.length > this.landedEnd) return false;
    this.fill += bytes.length;
    this.held += bytes.length;
    return true;
  }

  /** `n` kept bytes were released (written). */
  release(n: number): void {
    this.held -= n;
    this.freeIfDone();
  }

  /** A write of kept bytes was given up on: never used again. */
  abandon(): void {
    this.reusable = false;
  }

  /** No socket reads into it any more. */
  stopReading(): void {
    if (!this.reading) return;
    this.reading = false;
    readingSlabs--;
    this.landedEnd = this.fill;
    this.freeIfDone();
  }

  private freeIfDone(): void {
    if (this.reading || this.held > 0 || this.freed) return;
    this.freed = true;
    slabs.delete(this.buf.buffer);
    if (this.reusable && freeSlabs.length < MAX_FREE_SLABS) freeSlabs.push(this.buf);
  }
}

/** A slab to read into, free or new; null when MAX_READING_SLABS are read into already. */
export function takeReadSlab(): ReadSlab | null {
  if (readingSlabs >= MAX_READING_SLABS) return null;
  readingSlabs++;
  let buf = freeSlabs.pop();
  if (!buf) {
    buf = Buffer.allocUnsafeSlow(READ_SLAB_BYTES);
    lendsItsBytes(buf); // its views are lent: every keeper but the write queue copies them
  }
  const slab = new ReadSlab(buf);
  slabs.set(buf.buffer, slab);
  return slab;
}

/** The read slab `bytes` is a view of, if any. */
export function readSlabOf(bytes: Buffer): ReadSlab | undefined {
  return slabs.get(bytes.buffer);
}

/**
 * Keeps `bytes` where they were read, when they are the next part of the read whose
 * callback runs now in a read slab: the caller holds them until it releases them
 * (`readSlabOf(bytes).release`). False for any other bytes (the caller copies them).
 */
export function keepRead(bytes: Buffer): boolean {
  return slabs.get(bytes.buffer)?.keep(bytes) ?? false;
}
