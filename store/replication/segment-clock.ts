/**
 * The age bound of segments, shared by every replicator of a daemon: a segment that
 * is not full is sent at the next tick, so no byte waits longer than one interval,
 * and the guests' appends leave together, which lets the Redis client pipeline them
 * into a few writes instead of one system call each. The clock only runs while
 * someone waits for it.
 */
export class SegmentClock {
  private waiting: { promise: Promise<void>; resolve: () => void } | null = null;
  private timer: NodeJS.Timeout | null = null;

  constructor(readonly intervalMs: number) {}

  /** Resolves at the next tick. */
  next(): Promise<void> {
    if (this.intervalMs <= 0) return Promise.resolve();
    if (!this.waiting) {
      let resolve!: () => void;
      const promise = new Promise<void>((r) => {
        resolve = r;
      });
      this.waiting = { promise, resolve };
    }
    if (!this.timer) {
      this.timer = setInterval(() => this.tick(), this.intervalMs);
      this.timer.unref();
    }
    return this.waiting.promise;
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    this.tick();
  }

  private tick(): void {
    const waiting = this.waiting;
    this.waiting = null;
    if (waiting) waiting.resolve();
    else if (this.timer) {
      // Nobody asked for this tick: stop until someone does.
      clearInterval(this.timer);
      this.timer = null;
    }
  }
}
