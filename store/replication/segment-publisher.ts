/**
 * Publishing a guest's local log to the stream (docs/replication.md "The replicator (one per attached guest)"):
 * segments cut at the size bound, at boot starts and by the shared clock, sent with
 * their markers, at most `maxInFlight` at once, bytes from memory when the capture's
 * recent output still holds them, else read ahead from the files; replies advance the
 * cursor in order; `resumeAt` says where publishing continues after a (re)claim.
 */

import { jitter } from '../../common/backoff.js';
import { formatMarker } from '../../common/marker.js';
import type { LocalLog } from '../local-log.js';
import type { MarkerRecord } from '../marker-index.js';
import { READ_BACK_BYTES, readBackBuffers } from './read-back-buffers.js';
import { RecentBytes } from './recent-bytes.js';
import type { AppendReply } from './redis-commands.js';
import { skipsKey } from './redis-keys.js';
import { describeError, type ReplicatorCore } from './replicator-core.js';
import type { OwnerRecord } from './shared-log.js';

const SKIP_RECORDS_KEPT = 100;

/** Bytes read back from the local log into a pooled buffer (`root`), from offset `start`. */
interface ReadBack {
  readonly start: number;
  readonly bytes: Buffer;
  readonly root: Buffer;
}

interface InFlight {
  readonly start: number;
  readonly end: number;
  settled: boolean;
  result?: AppendReply;
  error?: unknown;
  done: Promise<void>;
}

export class SegmentPublisher {
  /** Bytes before this offset were handed to Redis (some may still await their reply). */
  sent: number;
  readonly inflight: InFlight[] = [];
  /** The first failed append's error, taken by the loop (which then verifies again). */
  failure: unknown = null;
  /** The append at this offset may jump over bytes the local log rotated away. */
  skipAllowedAt: number | null = null;
  /** Where that jump starts in the stream (its `next`): a gap marker goes there. */
  skipFrom: number | null = null;
  readonly recent: RecentBytes;
  /** Bytes read from the local log ahead of what was sent (a backlog), or null. Holds its buffer. */
  private readAhead: ReadBack | null = null;
  /** The read of the stretch after `readAhead`, under way. Holds its buffer. */
  private prefetch: { start: number; bytes: Promise<Buffer | null>; root: Buffer } | null = null;

  constructor(private readonly core: ReplicatorCore) {
    this.sent = core.state.cursor;
    this.recent = new RecentBytes(core.options.recentBytesMax);
  }

  /** Forgets what was read ahead (the log was renumbered, or Redis went away). */
  forgetReads(): void {
    this.recent.clear();
    this.dropReadBacks();
    this.core.dueUntil = 0;
  }

  /** Drops the read-ahead and the prefetch, releasing their buffers (a prefetch's once its read is done). */
  dropReadBacks(): void {
    this.setReadAhead(null);
    this.dropPrefetch();
  }

  /** Drops the prefetch; its buffer is released once its read is done. */
  private dropPrefetch(): void {
    const prefetch = this.prefetch;
    this.prefetch = null;
    if (prefetch) void prefetch.bytes.finally(() => readBackBuffers.release(prefetch.root));
  }

  private setReadAhead(next: ReadBack | null): void {
    const previous = this.readAhead;
    this.readAhead = next;
    if (previous && previous.root !== next?.root) readBackBuffers.release(previous.root);
  }

  /** Waits for the appends under way to settle and takes their replies. */
  async settle(): Promise<void> {
    await Promise.allSettled(this.inflight.map((e) => e.done));
    this.collectAcks();
  }

  /** The core's wait, plus the oldest append's reply. */
  private waitFor(w: {
    dataAfter?: number | undefined;
    tick?: boolean;
    tickAfter?: number | undefined;
    untilMs?: number | undefined;
    inflight?: boolean;
  }) {
    const first = w.inflight ? this.inflight[0] : undefined;
    return this.core.waitFor({
      dataAfter: w.dataAfter,
      tick: w.tick ?? false,
      tickAfter: w.tickAfter,
      untilMs: w.untilMs,
      ...(first ? { also: [first.done] } : {}),
    });
  }

