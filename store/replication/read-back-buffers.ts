/**
 * The buffers a replicator reads its local log back into when the stream is behind
 * (a flood, a backlog after an outage), reused instead of allocated per read
 * (docs/design.md "Replication"). A read-ahead buffer lives until the last segment cut
 * from it is acknowledged, long enough to be promoted out of V8's young generation:
 * measured on a flood into the stream, a fresh 1 MiB buffer per read kept the garbage
 * collector marking the whole heap every 30–40 ms, with a third of the daemon's CPU
 * time in it (docs/benchmarks.md "Replication throughput with reused read-back
 * buffers"). Reused, they cost nothing to collect.
 *
 * A buffer is held by whoever may still read it: the read-ahead or prefetch slot it
 * fills, and every append in flight with a segment cut from it. It is reused only
 * once every hold is released. An append releases its hold when its promise settles:
 * the Redis client then never reads its arguments again, since it has no offline queue
 * and re-sends nothing on its own (sidecar/replication/redis-connection.ts), and a
 * script's NOSCRIPT retry or a batch's split into single appends happens before.
 */
export class ReadBackBuffers {
  private readonly free: Buffer[] = [];
  private readonly holds = new Map<Buffer, number>();
  /** Pooled buffers handed out, and how many of those had to be allocated (the rest were reused). */
  readonly counters = { taken: 0, allocated: 0 };

  /**
   * @param size the size of a pooled buffer
   * @param keep how many free buffers are kept for reuse; past that, a released one is left to the collector
   * @param maxHeld how many may be held at once (see `canTake`)
   */
  constructor(
    readonly size: number,
    private readonly keep: number,
    readonly maxHeld = Number.POSITIVE_INFINITY,
  ) {}

  /**
   * Whether a pooled buffer may be taken now: fewer than `maxHeld` are held. When many
   * guests are in backlog at once (the end of a Redis outage), the rest read only the
   * segment they send, into a buffer of its size, and read nothing ahead: the memory of
   * all read-backs stays bounded however many guests there are.
   */
  canTake(): boolean {
    return this.holds.size < this.maxHeld;
  }

  /** A buffer of at least `bytes`, held once by the caller. Larger than `size`: not pooled. */
  take(bytes: number): Buffer {
    if (bytes > this.size) return Buffer.allocUnsafe(bytes);
    this.counters.taken++;
    let buffer = this.free.pop();
    if (!buffer) {
      buffer = Buffer.allocUnsafeSlow(this.size);
      this.counters.allocated++;
    }
    this.holds.set(buffer, 1);
    return buffer;
  }

  /** One more hold on `buffer`, which the caller holds already (a no-op for one not pooled). */
  hold(buffer: Buffer): void {
    const held = this.holds.get(buffer);
    if (held !== undefined) this.holds.set(buffer, held + 1);
  }

  /** Releases one hold; the last one makes the buffer free for reuse. */
  release(buffer: Buffer): void {
    const held = this.holds.get(buffer);
    if (held === undefined) return;
    if (held > 1) {
      this.holds.set(buffer, held - 1);
      return;
    }
    this.holds.delete(buffer);
    if (this.free.length < this.keep) this.free.push(buffer);
  }

  /** Buffers held now, and free for reuse (for tests and status). */
  get counts(): { held: number; free: number } {
    return { held: this.holds.size, free: this.free.length };
  }
}

/** One read-back of a replicator: at most this many bytes, for several segments of a backlog. */
export const READ_BACK_BYTES = 4 * 1024 * 1024;

/**
 * The read-back buffers of every replicator: a few kept free, the rest left to the
 * collector, at most 16 held (64 MiB); a flooding guest holds three or four.
 */
export const readBackBuffers = new ReadBackBuffers(READ_BACK_BYTES, 4, 16);
