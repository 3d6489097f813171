import { isBorrowed } from '../common/borrowed-bytes.js';
import { inMicrotask } from '../common/microtask.js';
import { SlabCopies } from './slab-copies.js';

/**
 * Appends smaller than this together wait up to COALESCE_MS to share one write; the
 * first after a quiet COALESCE_MS goes at once.
 */
export const COALESCE_BYTES = 64 * 1024;
export const COALESCE_MS = 16;

/** Taken slots at the front of the pending list compacted away once there are this many. */
const COMPACT_AFTER = 1024;

/**
 * The bounded in-memory queue between `LocalLog.append` and the file writer: bytes
 * pending (appended, not handed to the writer) and in flight (handed, not yet
 * acknowledged), in order. The bound covers both; `append` never waits, so a caller
 * that finds no room drops and counts (or, under the overflow policy `block`, stops
 * reading its source: docs/design.md "Local store").
 *
 * The appended buffers are kept as they are and handed to the writer as a list for one
 * gathered write (`writev`): no copy and no allocation per append. Borrowed bytes (a
 * flood's reads, lent for the length of the call: common/borrowed-bytes.ts) are the
 * exception: they are copied into slabs that are used again once written
 * (store/slab-copies.ts), adjacent copies kept as one view. Small appends (a
 * serial console's trickle, a keystroke's echo) that follow a write within COALESCE_MS
 * wait out the rest of it, so that they leave in one write: per-write cost, not
 * per-byte cost, is what a guest printing 1 KiB chunks pays. An append after a quiet
 * COALESCE_MS (a serial console printing a line every 50 ms) drains at once: waiting
 * would gather nothing and only delay the bytes, and with them replication, which
 * sends only what the local files hold. A backlog of COALESCE_BYTES drains at once.
 */
export class WriteQueue {
  /** Pending buffers from `head` on (the slots before it were taken). */
  private pending: Buffer[] = [];
  private head = 0;
  private pendingTotal = 0;
  private inflight: Buffer[] = [];
  private inflightTotal = 0;
  private readonly copies = new SlabCopies();
  private readonly addCopy = (view: Buffer): void => {
    const at = this.pending.length - 1;
    const last = at >= this.head ? this.pending[at]! : null;
    if (last && SlabCopies.adjacent(last, view))
      this.pending[at] = Buffer.from(last.buffer, last.byteOffset, last.length + view.length);
    else this.pending.push(view);
  };
  private coalesceTimer: NodeJS.Timeout | null = null;
  private readonly onCoalesced = (): void => {
    this.coalesceArmed = false;
    this.drain();
  };
  private coalesceArmed = false;
  /** When the writer was last asked to drain (performance.now()). */
  private lastDrainAtMs = Number.NEGATIVE_INFINITY;

  /** `drain` is called when queued bytes should be handed to the writer. */
  constructor(
    readonly maxBytes: number,
    private readonly onDrain: () => void,
  ) {}

  private drain(): void {
    this.lastDrainAtMs = performance.now();
    this.onDrain();
  }

  get pendingBytes(): number {
    return this.pendingTotal;
  }

  get inflightBytes(): number {
    return this.inflightTotal;
  }

  get queuedBytes(): number {
    return this.pendingTotal + this.inflightTotal;
  }

  /** Whether `bytes` more fit within the bound. */
  canAccept(bytes: number): boolean {
    return this.pendingTotal + this.inflightTotal + bytes <= this.maxBytes;
  }

  /**
   * Queues `bytes` (not empty; kept, not copied) and drains: a backlog now, the first
   * append after a quiet COALESCE_MS at the end of the caller's turn, and a few bytes
   * that follow a write soon.
   */
  push(bytes: Buffer): void {
    if (isBorrowed(bytes)) this.copies.copy(bytes, this.addCopy);
    else this.pending.push(bytes);
    this.pendingTotal += bytes.length;
    if (this.pendingTotal >= COALESCE_BYTES) this.drain();
    else if (this.quiet()) {
      // Once the caller's turn is over, not inside it: a keystroke's echo is appended
      // here before the console hub sends it to the viewers, and the write's submission
      // must not come first.
      this.coalesceArmed = true;
      inMicrotask(this.onQuietAppend);
    } else this.armCoalesce();
  }

