/** Samples kept at most; past it the newest sample absorbs new ends (coarser, still bounded). */
const MAX_SAMPLES = 512;
/** Ends flushed within this long of the newest sample share it. */
const SAMPLE_SPACING_MS = 10;

/**
 * When each stretch of a log became readable, so that replication lag can be told in
 * seconds as well as bytes: the age of the oldest byte not yet in the stream.
 * Memory is bounded (`MAX_SAMPLES`), whatever the outage.
 */
export class LagTracker {
  /** `[end, atMs]`: bytes before `end` were readable at `atMs`; ends increase. */
  private readonly samples: Array<[number, number]> = [];

  /** The log became readable up to `end` at `nowMs`. */
  flushed(end: number, nowMs: number): void {
    const last = this.samples[this.samples.length - 1];
    if (last && (nowMs - last[1] < SAMPLE_SPACING_MS || this.samples.length >= MAX_SAMPLES)) {
      last[0] = Math.max(last[0], end);
      return;
    }
    this.samples.push([end, nowMs]);
  }

  /** Everything before `cursor` is in the stream. */
  published(cursor: number): void {
    let drop = 0;
    while (drop < this.samples.length && this.samples[drop]![0] <= cursor) drop++;
    if (drop > 0) this.samples.splice(0, drop);
  }

  /** Seconds the oldest byte at or after `cursor` has waited; 0 when none waits. */
  lagSeconds(cursor: number, nowMs: number): number {
    for (const [end, at] of this.samples) if (end > cursor) return Math.max(0, nowMs - at) / 1000;
    return 0;
  }

  /** Forget everything (the log was renumbered). */
  reset(): void {
    this.samples.length = 0;
  }
}
