/**
 * `scope=auto` on the host that holds a guest: the local log, extended backwards with
 * the older history only the shared stream still holds (a migration's destination
 * starts its local log where the source stopped; a stream usually retains more than
 * the local files), and handed over to the stream when this host stops writing the
 * guest (a migration), so that a follower continues there.
 */

import type { BootStart, LogBounds, LogView } from '../log-view.js';
import type { MarkerRecord } from '../marker-index.js';
import type { StreamLogView } from './stream-log-view.js';

export interface MergedLogViewOptions {
  /** True while this host writes the guest's log (it owns the stream). */
  readonly local: () => boolean;
  /**
   * While the owner seals the stream for a handoff: the offset it stops at. Bytes the
   * local log holds past it never reach the stream, so the view ends there.
   */
  readonly localLimit: () => number | null;
  /** Resolves when `local()` may have turned false, or `signal` aborts. */
  readonly localEnded: (signal: AbortSignal) => Promise<void>;
  /** A stream call slower than this is given up and the local log alone is served. @default 1000 */
  readonly streamTimeoutMs?: number;
}

export class MergedLogView implements LogView {
  constructor(
    private readonly localLog: LogView,
    private readonly stream: StreamLogView,
    private readonly options: MergedLogViewOptions,
  ) {}

  async bounds(): Promise<LogBounds> {
    if (!this.options.local()) return this.stream.bounds();
    const local = await this.localLog.bounds();
    const stream = await this.fromStream(() => this.stream.bounds());
    // The stream extends the local log only when it reaches the local log's oldest byte.
    const next = Math.min(local.next, this.options.localLimit() ?? Number.POSITIVE_INFINITY);
    if (stream && stream.next >= local.oldest && stream.oldest < local.oldest) {
      return { oldest: stream.oldest, next };
    }
    return { oldest: Math.min(local.oldest, next), next };
  }

  async bootStarts(): Promise<readonly BootStart[]> {
    if (!this.options.local()) return this.stream.bootStarts();
    const local = await this.localLog.bootStarts();
    const stream = await this.fromStream(() => this.stream.bootStarts());
    if (!stream || stream.length === 0) return local;
    const byBoot = new Map<number, BootStart>();
    for (const b of stream) byBoot.set(b.boot, b);
    for (const b of local) byBoot.set(b.boot, b);
    return [...byBoot.values()].sort((a, b) => a.offset - b.offset || a.boot - b.boot);
  }

  async read(start: number, end: number): Promise<Buffer> {
    if (!this.options.local()) return this.stream.read(start, end);
    const { oldest } = await this.localLog.bounds();
    if (start >= oldest) return this.localLog.read(start, end);
    const split = Math.min(end, oldest);
    const older = await this.stream.read(start, split);
    if (split === end) return older;
    return Buffer.concat([older, await this.localLog.read(split, end)]);
  }

  async markers(start: number, end: number): Promise<MarkerRecord[]> {
    if (!this.options.local()) return this.stream.markers(start, end);
    const { oldest } = await this.localLog.bounds();
    const local = await this.localLog.markers(Math.max(start, oldest), end);
    if (start >= oldest) return local;
    const older = (await this.fromStream(() => this.stream.markers(start, Math.min(end, oldest)))) ?? [];
    return [...older, ...local];
  }

  async waitForData(after: number, signal: AbortSignal): Promise<void> {
    while (this.options.local() && !signal.aborted) {
      const limit = this.options.localLimit();
      const done = new AbortController();
      const both = AbortSignal.any([signal, done.signal]);
      try {
        const waits = [this.options.localEnded(both)];
        if (limit === null || after < limit) waits.push(this.localLog.waitForData(after, both));
        await Promise.race(waits);
      } finally {
        done.abort();
      }
      if (!this.options.local()) break;
      // Woken by a state change that left this host writing (a cancelled handoff):
      // return only if there is something to read, as the contract says.
      const { next } = await this.localLog.bounds();
      if (Math.min(next, this.options.localLimit() ?? Number.POSITIVE_INFINITY) > after) return;
    }
    if (signal.aborted) return;
    // This host stopped writing the guest (handed off, fenced, detached): the stream goes on.
    return this.stream.waitForData(after, signal);
  }

  private async fromStream<T>(call: () => Promise<T>): Promise<T | null> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<null>((resolve) => {
      timer = setTimeout(() => resolve(null), this.options.streamTimeoutMs ?? 1_000);
    });
    try {
      return await Promise.race([call().catch(() => null), timeout]);
    } finally {
      clearTimeout(timer);
    }
  }
}
