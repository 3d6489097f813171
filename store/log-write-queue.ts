/** Appends smaller than this together wait up to COALESCE_MS to share one write. */
export const COALESCE_BYTES = 64 * 1024;
export const COALESCE_MS = 4;

/**
 * The bounded in-memory queue between `LocalLog.append` and the file writer: bytes
 * pending (appended, not handed to the writer) and in flight (handed, not yet
 * acknowledged), in order. The bound covers both; `append` never waits, so a caller
 * that finds no room drops and counts.
 *
 * Small appends (a serial console's trickle, a keystroke's echo) wait a few
 * milliseconds so that they leave in one write: per-write cost, not per-byte cost,
 * is what a guest printing 1 KiB chunks pays. A backlog of COALESCE_BYTES drains at once.
 */
export class WriteQueue {
  private readonly pending: Buffer[] = [];
  private pendingTotal = 0;
  private readonly inflight: Buffer[] = [];
  private inflightTotal = 0;
  private coalesceTimer: NodeJS.Timeout | null = null;

  /** `drain` is called when queued bytes should be handed to the writer. */
  constructor(
    readonly maxBytes: number,
    private readonly drain: () => void,
  ) {}

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
    return this.queuedBytes + bytes <= this.maxBytes;
  }

  /** Queues `bytes` (not empty) and drains now, or soon when they are few. */
  push(bytes: Buffer): void {
    this.pending.push(bytes);
    this.pendingTotal += bytes.length;
    if (this.pendingTotal >= COALESCE_BYTES) this.drain();
    else this.armCoalesce();
  }

  private armCoalesce(): void {
    // With a write in flight, its acknowledgement drains the queue anyway.
    if (this.coalesceTimer || this.inflightTotal > 0) return;
    this.coalesceTimer = setTimeout(() => {
      this.coalesceTimer = null;
      this.drain();
    }, COALESCE_MS);
  }

  /** Takes the next `size` pending bytes (at most `pendingBytes`) as one chunk, now in flight. */
  take(size: number): Buffer {
    const chunk = this.takePending(size);
    this.inflight.push(chunk);
    this.inflightTotal += chunk.length;
    return chunk;
  }

  private takePending(size: number): Buffer {
    const first = this.pending[0]!;
    if (first.length >= size) {
      if (first.length === size) this.pending.shift();
      else this.pending[0] = first.subarray(size);
      this.pendingTotal -= size;
      return first.subarray(0, size);
    }
    const out = Buffer.allocUnsafe(size);
    let filled = 0;
    while (filled < size) {
      const head = this.pending[0]!;
      const n = Math.min(head.length, size - filled);
      head.copy(out, filled, 0, n);
      filled += n;
      if (n === head.length) this.pending.shift();
      else this.pending[0] = head.subarray(n);
    }
    this.pendingTotal -= size;
    return out;
  }

  /** The oldest chunk in flight was written. */
  acknowledge(): Buffer {
    const chunk = this.inflight.shift();
    if (!chunk) throw new Error('acknowledging a write that is not in flight');
    this.inflightTotal -= chunk.length;
    return chunk;
  }

  /** Puts every chunk in flight back at the front of the queue, in order (their write failed). */
  requeueInflight(): void {
    if (this.inflight.length === 0) return;
    this.pending.unshift(...this.inflight.splice(0));
    this.pendingTotal += this.inflightTotal;
    this.inflightTotal = 0;
  }

  /** Cancels a pending coalesce (the log is closing). */
  stopTimer(): void {
    if (this.coalesceTimer) clearTimeout(this.coalesceTimer);
    this.coalesceTimer = null;
  }
}