  private readonly onQuietAppend = (): void => {
    if (!this.coalesceArmed) return; // stopped meanwhile
    this.coalesceArmed = false;
    this.drain();
  };

  /** Nothing in flight, none waiting to coalesce, and no drain for COALESCE_MS. */
  private quiet(): boolean {
    return (
      !this.coalesceArmed && this.inflightTotal === 0 && performance.now() - this.lastDrainAtMs >= COALESCE_MS
    );
  }

  /**
   * A write finished: a backlog of COALESCE_BYTES goes on at once; fewer bytes wait for
   * the coalesce timer like any small append, so a guest printing small chunks costs
   * one write per COALESCE_MS, not one per chunk.
   */
  written(): void {
    if (this.pendingTotal >= COALESCE_BYTES) this.drain();
    else if (this.pendingTotal > 0) this.armCoalesce();
  }

  private armCoalesce(): void {
    // With a write in flight, its completion (`written`) drains or re-arms.
    if (this.coalesceArmed || this.inflightTotal > 0) return;
    this.coalesceArmed = true;
    // One timer for the queue's life, re-armed: no timer object per coalesced write.
    if (this.coalesceTimer) this.coalesceTimer.refresh();
    else this.coalesceTimer = setTimeout(this.onCoalesced, COALESCE_MS);
  }

  /**
   * Takes the next `size` pending bytes (at most `pendingBytes`), now in flight, as the
   * list of buffers that hold them, for one gathered write. Only a buffer cut by `size`
   * is split (two views, no copy).
   */
  take(size: number): Buffer[] {
    const out: Buffer[] = [];
    let left = size;
    while (left > 0) {
      const first = this.pending[this.head]!;
      if (first.length <= left) {
        out.push(first);
        left -= first.length;
        this.head++;
      } else {
        out.push(first.subarray(0, left));
        this.pending[this.head] = first.subarray(left);
        left = 0;
      }
    }
    this.pendingTotal -= size;
    this.compact();
    for (const b of out) this.inflight.push(b);
    this.inflightTotal += size;
    return out;
  }

  private compact(): void {
    if (this.head === this.pending.length) {
      this.pending.length = 0;
      this.head = 0;
    } else if (this.head >= COMPACT_AFTER && this.head * 2 >= this.pending.length) {
      this.pending = this.pending.slice(this.head);
      this.head = 0;
    }
  }

  /** The first `bytes` in flight were written. */
  acknowledge(bytes: number): void {
    if (bytes > this.inflightTotal) throw new Error('acknowledging bytes that are not in flight');
    this.inflightTotal -= bytes;
    let left = bytes;
    let i = 0;
    while (left > 0) {
      const b = this.inflight[i]!;
      if (b.length <= left) {
        this.copies.acknowledged(b, b.length);
        left -= b.length;
        i++;
      } else {
        this.copies.acknowledged(b, left);
        this.inflight[i] = b.subarray(left);
        left = 0;
      }
    }
    if (this.inflightTotal === 0) this.inflight.length = 0;
    else this.inflight.splice(0, i);
    if (this.inflightTotal === 0 && this.pendingTotal === 0) this.copies.idle();
  }

  /** Slabs of copied borrowed bytes this queue holds (store/slab-copies.ts). */
  get slabsHeld(): number {
    return this.copies.held;
  }

  /** What is in flight and not yet acknowledged, in order (the rest of a short write). */
  get unacknowledged(): readonly Buffer[] {
    return this.inflight;
  }

  /** Puts every chunk in flight back at the front of the queue, in order (their write failed). */
  requeueInflight(): void {
    if (this.inflight.length === 0) return;
    // The writer gives these writes up, yet one may still be running on a thread.
    for (const b of this.inflight) this.copies.abandon(b);
    this.pending = [...this.inflight, ...this.pending.slice(this.head)];
    this.head = 0;
    this.inflight = [];
    this.pendingTotal += this.inflightTotal;
    this.inflightTotal = 0;
  }

  /** Cancels a pending coalesce (the log is closing). */
  stopTimer(): void {
    if (this.coalesceTimer) clearTimeout(this.coalesceTimer);
    this.coalesceTimer = null;
    this.coalesceArmed = false;
  }
}