  /**
   * Sends the next segment if one is due (full, cut by a boot, older than the age
   * bound, or wanted now), or waits for data, an ack, the clock or a deadline.
   */
  async pump(log: LocalLog): Promise<void> {
    const { segmentMaxBytes, maxInFlight, inFlightBudget } = this.core.options;
    // Room for one more append: this guest's bound, and the host's on bytes in flight.
    const room =
      this.inflight.length < maxInFlight &&
      (inFlightBudget?.allows(this.inflight.length, segmentMaxBytes) ?? true);
    const available = Math.min(log.flushedEnd, this.core.limit ?? Number.POSITIVE_INFINITY);
    if (this.sent < log.oldest && this.inflight.length === 0) {
      // The local log rotated away bytes the stream never got (a long outage, or a
      // flood faster than Redis): the only skip allowed (invariant 2), counted.
      this.core.logger.warn(
        { from: this.sent, to: log.oldest },
        'local log rotated away unsent bytes; the stream skips them',
      );
      this.skipAllowedAt = log.oldest;
      // The stream's `next`: the first skip's start, kept if the log rotated on again
      // before the append at the new oldest byte could be read.
      this.skipFrom ??= this.sent;
      this.sent = log.oldest;
      this.core.cursorValue = log.oldest;
      return;
    }
    const logClosed = log.state === 'closed';
    if (this.sent < available && room) {
      const end = this.segmentEnd(this.sent, available);
      const full = end - this.sent >= segmentMaxBytes || end < available;
      const urgent = this.core.limit !== null || this.core.finishing || logClosed;
      if (full || urgent || this.sent < this.core.dueUntil) {
        await this.send(this.sent, end, available);
        return;
      }
      // Not full: it goes at the next tick of the clock, or once a whole segment is there.
      await this.waitFor({ dataAfter: this.sent + segmentMaxBytes - 1, tick: true });
      return;
    }
    // Nothing to send, or the pipeline is full. Replies are collected at the next
    // step; they only need waking for when the pipeline is full or a seal waits.
    const urgent = this.core.limit !== null || this.core.finishing || logClosed;
    const atLimit = this.core.limit !== null && this.sent >= this.core.limit;
    const pipelineFull = !room;
    // Caught up and nothing urgent: new bytes go at the clock's next tick after they
    // are flushed (a whole segment at once), without waking the loop in between.
    const caughtUp = !urgent && !pipelineFull && this.sent >= available;
    let dataAfter: number | undefined;
    if (caughtUp) dataAfter = this.sent + segmentMaxBytes - 1;
    else if (!logClosed && !atLimit && this.sent >= available) dataAfter = available;
    await this.waitFor({
      dataAfter,
      tickAfter: caughtUp ? available : undefined,
      inflight: pipelineFull || urgent,
      untilMs: this.core.limit === null && !this.core.finishing ? this.core.nextPollAtMs : undefined,
    });
  }

  /**
   * Sends `[start, end)`. Its bytes come from memory when the capture's recent output
   * still holds them, else from the local log, read ahead up to `available` (at most
   * READ_BACK_BYTES) so that a backlog costs one file read per several segments; when
   * every read-back buffer is held, only the segment is read.
   */
  async send(start: number, end: number, available: number): Promise<void> {
    const { log } = this.core.options;
    let bytes = this.recent.get(start, end);
    /** The pooled buffer the segment is a view of, if read back from the log. */
    let root: Buffer | null = null;
    if (!bytes) {
      bytes = this.fromReadAhead(start, end);
      if (bytes) root = this.readAhead!.root;
    }
    try {
      const prefetch = this.prefetch;
      if (!bytes && prefetch?.start === start) {
        const ahead = await prefetch.bytes;
        // Dropped while it was read (forgetReads): the drop releases its buffer.
        if (this.prefetch === prefetch) {
          this.prefetch = null;
          if (ahead && ahead.length >= end - start) {
            this.setReadAhead({ start, bytes: ahead, root: prefetch.root }); // its hold moves over
            bytes = ahead.subarray(0, end - start);
            root = prefetch.root;
          } else readBackBuffers.release(prefetch.root);
        }
      }
      if (!bytes && !readBackBuffers.canTake()) {
        // Every read-back buffer is held (many guests in backlog at once): this segment only.
        bytes = await log.read(start, end);
      }
      if (!bytes) {
        const readEnd = Math.max(end, Math.min(available, start + READ_BACK_BYTES));
        const into = readBackBuffers.take(readEnd - start);
        let ahead: Buffer;
        try {
          ahead = await log.read(start, readEnd, into);
        } catch (err) {
          readBackBuffers.release(into);
          throw err;
        }
        this.setReadAhead({ start, bytes: ahead, root: into });
        bytes = ahead.subarray(0, end - start);
        root = into;
      }
    } catch (err) {
      if (start < log.oldest) return; // rotated away under the read: the next step skips
      throw err;
    }
    // A backlog: read the next stretch while this one is being sent.
    const aheadEnd = this.readAhead ? this.readAhead.start + this.readAhead.bytes.length : null;
    if (
      aheadEnd !== null &&
      this.prefetch === null &&
      available > aheadEnd &&
      readBackBuffers.canTake() &&
      !this.recent.get(aheadEnd, aheadEnd + 1)
    ) {
      const readEnd = Math.min(available, aheadEnd + READ_BACK_BYTES);
      const into = readBackBuffers.take(readEnd - aheadEnd);
      this.prefetch = {
        start: aheadEnd,
        bytes: log.read(aheadEnd, readEnd, into).catch(() => null),
        root: into,
      };
    }
    const allowSkip = this.skipAllowedAt === start;
    if (allowSkip) {
      this.skipAllowedAt = null;
      this.markSkip(start);
    }
    // A segment cut from a read-back buffer holds it until its append settles.
    this.appendSegment(start, end, bytes, allowSkip, log.markersIn(start, end), root);
    this.sent = end;
    this.recent.release(end);
    this.releaseStaleReadBacks();
  }

