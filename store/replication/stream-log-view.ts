/**
 * A guest's log as the shared Redis stream holds it, seen through the same `LogView`
 * as the local files, so `resolveLogRange` gives `scope=cluster` exactly the
 * `start`/`tail`/`lines`/`boot` semantics of a local read, from any host.
 */

import { Cluster } from 'ioredis';
import { ConsoledError } from '../../common/errors.js';
import type { BootStart, LogBounds, LogView } from '../log-view.js';
import type { MarkerRecord } from '../marker-index.js';
import type { RedisClient } from './redis-commands.js';
import { skipsKey } from './redis-keys.js';
import type { OwnerRecord, SharedLog } from './shared-log.js';

/** One Redis read of a view returns at most this much (a large range takes several). */
const READ_CHUNK_BYTES = 1024 * 1024;
/** How long to wait before looking again when a blocking read failed (Redis away). */
const RETRY_AFTER_ERROR_MS = 250;

export interface StreamLogViewOptions {
  /** The key prefix the SharedLog uses. */
  readonly prefix: string;
  /** How long one XREAD BLOCK of `waitForData` waits before it looks again. @default 5000 */
  readonly blockMs?: number;
  /**
   * Makes the connection for blocking reads. It must queue commands until connected
   * and allow a command to last `blockMs`. @default a plain duplicate of the client
   */
  readonly duplicate?: () => RedisClient;
}

/**
 * `LogView` over one guest's stream. Bounds come from the owner record and the
 * stream's first and last entries; `oldest` starts after the newest skipped span, so
 * every range within the bounds is contiguous. `waitForData` blocks on a connection
 * of its own (made on first use, closed by `close()` or when the signal aborts).
 */
export class StreamLogView implements LogView {
  private blocking: RedisClient | null = null;
  private lastStatus: OwnerRecord | null = null;
  /** Fetched by `exists()`, used once by the next `bounds()` / `bootStarts()`. */
  private prefetched: { bounds: Promise<LogBounds> | null; boots: Promise<BootStart[]> | null } | null = null;

  constructor(
    private readonly shared: SharedLog,
    private readonly client: RedisClient,
    readonly guestId: string,
    private readonly options: StreamLogViewOptions,
  ) {}

  /** The owner record seen by the last `bounds()` or `exists()`. */
  get status(): OwnerRecord | null {
    return this.lastStatus;
  }

  /**
   * Whether Redis knows the guest at all (an owner or a byte). It fetches the bounds
   * and the boots in the same round trip, and the next `bounds()` and `bootStarts()`
   * use them: a read resolves in one round trip, then reads its bytes.
   */
  async exists(): Promise<boolean> {
    const bounds = this.fetchBounds();
    const boots = this.fetchBoots();
    this.prefetched = { bounds, boots };
    // Both are awaited by their users; this one only decides existence.
    bounds.catch(() => undefined);
    boots.catch(() => undefined);
    await bounds;
    const st = this.lastStatus!;
    return st.epoch > 0 || st.streamEnd !== null || st.next !== null;
  }

  async bounds(): Promise<LogBounds> {
    const prefetched = this.prefetched?.bounds;
    if (prefetched) {
      this.prefetched = { ...this.prefetched!, bounds: null };
      return prefetched;
    }
    return this.fetchBounds();
  }

  async bootStarts(): Promise<readonly BootStart[]> {
    const prefetched = this.prefetched?.boots;
    if (prefetched) {
      this.prefetched = { ...this.prefetched!, boots: null };
      return prefetched;
    }
    return this.fetchBoots();
  }

