/**
 * Copies of borrowed guest output (common/borrowed-bytes.ts) for the log's write queue,
 * made into fixed slabs that are used again once every byte copied into them has been
 * written. A read that landed in a read slab (common/read-slabs.ts: a flood's reads
 * after its first) is not copied at all: it is kept where it was read, and released
 * to its slab once written. A flood then costs no copy and no allocation per read.
 *
 * A slab belongs to one queue while it holds bytes not yet acknowledged, or is the one
 * the queue copies into; after that it goes to a free list shared by every queue (at
 * most MAX_FREE_SLABS kept, the rest left to the collector), so an idle guest holds
 * none. A slab whose bytes were in a write the writer gave up on (a disk error requeues
 * it) is never used again: that write may still be running on a thread and read it.
 */
import { keepRead, readSlabOf } from '../common/read-slabs.js';

export const SLAB_BYTES = 256 * 1024;
const MAX_FREE_SLABS = 64;
const freeSlabs: Buffer[] = [];

interface Slab {
  readonly buf: Buffer;
  /** Bytes copied in so far. */
  fill: number;
  /** Bytes copied in and not yet acknowledged. */
  unacked: number;
  /** False once a write from it was given up on. */
  reusable: boolean;
}

export class SlabCopies {
  private current: Slab | null = null;
  private readonly slabs = new Map<ArrayBufferLike, Slab>();

  /** Slabs this queue holds. */
  get held(): number {
    return this.slabs.size;
  }

  /**
   * Copies `bytes` into slabs and gives `view` the copy, one view per slab it spans,
   * in order; or, for the read that just landed in a read slab, gives `view` the bytes
   * themselves, kept there.
   */
  copy(bytes: Buffer, view: (copy: Buffer) => void): void {
    if (keepRead(bytes)) {
      view(bytes); // kept where it was read
      return;
    }
    let pos = 0;
    while (pos < bytes.length) {
      let slab = this.current;
      if (!slab || slab.fill === SLAB_BYTES) {
        slab = this.take();
      }
      const n = Math.min(bytes.length - pos, SLAB_BYTES - slab.fill);
      bytes.copy(slab.buf, slab.fill, pos, pos + n);
      view(slab.buf.subarray(slab.fill, slab.fill + n));
      slab.fill += n;
      slab.unacked += n;
      pos += n;
    }
  }

  /** Whether `a` ends where `b` starts in the same slab. */
  static adjacent(a: Buffer, b: Buffer): boolean {
    return a.buffer === b.buffer && a.byteOffset + a.length === b.byteOffset;
  }

  /** `bytes` of `view` (a view given by `copy`, or any other buffer) were written. */
  acknowledged(view: Buffer, bytes: number): void {
    const slab = this.slabs.get(view.buffer);
    if (!slab) {
      readSlabOf(view)?.release(bytes);
      return;
    }
    slab.unacked -= bytes;
    if (slab.unacked === 0 && slab !== this.current) this.release(slab);
  }

  /** Nothing is queued: the slab being copied into goes back too. */
  idle(): void {
    const slab = this.current;
    if (slab && slab.unacked === 0) {
      this.current = null;
      this.release(slab);
    }
  }

  /** A write from `view` was given up on: its slab is never used again. */
  abandon(view: Buffer): void {
    const slab = this.slabs.get(view.buffer);
    if (slab) slab.reusable = false;
    else readSlabOf(view)?.abandon();
  }

  private take(): Slab {
    const old = this.current;
    const slab: Slab = {
      buf: freeSlabs.pop() ?? Buffer.allocUnsafeSlow(SLAB_BYTES),
      fill: 0,
      unacked: 0,
      reusable: true,
    };
    this.slabs.set(slab.buf.buffer, slab);
    this.current = slab;
    if (old && old.unacked === 0) this.release(old);
    return slab;
  }

  private release(slab: Slab): void {
    this.slabs.delete(slab.buf.buffer);
    if (slab.reusable && freeSlabs.length < MAX_FREE_SLABS) freeSlabs.push(slab.buf);
  }
}
