/**
 * The age bound of segments, shared by every replicator of a daemon: a segment that
 * is not full is sent at the next tick, so no byte waits longer than one interval,
 * and the guests' appends leave together, which lets the Redis client pipeline them
 * into a few writes instead of one system call each. The clock only runs while
 * someone waits for it.
 */
export class SegmentClock {
  /** Called at the next tick, once each: plain callbacks, since every guest asks every tick. */
  private callbacks: Array<() => void> = [];
  private timer: NodeJS.Timeout | null = null;

  constructor(readonly intervalMs: number) {}

  /** Calls `callback` at the next tick (at once, in a microtask, with no interval). */
  onTick(callback: () => void): void {
    if (this.intervalMs <= 0) {
      queueMicrotask(callback);
      return;
    }
    this.callbacks.push(callback);
    if (!this.timer) {
      this.timer = setInterval(() => this.tick(), this.intervalMs);
      this.timer.unref();
    }
  }

  /** Resolves at the next tick. */
  next(): Promise<void> {
    return new Promise<void>((resolve) => this.onTick(resolve));
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    this.tick();
  }

  private tick(): void {
    const callbacks = this.callbacks;
    if (callbacks.length > 0) {
      this.callbacks = [];
      for (const callback of callbacks) callback();
    } else if (this.timer) {
      // Nobody asked for this tick: stop until someone does.
      clearInterval(this.timer);
      this.timer = null;
    }
  }
}