  private async fetchBounds(): Promise<LogBounds> {
    const [st, lastSkip] = await Promise.all([
      this.shared.owner(this.guestId),
      this.client.zrevrange(skipsKey(this.options.prefix, this.guestId), 0, 0, 'WITHSCORES'),
    ]);
    this.lastStatus = st;
    const next = st.streamEnd ?? st.next ?? 0;
    let oldest = st.oldestOffset ?? next;
    const skipEnd = lastSkip[1] === undefined ? Number.NaN : Number(lastSkip[1]);
    if (Number.isFinite(skipEnd)) oldest = Math.max(oldest, Math.min(skipEnd, next));
    return { oldest, next };
  }

  private async fetchBoots(): Promise<BootStart[]> {
    const flat = await this.client.zrange(this.shared.keys(this.guestId).boots, '0', '-1', 'WITHSCORES');
    const boots: BootStart[] = [];
    for (let i = 0; i + 1 < flat.length; i += 2) {
      // The stream keeps no boot time; 0 says "unknown".
      boots.push({ boot: Number(flat[i]), offset: Number(flat[i + 1]), atMs: 0 });
    }
    return boots.sort((a, b) => a.offset - b.offset || a.boot - b.boot);
  }

  /** Bytes `[start, end)`; RANGE_NOT_AVAILABLE if they were trimmed meanwhile. */
  markers(start: number, end: number): Promise<MarkerRecord[]> {
    return this.shared.markers(this.guestId, start, end);
  }

  async read(start: number, end: number): Promise<Buffer> {
    const chunks: Buffer[] = [];
    let pos = start;
    while (pos < end) {
      const r = await this.shared.readRange(this.guestId, pos, end, Math.min(READ_CHUNK_BYTES, end - pos));
      if (r.start !== pos || r.bytes.length === 0) {
        throw new ConsoledError(
          'RANGE_NOT_AVAILABLE',
          `bytes from offset ${pos} are no longer in the stream`,
        );
      }
      chunks.push(r.bytes);
      pos = r.next;
    }
    return chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks);
  }

  /**
   * Resolves once the stream holds the byte at `after` (or a later one, after a
   * skip), or `signal` aborts. Entry IDs are `<offset>-1`, so an XREAD from ID
   * `<after>-0` returns exactly the entries that start at or after `after`.
   */
  async waitForData(after: number, signal: AbortSignal): Promise<void> {
    const { log } = this.shared.keys(this.guestId);
    while (!signal.aborted) {
      let blocking: RedisClient;
      try {
        const st = await this.shared.owner(this.guestId);
        this.lastStatus = st;
        if ((st.streamEnd ?? -1) > after) return;
        blocking = this.blockingConnection(signal);
      } catch {
        await pause(RETRY_AFTER_ERROR_MS, signal);
        continue;
      }
      try {
        await blocking.xreadBuffer(
          'COUNT',
          1,
          'BLOCK',
          this.options.blockMs ?? 5_000,
          'STREAMS',
          log,
          `${after}-0`,
        );
      } catch {
        if (!signal.aborted) await pause(RETRY_AFTER_ERROR_MS, signal);
      }
    }
  }

  /** Closes the blocking connection, if one was made. */
  close(): void {
    this.blocking?.disconnect();
    this.blocking = null;
  }

  /** The connection for blocking reads; closed when the first reader's `signal` aborts. */
  private blockingConnection(signal: AbortSignal): RedisClient {
    if (!this.blocking) {
      const c = this.client;
      // Redis and Cluster both copy their options; their duplicate() signatures differ.
      const dup: RedisClient =
        this.options.duplicate?.() ?? (c instanceof Cluster ? c.duplicate() : c.duplicate());
      dup.on('error', () => {}); // failures surface as rejected XREADs
      this.blocking = dup;
      signal.addEventListener(
        'abort',
        () => {
          if (this.blocking === dup) this.blocking = null;
          dup.disconnect();
        },
        { once: true },
      );
    }
    return this.blocking;
  }
}

function pause(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(done, ms);
    function done(): void {
      clearTimeout(timer);
      signal.removeEventListener('abort', done);
      resolve();
    }
    signal.addEventListener('abort', done, { once: true });
  });
}