  /**
   * Releases a read-ahead all sent, and a prefetch of bytes already sent from memory
   * (it is only used when the next segment starts where it does): a replicator that
   * caught up holds no read-back buffer.
   */
  private releaseStaleReadBacks(): void {
    const readAhead = this.readAhead;
    if (readAhead && readAhead.start + readAhead.bytes.length <= this.sent) this.setReadAhead(null);
    if (this.prefetch && this.prefetch.start < this.sent) this.dropPrefetch();
  }

  /**
   * The stream jumps from `skipFrom` to `start` over bytes no local log holds any more
   * (rotated away during an outage, or lost by Redis with the host that had them): the
   * hole gets a gap marker at its start, in the stream only, since this log never
   * held those offsets. A hole too short for the marker is recorded as a skip only.
   */
  private markSkip(start: number): void {
    const from = this.skipFrom;
    this.skipFrom = null;
    if (from === null || from >= start) return;
    const marker = formatMarker({ kind: 'gap', bytes: start - from, reason: 'skipped' });
    if (marker.length > start - from) return;
    this.core.logger.warn(
      { from, to: start },
      'the stream skips bytes no local log holds; marked at the hole',
    );
    this.appendSegment(from, from + marker.length, marker, false, [
      { offset: from, length: marker.length, kind: 'gap' },
    ]);
  }

  /** One append under way: its reply advances the cursor in order (see collectAcks). */
  private appendSegment(
    start: number,
    end: number,
    bytes: Buffer,
    allowSkip: boolean,
    markers: readonly MarkerRecord[],
    root: Buffer | null = null,
  ): void {
    const { shared, guestId, host, retentionBytes } = this.core.options;
    const entry: InFlight = { start, end, settled: false, done: Promise.resolve() };
    if (root) readBackBuffers.hold(root);
    const budget = this.core.options.inFlightBudget;
    budget?.take(bytes.length);
    // Replies advance the cursor as they come (in order: appends share a connection);
    // a failure wakes the loop, which reconciles.
    const settle = (): void => {
      if (root) readBackBuffers.release(root);
      budget?.give(bytes.length);
      entry.settled = true;
      this.collectAcks();
      if (this.failure !== null) this.core.wake();
    };
    entry.done = shared
      .append(
        guestId,
        {
          epoch: this.core.state.epoch,
          host,
          offset: start,
          bytes,
          boot: this.bootAt(start),
          timestampMs: Date.now(),
        },
        retentionBytes,
        { allowSkip, markers },
      )
      .then(
        (result) => {
          entry.result = result;
          settle();
        },
        (error: unknown) => {
          entry.error = error;
          settle();
        },
      );
    this.inflight.push(entry);
  }

  fromReadAhead(start: number, end: number): Buffer | null {
    const ahead = this.readAhead;
    if (!ahead || start < ahead.start || end > ahead.start + ahead.bytes.length) return null;
    return ahead.bytes.subarray(start - ahead.start, end - ahead.start);
  }

  /** Takes the replies of the oldest appends, in order. */
  collectAcks(): void {
    let advanced = false;
    while (this.inflight[0]?.settled) {
      const entry = this.inflight.shift()!;
      if (entry.error !== undefined) {
        this.failure ??= entry.error;
        continue;
      }
      if (this.failure !== null || !entry.result) continue;
      const reply = entry.result;
      if (reply.status === 'appended') {
        this.core.counters.appends++;
        this.core.counters.appendedBytes += entry.end - entry.start;
        if (reply.skippedBytes > 0) this.recordSkip(entry.start - reply.skippedBytes, entry.start);
      } else {
        this.core.counters.duplicates++;
      }
      this.core.cursorValue = Math.max(this.core.cursorValue, entry.end);
      advanced = true;
    }
    if (advanced) {
      this.core.lag.published(this.core.cursorValue);
      if (!this.core.state.published) this.core.state = { ...this.core.state, published: true };
      this.core.scheduleSave();
      if (this.core.finishing || this.core.limit !== null) this.core.emit('change');
    }
  }

  /** A segment ends at the size bound, at what is available, and before the next boot. */
  segmentEnd(start: number, available: number): number {
    let end = Math.min(available, start + this.core.options.segmentMaxBytes);
    const boots = this.core.options.log.boots;
    for (let i = boots.length - 1; i >= 0; i--) {
      const offset = boots[i]!.offset;
      if (offset <= start) break;
      if (offset < end) end = offset;
    }
    return end;
  }

  bootAt(offset: number): number {
    const boots = this.core.options.log.boots;
    for (let i = boots.length - 1; i >= 0; i--) if (boots[i]!.offset <= offset) return boots[i]!.boot;
    const first = boots[0];
    return first ? Math.max(0, first.boot - 1) : 1;
  }

  recordSkip(from: number, to: number): void {
    this.core.state = { ...this.core.state, skippedBytes: this.core.state.skippedBytes + (to - from) };
    this.core.logger.warn(
      { from, to, bytes: to - from },
      'the stream skipped bytes the local log no longer held',
    );
    const key = skipsKey(this.core.options.prefix, this.core.options.guestId);
    this.core.options.client
      .zadd(key, to, `${from}-${to}`)
      .then(() => this.core.options.client.zremrangebyrank(key, 0, -(SKIP_RECORDS_KEPT + 1)))
      .catch((err: unknown) =>
        this.core.logger.warn({ err: describeError(err) }, 'could not record the skipped span'),
      );
  }

  /**
   * Where publishing continues, from the stream's `next`: Redis lost the stream (send
   * the local log again), lost its tail (a failover: send again from `next`), or is
   * ahead of the local log.
   */
  resumeAt(st: OwnerRecord): void {
    const log = this.core.options.log;
    const streamNext = st.next ?? st.streamEnd;
    let resume: number;
    if (streamNext === null) {
      if (this.core.state.published) {
        this.core.counters.redisDataLosses++;
        this.core.logger.error(
          { cursor: this.core.cursorValue, resendFrom: log.oldest },
          "Redis lost this guest's stream; sending the local log again",
        );
      }
      resume = log.oldest; // the first append is accepted at any offset
    } else if (streamNext < this.core.cursorValue) {
      this.core.counters.lostTails++;
      this.core.logger.warn(
        { streamNext, cursor: this.core.cursorValue },
        'the stream lost its tail (a failover); sending it again',
      );
      resume = streamNext;
    } else {
      if (streamNext > log.end) {
        this.core.logger.error(
          { streamNext, localEnd: log.end },
          'the stream is ahead of the local log; bytes up to its end are not sent again',
        );
      }
      resume = streamNext;
    }
    this.skipAllowedAt = null;
    this.skipFrom = null;
    if (resume < log.oldest) {
      this.skipAllowedAt = log.oldest;
      this.skipFrom = streamNext;
      resume = log.oldest;
    }
    this.core.cursorValue = resume;
    this.sent = resume;
    this.dropReadBacks();
    this.core.lag.published(resume);
    this.core.nextPollAtMs = Date.now() + jitter(this.core.options.handoff.pollIntervalMs);
    this.core.scheduleSave();
  }
}
