/**
 * One guest's replication (DESIGN.md invariants 2 to 4, "Migration handoff"): tails
 * the local log and appends it to the shared stream in segments, exactly once and in
 * order, under a fencing epoch; and runs this host's side of a migration handoff.
 *
 * The local log is the source of truth and the backlog: only bytes already in the
 * files are sent (a SIGKILL cannot leave the stream ahead of the log), they are read
 * back from the files, and at most `maxInFlight` segments are in memory, however long
 * Redis is away. After every (re)connect and every failed append the replicator
 * reconciles with the stream's owner record and continues from the stream's `next`.
 */
import { EventEmitter } from 'node:events';
import type { Logger } from 'pino';
import { ConsoledError } from '../../common/errors.js';
import type { MarkerEvent } from '../../common/marker.js';
import type { LocalLog } from '../local-log.js';
import type { BootStart } from '../log-view.js';
import { LagTracker } from './lag-tracker.js';
import { RecentBytes } from './recent-bytes.js';
import type { AppendReply, RedisClient } from './redis-commands.js';
import { skipsKey } from './redis-keys.js';
import type { ReplicationRole, ReplicationState, ReplicationStateFile } from './replication-state.js';
import type { SegmentClock } from './segment-clock.js';
import type { OwnerRecord, SharedLog } from './shared-log.js';

/** What the replicators need to know of the Redis connection (the sidecar owns the client). */
export interface RedisLink {
  readonly ready: boolean;
  /** Grows on every (re)connect: a replicator reconciles when it changes. */
  readonly generation: number;
  /** Resolves once ready, or when `signal` aborts. */
  waitReady(signal: AbortSignal): Promise<void>;
}

/** The guest-side actions a handoff needs (the sidecar implements them for a Guest). */
export interface GuestControl {
  /** Resolves once the chardev sent nothing for `quietMs`, or after `timeoutMs` in all. */
  drainSource(quietMs: number, timeoutMs: number): Promise<void>;
  /** Appends a marker to the local log and returns the offset after it. */
  writeMarker(event: MarkerEvent): number;
  /** Stops reading the chardev for good: the guest runs on another host now. */
  stopSource(): Promise<void>;
  /** While true, the guest continues a log another host keeps: opening the chardev starts no boot. */
  setContinuing(value: boolean): void;
  /** Calls `listener` with every chunk appended to the log, at its offset; returns the unsubscribe. */
  onOutput(listener: (offset: number, bytes: Buffer) => void): () => void;
}

/** A handoff notification between hosts (Redis pub/sub, on the receiving host's channel). */
export interface HandoffNotice {
  readonly guest: string;
  readonly event: 'requested' | 'sealed' | 'cancelled';
  readonly from: string;
}

export interface HandoffSettings {
  readonly completionTimeoutMs: number;
  readonly timeoutAction: 'force_complete' | 'abort';
  readonly pollIntervalMs: number;
  readonly sealPollIntervalMs: number;
  readonly drainQuietMs: number;
  readonly drainTimeoutMs: number;
}

export interface ReplicatorOptions {
  readonly guestId: string;
  readonly host: string;
  readonly log: LocalLog;
  readonly shared: SharedLog;
  /** The client `shared` uses, for the skip records. */
  readonly client: RedisClient;
  readonly prefix: string;
  readonly link: RedisLink;
  readonly stateFile: ReplicationStateFile;
  /** The state loaded from `stateFile` (or a new one). */
  readonly state: ReplicationState;
  readonly control: GuestControl;
  readonly notify: (host: string, notice: HandoffNotice) => void;
  readonly segmentMaxBytes: number;
  /** The age bound of segments, shared by the daemon's replicators. */
  readonly clock: SegmentClock;
  /** Bytes of recent output kept in memory to send without reading the files back. */
  readonly recentBytesMax: number;
  readonly maxInFlight: number;
  readonly retentionBytes: number;
  readonly stateSaveIntervalMs: number;
  readonly handoff: HandoffSettings;
  readonly logger: Logger;
}

/**
 * Where a handoff stands, on either side:
 * `waiting` (incoming, no guest byte yet), `requested` (incoming, the source was
 * asked), `aborted` (incoming, timed out with `abort`: still spooling), `draining`
 * (source: asked; draining, then publishing up to its marker), `sealed` (source:
 * waiting for the destination's claim), `completed`, `forced`, `cancelled`.
 */
export type HandoffPhase =
  | 'none'
  | 'waiting'
  | 'requested'
  | 'aborted'
  | 'draining'
  | 'sealed'
  | 'completed'
  | 'forced'
  | 'cancelled';

/** The `replication` section of a guest's status. */
export interface ReplicationStatus {
  role: ReplicationRole;
  host: string;
  epoch: number;
  /** The owner and epoch as last seen in Redis (null before the first look). */
  owner: string | null;
  ownerEpoch: number | null;
  handoff: {
    phase: HandoffPhase;
    target: string | null;
    source: string | null;
    requestedAt: string | null;
    sealedAt: number | null;
    /** The last handoff this host completed as destination: from the trigger to owning the stream. */
    lastTriggerToOwnerMs: number | null;
  };
  /** The stream holds this log's bytes before this offset. */
  cursor: number;
  lagBytes: number;
  lagSeconds: number;
  /** Incoming: bytes spooled locally, not published. */
  spooledBytes: number;
  /** Fenced or handed off: bytes this log holds that the stream never got. */
  unpublishedBytes: number;
  skippedBytes: number;
  lastError: string | null;
}

interface InFlight {
  readonly start: number;
  readonly end: number;
  settled: boolean;
  result?: AppendReply;
  error?: unknown;
  done: Promise<void>;
}

type StatePatch = {
  [K in keyof Omit<ReplicationState, 'version' | 'host'>]?: ReplicationState[K] | undefined;
};

const MAX_ERROR_DELAY_MS = 5_000;
/** One read of the local log feeds this many bytes of segments when there is a backlog. */
const READ_AHEAD_BYTES = 1024 * 1024;
const ABORTED_POLL_MS = 1_000;
const SKIP_RECORDS_KEPT = 100;

export class Replicator extends EventEmitter<{ change: [] }> {
  private state: ReplicationState;
  private cursorValue: number;
  private sent: number;
  private readonly inflight: InFlight[] = [];
  private failure: unknown = null;
  private skipAllowedAt: number | null = null;
  private reconciledGeneration = -1;
  private ownerRecord: OwnerRecord | null = null;
  private nextPollAtMs = 0;
  /** Source: the destination that asked for the guest. */
  private handoffTarget: string | null = null;
  /** Source: the offset after its handoff marker; nothing after it is sent. */
  private limit: number | null = null;
  private phaseValue: HandoffPhase;
  private requestRegistered = false;
  private forceRequested = false;
  private triggeredAt: number | null = null;
  private lastTriggerToOwnerMs: number | null = null;
  private finishing = false;
  private stopped = false;
  private readonly stopController = new AbortController();
  private readonly wakers = new Set<() => void>();
  private woken = false;
  private running: Promise<void> | null = null;
  private saveTimer: NodeJS.Timeout | null = null;
  private lastErrorValue: string | null = null;
  private errorDelayMs = 0;
  private readonly lag = new LagTracker();
  private readonly logger: Logger;
  /** Offset whose flush wakes the loop (it waits for more data), or null. */
  private dataWaitAt: number | null = null;
  /** Bytes before this offset waited a whole tick of the clock: send them now. */
  private dueUntil = 0;
  private readonly recent: RecentBytes;
  /** Bytes read from the local log ahead of what was sent (a backlog), or null. */
  private readAhead: { start: number; bytes: Buffer } | null = null;
  /** The read of the stretch after `readAhead`, under way. */
  private prefetch: { start: number; bytes: Promise<Buffer | null> } | null = null;
  private unsubscribeOutput: (() => void) | null = null;
  private readonly onFlushed = (end: number): void => {
    this.lag.flushed(end, Date.now());
    if (this.dataWaitAt !== null && end > this.dataWaitAt) this.wake();
  };
  private readonly onClosed = (): void => this.wake();
  private readonly onRenumbered = (): void => {
    this.lag.reset();
    this.recent.clear();
    this.readAhead = null;
    this.prefetch = null;
    this.dueUntil = 0;
  };

  readonly counters = {
    appends: 0,
    appendedBytes: 0,
    duplicates: 0,
    reconciles: 0,
    appendErrors: 0,
    redisDataLosses: 0,
    lostTails: 0,
    reclaims: 0,
    fenced: 0,
    handoffsCompleted: 0,
    handoffsForced: 0,
    handoffsAborted: 0,
    handoffsCancelled: 0,
  };

  constructor(private readonly options: ReplicatorOptions) {
    super();
    this.state = options.state;
    this.cursorValue = options.state.cursor;
    this.sent = options.state.cursor;
    this.logger = options.logger.child({ component: 'replication' });
    this.recent = new RecentBytes(options.recentBytesMax);
    this.phaseValue =
      options.state.role === 'incoming'
        ? options.state.handoff
          ? options.state.handoff.aborted
            ? 'aborted'
            : 'requested'
          : 'waiting'
        : 'none';
    if (options.state.role === 'owner' && options.state.sealedAt !== undefined)
      this.limit = options.state.sealedAt;
  }

  get role(): ReplicationRole {
    return this.state.role;
  }

  get epoch(): number {
    return this.state.epoch;
  }

  get cursor(): number {
    return this.cursorValue;
  }

  get phase(): HandoffPhase {
    return this.phaseValue;
  }

  /** The offset this host stops writing the stream at (sealing for a handoff), or null. */
  get sealLimit(): number | null {
    return this.limit;
  }

  /** True while this host writes the guest's stream (it owns it and has not sealed). */
  get writing(): boolean {
    return this.state.role === 'owner';
  }

  get lastError(): string | null {
    return this.lastErrorValue;
  }

  start(): void {
    if (this.running) return;
    this.options.log.on('flushed', this.onFlushed);
    this.options.log.on('closed', this.onClosed);
    this.options.log.on('renumbered', this.onRenumbered);
    this.unsubscribeOutput = this.options.control.onOutput((offset, bytes) => {
      // Only while sending: during an outage the local log alone holds the backlog.
      if (this.options.link.ready && this.state.role === 'owner') this.recent.add(offset, bytes);
    });
    this.options.control.setContinuing(this.state.role === 'incoming' || this.state.role === 'adopting');
    void this.saveNow();
    this.running = this.run();
  }

  /** Stops at once (what is not sent stays in the local log). */
  async stop(): Promise<void> {
    if (!this.stopped) {
      this.stopped = true;
      this.stopController.abort();
      this.wake();
    }
    await this.running;
    await Promise.allSettled(this.inflight.map((e) => e.done));
    this.collectAcks();
    this.options.log.off('flushed', this.onFlushed);
    this.options.log.off('closed', this.onClosed);
    this.options.log.off('renumbered', this.onRenumbered);
    this.unsubscribeOutput?.();
    this.recent.clear();
    if (this.saveTimer) clearTimeout(this.saveTimer);
    this.saveTimer = null;
    await this.saveNow();
  }

  /**
   * Publishes what the (closed or closing) log holds, for at most `timeoutMs`, then
   * stops: a detach or a shutdown (STYLE.md 13: drain replication with a deadline).
   */
  async finish(timeoutMs: number): Promise<void> {
    if (this.state.role === 'owner' && this.limit === null && !this.stopped) {
      this.finishing = true;
      this.wake();
      const deadline = Date.now() + timeoutMs;
      while (
        this.cursorValue < this.options.log.flushedEnd &&
        Date.now() < deadline &&
        this.state.role === 'owner'
      ) {
        await new Promise<void>((resolve) => {
          const timer = setTimeout(done, Math.min(50, Math.max(1, deadline - Date.now())));
          const listener = (): void => done();
          this.once('change', listener);
          function done(): void {
            clearTimeout(timer);
            resolve();
          }
        });
      }
      const left = this.options.log.flushedEnd - this.cursorValue;
      if (left > 0 && this.state.role === 'owner') {
        this.logger.warn(
          { unpublishedBytes: left },
          'replication not drained before the deadline; the rest is sent after the next attach',
        );
      }
    }
    await this.stop();
  }

  /** Wakes the loop (a notification arrived: look at the owner record now). */
  poke(): void {
    this.nextPollAtMs = 0;
    this.wake();
  }

  /**
   * Destination: the guest runs here now (its first byte, `trigger: 'first-byte'`) or
   * an operator asked (`'api'`, `force` to fence the source without waiting). Writes
   * the `handoff-from` marker before the guest's byte and starts the handoff.
   */
  requestOwnership(trigger: 'first-byte' | 'api', force = false): void {
    if (this.state.role !== 'incoming') {
      if (trigger === 'api' && this.state.role !== 'adopting') {
        throw new ConsoledError(
          'HANDOFF_STATE',
          `guest ${this.options.guestId} is ${this.state.role} here, not incoming`,
        );
      }
      return;
    }
    if (!this.state.handoff) {
      const owner = this.ownerRecord && this.ownerRecord.host !== this.options.host ? this.ownerRecord : null;
      this.options.control.writeMarker({
        kind: 'handoff-from',
        host: owner?.host ?? 'unknown',
        at: new Date(),
      });
      this.triggeredAt = performance.now();
      this.state = {
        ...this.state,
        handoff: {
          requestedAtMs: Date.now(),
          sourceHost: owner?.host ?? null,
          sourceEpoch: owner?.epoch ?? null,
          aborted: false,
        },
      };
      this.setPhase('requested');
      void this.saveNow();
      this.logger.info({ trigger, source: owner?.host ?? null }, 'incoming guest claims the stream');
    }
    if (force) this.forceRequested = true;
    this.wake();
  }

  /** Destination: the migration was cancelled (DELETE of the incoming guest). */
  async cancelIncoming(): Promise<void> {
    if (this.state.role !== 'incoming') return;
    const handoff = this.state.handoff;
    this.counters.handoffsCancelled++;
    this.setPhase('cancelled');
    await this.updateState({ role: 'cancelled' }, true);
    if (!handoff) return;
    try {
      await this.options.shared.cancelHandoff(this.options.guestId, this.options.host);
      if (handoff.sourceHost) {
        this.options.notify(handoff.sourceHost, {
          guest: this.options.guestId,
          event: 'cancelled',
          from: this.options.host,
        });
      }
    } catch (err) {
      this.logger.warn({ err: describe(err) }, 'could not cancel the handoff in Redis');
    }
  }

  status(): ReplicationStatus {
    const log = this.options.log;
    const role = this.state.role;
    const now = Date.now();
    const owner = role === 'owner';
    const stoppedAt = this.limit ?? this.cursorValue;
    return {
      role,
      host: this.options.host,
      epoch: this.state.epoch,
      owner: this.ownerRecord?.host ?? null,
      ownerEpoch: this.ownerRecord ? this.ownerRecord.epoch : null,
      handoff: {
        phase: this.phaseValue,
        target: this.handoffTarget ?? this.ownerRecord?.target ?? null,
        source: this.state.handoff?.sourceHost ?? null,
        requestedAt: this.state.handoff ? new Date(this.state.handoff.requestedAtMs).toISOString() : null,
        sealedAt: this.state.sealedAt ?? null,
        lastTriggerToOwnerMs: this.lastTriggerToOwnerMs,
      },
      cursor: this.cursorValue,
      lagBytes: owner
        ? Math.max(0, Math.min(log.flushedEnd, this.limit ?? Number.POSITIVE_INFINITY) - this.cursorValue)
        : 0,
      lagSeconds: owner ? this.lag.lagSeconds(this.cursorValue, now) : 0,
      spooledBytes:
        role === 'incoming' || role === 'adopting'
          ? Math.max(0, log.end - (this.state.spoolStart ?? log.oldest))
          : 0,
      unpublishedBytes:
        role === 'fenced' || role === 'handed-off' || (owner && this.limit !== null)
          ? Math.max(0, log.end - stoppedAt)
          : 0,
      skippedBytes: this.state.skippedBytes,
      lastError: this.lastErrorValue,
    };
  }

  // The loop -------------------------------------------------------------------

  private async run(): Promise<void> {
    while (!this.stopped) {
      try {
        switch (this.state.role) {
          case 'owner':
            await this.ownerStep();
            break;
          case 'incoming':
            await this.incomingStep();
            break;
          case 'adopting':
            await this.finishAdoption();
            break;
          default:
            await this.waitFor({});
        }
        const settled =
          this.state.role !== 'owner' || this.reconciledGeneration === this.options.link.generation;
        if (this.errorDelayMs > 0 && this.failure === null && settled) this.recovered();
      } catch (err) {
        if (this.stopped) break;
        await Promise.allSettled(this.inflight.map((e) => e.done));
        this.collectAcks();
        this.failure = null;
        this.reconciledGeneration = -1;
        this.noteError(err);
        await this.waitFor({ timeoutMs: this.errorDelayMs });
      }
    }
  }

  private async ownerStep(): Promise<void> {
    const { link, log } = this.options;
    if (!link.ready) {
      this.recent.clear();
      this.readAhead = null;
      this.prefetch = null;
      await Promise.allSettled(this.inflight.map((e) => e.done));
      this.collectAcks();
      await link.waitReady(this.stopController.signal);
      return;
    }
    this.collectAcks();
    if (this.failure !== null) {
      const failure = this.failure;
      this.counters.appendErrors++;
      throw failure;
    }
    if (this.reconciledGeneration !== link.generation) {
      await this.reconcile();
      return;
    }
    if (this.state.sealedAt !== undefined) {
      await this.waitForClaim();
      return;
    }
    if (this.limit === null) {
      if (this.handoffTarget !== null) {
        await this.beginSourceHandoff(this.handoffTarget);
        return;
      }
      if (Date.now() >= this.nextPollAtMs && !this.finishing) {
        await this.pollOwner();
        return;
      }
    } else if (this.cursorValue >= this.limit && this.inflight.length === 0) {
      await this.seal(this.limit);
      return;
    }
    await this.pump(log);
  }

  /**
   * Sends the next segment if one is due (full, cut by a boot, older than the age
   * bound, or wanted now), or waits for data, an ack, the clock or a deadline.
   */
  private async pump(log: LocalLog): Promise<void> {
    const { segmentMaxBytes, maxInFlight } = this.options;
    const available = Math.min(log.flushedEnd, this.limit ?? Number.POSITIVE_INFINITY);
    if (this.sent < log.oldest && this.inflight.length === 0) {
      // The local log rotated away bytes the stream never got (a long outage, or a
      // flood faster than Redis): the only skip allowed (invariant 2), counted.
      this.logger.warn(
        { from: this.sent, to: log.oldest },
        'local log rotated away unsent bytes; the stream skips them',
      );
      this.skipAllowedAt = log.oldest;
      this.sent = log.oldest;
      this.cursorValue = log.oldest;
      return;
    }
    const logClosed = log.state === 'closed';
    if (this.sent < available && this.inflight.length < maxInFlight) {
      const end = this.segmentEnd(this.sent, available);
      const full = end - this.sent >= segmentMaxBytes || end < available;
      const urgent = this.limit !== null || this.finishing || logClosed;
      if (full || urgent || this.sent < this.dueUntil) {
        await this.send(this.sent, end, available);
        return;
      }
      // Not full: it goes at the next tick of the clock, or once a whole segment is there.
      await this.waitFor({ dataAfter: this.sent + segmentMaxBytes - 1, tick: true });
      return;
    }
    // Nothing to send, or the pipeline is full. Replies are collected at the next
    // step; they only need waking for when the pipeline is full or a seal waits.
    const untilPoll =
      this.limit === null && !this.finishing ? Math.max(1, this.nextPollAtMs - Date.now()) : undefined;
    const atLimit = this.limit !== null && this.sent >= this.limit;
    const pipelineFull = this.inflight.length >= maxInFlight;
    await this.waitFor({
      dataAfter: logClosed || atLimit || this.sent < available ? undefined : available,
      inflight: pipelineFull || this.limit !== null || this.finishing || logClosed,
      ...(untilPoll !== undefined ? { timeoutMs: untilPoll } : {}),
    });
  }

  /**
   * Sends `[start, end)`. Its bytes come from memory when the capture's recent output
   * still holds them, else from the local log, read ahead up to `available` (at most
   * READ_AHEAD_BYTES) so that a backlog costs one file read per several segments.
   */
  private async send(start: number, end: number, available: number): Promise<void> {
    const { log, shared, guestId, host, retentionBytes } = this.options;
    let bytes = this.recent.get(start, end) ?? this.fromReadAhead(start, end);
    try {
      if (!bytes && this.prefetch?.start === start) {
        const ahead = await this.prefetch.bytes;
        this.prefetch = null;
        if (ahead && ahead.length >= end - start) {
          this.readAhead = { start, bytes: ahead };
          bytes = ahead.subarray(0, end - start);
        }
      }
      if (!bytes) {
        const ahead = await log.read(start, Math.max(end, Math.min(available, start + READ_AHEAD_BYTES)));
        this.readAhead = { start, bytes: ahead };
        bytes = ahead.subarray(0, end - start);
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
      !this.recent.get(aheadEnd, aheadEnd + 1)
    ) {
      this.prefetch = {
        start: aheadEnd,
        bytes: log.read(aheadEnd, Math.min(available, aheadEnd + READ_AHEAD_BYTES)).catch(() => null),
      };
    }
    const allowSkip = this.skipAllowedAt === start;
    if (allowSkip) this.skipAllowedAt = null;
    const entry: InFlight = { start, end, settled: false, done: Promise.resolve() };
    // Replies advance the cursor as they come (in order: appends share a connection);
    // a failure wakes the loop, which reconciles.
    const settle = (): void => {
      entry.settled = true;
      this.collectAcks();
      if (this.failure !== null) this.wake();
    };
    entry.done = shared
      .append(
        guestId,
        {
          epoch: this.state.epoch,
          host,
          offset: start,
          bytes,
          boot: this.bootAt(start),
          timestampMs: Date.now(),
        },
        retentionBytes,
        { allowSkip },
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
    this.sent = end;
    this.recent.release(end);
    if (this.readAhead && this.readAhead.start + this.readAhead.bytes.length <= end) this.readAhead = null;
  }

  private fromReadAhead(start: number, end: number): Buffer | null {
    const ahead = this.readAhead;
    if (!ahead || start < ahead.start || end > ahead.start + ahead.bytes.length) return null;
    return ahead.bytes.subarray(start - ahead.start, end - ahead.start);
  }

  /** Takes the replies of the oldest appends, in order. */
  private collectAcks(): void {
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
        this.counters.appends++;
        this.counters.appendedBytes += entry.end - entry.start;
        if (reply.skippedBytes > 0) this.recordSkip(entry.start - reply.skippedBytes, entry.start);
      } else {
        this.counters.duplicates++;
      }
      this.cursorValue = Math.max(this.cursorValue, entry.end);
      advanced = true;
    }
    if (advanced) {
      this.lag.published(this.cursorValue);
      if (!this.state.published) this.state = { ...this.state, published: true };
      this.scheduleSave();
      if (this.finishing || this.limit !== null) this.emit('change');
    }
  }

  /** A segment ends at the size bound, at what is available, and before the next boot. */
  private segmentEnd(start: number, available: number): number {
    let end = Math.min(available, start + this.options.segmentMaxBytes);
    const boots = this.options.log.boots;
    for (let i = boots.length - 1; i >= 0; i--) {
      const offset = boots[i]!.offset;
      if (offset <= start) break;
      if (offset < end) end = offset;
    }
    return end;
  }

  private bootAt(offset: number): number {
    const boots = this.options.log.boots;
    for (let i = boots.length - 1; i >= 0; i--) if (boots[i]!.offset <= offset) return boots[i]!.boot;
    const first = boots[0];
    return first ? Math.max(0, first.boot - 1) : 1;
  }

  private recordSkip(from: number, to: number): void {
    this.state = { ...this.state, skippedBytes: this.state.skippedBytes + (to - from) };
    this.logger.warn({ from, to, bytes: to - from }, 'the stream skipped bytes the local log no longer held');
    const key = skipsKey(this.options.prefix, this.options.guestId);
    this.options.client
      .zadd(key, to, `${from}-${to}`)
      .then(() => this.options.client.zremrangebyrank(key, 0, -(SKIP_RECORDS_KEPT + 1)))
      .catch((err: unknown) => this.logger.warn({ err: describe(err) }, 'could not record the skipped span'));
  }

  // Reconciliation ------------------------------------------------------------

  private async owner(): Promise<OwnerRecord> {
    const record = await this.options.shared.owner(this.options.guestId);
    this.ownerRecord = record;
    return record;
  }

  /**
   * Compares this host's view with the owner record and makes them agree: epoch
   * (Redis lost our claim: claim again, never going back; another host holds a
   * higher one: fenced), handoff state, and where the stream continues.
   */
  private async reconcile(): Promise<void> {
    const { link, log, shared, guestId, host } = this.options;
    await Promise.allSettled(this.inflight.map((e) => e.done));
    this.inflight.length = 0;
    this.failure = null;
    const generation = link.generation;
    this.counters.reconciles++;
    let st = await this.owner();
    if (this.state.epoch === 0) {
      await this.firstClaim(st);
      return;
    }
    if (st.epoch !== 0 && (st.host !== host || st.epoch !== this.state.epoch)) {
      if (st.host === host && st.epoch > this.state.epoch) {
        // Our own claim, made just before a SIGKILL that lost its save.
        await this.updateState({ epoch: st.epoch }, true);
      } else if (st.epoch < this.state.epoch) {
        // Redis lost our claim (a failover to a replica that had not got it, or a
        // restart without persistence): claim again with at least our epoch.
        const claim = await shared.claim(guestId, {
          host,
          expectedEpoch: st.epoch,
          minEpoch: this.state.epoch,
        });
        this.counters.reclaims++;
        this.logger.warn(
          { had: st.epoch, epoch: claim.epoch },
          "Redis lost this host's claim; claimed the guest again",
        );
        await this.updateState({ epoch: claim.epoch }, true);
        st = await this.owner();
      } else {
        await this.lostOwnership(st);
        return;
      }
    }
    if (st.handoff === 'sealed' && st.host === host) {
      const at = st.sealedAt ?? st.next ?? this.cursorValue;
      this.limit = at;
      if (this.state.sealedAt !== at) await this.updateState({ sealedAt: at }, true);
      this.setPhase('sealed');
    } else if (st.handoff === 'pending' && st.target && this.limit === null) {
      this.handoffTarget = st.target;
    }

    const streamNext = st.next ?? st.streamEnd;
    let resume: number;
    if (streamNext === null) {
      if (this.state.published) {
        this.counters.redisDataLosses++;
        this.logger.error(
          { cursor: this.cursorValue, resendFrom: log.oldest },
          "Redis lost this guest's stream; sending the local log again",
        );
      }
      resume = log.oldest; // the first append is accepted at any offset
    } else if (streamNext < this.cursorValue) {
      this.counters.lostTails++;
      this.logger.warn(
        { streamNext, cursor: this.cursorValue },
        'the stream lost its tail (a failover); sending it again',
      );
      resume = streamNext;
    } else if (streamNext > log.end) {
      this.logger.error(
        { streamNext, localEnd: log.end },
        'the stream is ahead of the local log; bytes up to its end are not sent again',
      );
      resume = streamNext;
    } else {
      resume = streamNext;
    }
    this.skipAllowedAt = null;
    if (resume < log.oldest) {
      this.skipAllowedAt = log.oldest;
      resume = log.oldest;
    }
    this.cursorValue = resume;
    this.sent = resume;
    this.readAhead = null;
    this.prefetch = null;
    this.lag.published(resume);
    this.reconciledGeneration = generation;
    this.nextPollAtMs = Date.now() + jitter(this.options.handoff.pollIntervalMs);
    this.scheduleSave();
  }

  /** An owner that never claimed: claim now; continuing another host's history means adopting it. */
  private async firstClaim(st: OwnerRecord): Promise<void> {
    const { shared, guestId, host } = this.options;
    if (st.epoch > 0 && st.host === host) {
      await this.updateState({ epoch: st.epoch }, true); // our claim; the state that said so was lost
      return;
    }
    const claim = await shared.claim(guestId, { host, expectedEpoch: 'any' });
    if (claim.next !== null && claim.previousHost !== null && claim.previousHost !== host) {
      this.logger.info(
        { previousHost: claim.previousHost, next: claim.next },
        "taking over the guest's stream from another host",
      );
      await this.adopt(claim.epoch, claim.next, false);
      return;
    }
    this.logger.info({ epoch: claim.epoch }, "owns the guest's stream");
    await this.updateState({ epoch: claim.epoch }, true);
  }

  private async pollOwner(): Promise<void> {
    const st = await this.owner();
    this.nextPollAtMs = Date.now() + jitter(this.options.handoff.pollIntervalMs);
    if (st.epoch !== 0 && (st.host !== this.options.host || st.epoch !== this.state.epoch)) {
      this.reconciledGeneration = -1;
      return;
    }
    if (st.handoff === 'pending' && st.target) this.handoffTarget = st.target;
  }

  private async lostOwnership(st: OwnerRecord): Promise<void> {
    const { log, control } = this.options;
    if (this.state.sealedAt !== undefined || this.limit !== null) {
      await this.becomeHandedOff(st);
      return;
    }
    this.counters.fenced++;
    const unpublished = Math.max(0, log.end - this.cursorValue);
    this.logger.error(
      { owner: st.host, epoch: st.epoch, ourEpoch: this.state.epoch, unpublishedBytes: unpublished },
      'fenced out: another host owns the guest; its bytes stay in the local log',
    );
    if (log.state !== 'closed') control.writeMarker({ kind: 'gap', bytes: unpublished, reason: 'fenced' });
    if (this.handoffTarget !== null) this.setPhase('forced');
    await this.updateState({ role: 'fenced' }, true);
  }

  // Source side of a handoff ----------------------------------------------------

  private async beginSourceHandoff(target: string): Promise<void> {
    const { control, handoff, guestId, host } = this.options;
    this.setPhase('draining');
    this.logger.info({ target }, 'handoff requested; draining the chardev');
    await Promise.allSettled(this.inflight.map((e) => e.done));
    await control.drainSource(handoff.drainQuietMs, handoff.drainTimeoutMs);
    const st = await this.owner();
    if (
      st.handoff !== 'pending' ||
      st.target !== target ||
      st.host !== host ||
      st.epoch !== this.state.epoch
    ) {
      this.logger.info(
        { guest: guestId, handoff: st.handoff },
        'the handoff request went away; staying the owner',
      );
      this.handoffTarget = null;
      this.setPhase('cancelled');
      this.reconciledGeneration = -1;
      return;
    }
    this.limit = control.writeMarker({ kind: 'handoff-to', host: target, at: new Date() });
    this.emit('change');
  }

  private async seal(at: number): Promise<void> {
    const { shared, guestId, host, notify } = this.options;
    const st = await this.owner();
    if (st.host === host && st.epoch === this.state.epoch && st.handoff === 'none') {
      // Cancelled while we drained: the marker stays, publishing goes on.
      this.logger.info('the handoff was cancelled before the seal; staying the owner');
      this.limit = null;
      this.handoffTarget = null;
      this.counters.handoffsCancelled++;
      this.setPhase('cancelled');
      return;
    }
    const reply = await shared.seal(guestId, this.state.epoch, host, at);
    const target = reply.target ?? this.handoffTarget;
    this.logger.info({ sealedAt: at, target }, 'sealed the stream for the handoff');
    this.setPhase('sealed');
    await this.updateState({ sealedAt: at }, true);
    if (target) notify(target, { guest: guestId, event: 'sealed', from: host });
  }

  /** Sealed: wait for the destination's claim (then stop), or a cancel (then go on). */
  private async waitForClaim(): Promise<void> {
    const { host } = this.options;
    const st = await this.owner();
    if (st.host !== host || st.epoch !== this.state.epoch) {
      await this.becomeHandedOff(st);
      return;
    }
    if (st.handoff === 'none') {
      this.logger.info('the handoff was cancelled after the seal; publishing again');
      this.limit = null;
      this.handoffTarget = null;
      this.counters.handoffsCancelled++;
      this.setPhase('cancelled');
      await this.updateState({ sealedAt: undefined }, true);
      this.reconciledGeneration = -1;
      return;
    }
    await this.waitFor({ timeoutMs: this.options.handoff.sealPollIntervalMs });
  }

  private async becomeHandedOff(st: OwnerRecord): Promise<void> {
    const unpublished = Math.max(0, this.options.log.end - (this.limit ?? this.cursorValue));
    this.counters.handoffsCompleted++;
    this.logger.info(
      { owner: st.host, epoch: st.epoch, unpublishedBytes: unpublished },
      'handed the guest off; stopping its chardev',
    );
    this.setPhase('completed');
    await this.updateState({ role: 'handed-off' }, true);
    await this.options.control.stopSource();
  }

  // Destination side of a handoff --------------------------------------------------

  private async incomingStep(): Promise<void> {
    const { link, shared, guestId, host, handoff } = this.options;
    const h = this.state.handoff;
    if (!h) {
      // No guest byte yet. Learn who owns the guest, for the handoff-from marker.
      if (this.ownerRecord === null && link.ready) await this.owner();
      await this.waitFor(this.ownerRecord === null ? { timeoutMs: 500 } : {});
      return;
    }
    if (!link.ready) {
      await link.waitReady(this.stopController.signal);
      return;
    }
    if (!this.requestRegistered || this.reconciledGeneration !== link.generation) {
      this.reconciledGeneration = link.generation;
      await this.registerRequest();
      return;
    }
    if (this.forceRequested) {
      this.forceRequested = false;
      await this.force('operator');
      return;
    }
    const st = await this.owner();
    if (st.host === host && st.epoch > this.state.epoch) {
      await this.adopt(st.epoch, st.next ?? st.streamEnd, false); // our claim, from before a restart
      return;
    }
    if (st.epoch === 0) {
      const claim = await shared.claim(guestId, { host, expectedEpoch: 'any' });
      await this.adopt(claim.epoch, claim.next, false);
      return;
    }
    if (st.handoff === 'sealed' && (st.target === null || st.target === host)) {
      try {
        const claim = await shared.claim(guestId, { host, expectedEpoch: st.epoch, requireSealed: true });
        this.counters.handoffsCompleted++;
        await this.adopt(claim.epoch, claim.next, false);
      } catch (err) {
        if (!(err instanceof ConsoledError) || (err.code !== 'FENCED' && err.code !== 'HANDOFF_STATE'))
          throw err;
      }
      return;
    }
    if (st.handoff === 'none') {
      this.requestRegistered = false; // our request is gone (Redis lost it): ask again
      return;
    }
    const waited = Date.now() - h.requestedAtMs;
    if (!h.aborted && waited >= handoff.completionTimeoutMs) {
      if (handoff.timeoutAction === 'force_complete') {
        await this.force('timeout');
        return;
      }
      this.counters.handoffsAborted++;
      this.logger.warn(
        { waitedMs: waited, source: st.host },
        'no seal in time; handoff aborted, spooling locally until the source seals or an operator forces it',
      );
      this.setPhase('aborted');
      await this.updateState({ handoff: { ...h, aborted: true } }, true);
      return;
    }
    const timeoutMs = h.aborted
      ? Math.max(ABORTED_POLL_MS, handoff.sealPollIntervalMs)
      : Math.max(1, Math.min(handoff.sealPollIntervalMs, handoff.completionTimeoutMs - waited));
    await this.waitFor({ timeoutMs });
  }

  private async registerRequest(): Promise<void> {
    const { shared, guestId, host, notify } = this.options;
    try {
      const reply = await shared.requestHandoff(guestId, host, 'any');
      this.requestRegistered = true;
      const h = this.state.handoff!;
      await this.updateState({ handoff: { ...h, sourceHost: reply.host, sourceEpoch: reply.epoch } }, false);
      notify(reply.host, { guest: guestId, event: 'requested', from: host });
    } catch (err) {
      if (!(err instanceof ConsoledError) || err.code !== 'HANDOFF_STATE') throw err;
      const details = err.details ?? {};
      if (details['handoff'] === 'unowned') {
        // Nobody owns the guest (the source never replicated it): nothing to wait for.
        const claim = await shared.claim(guestId, { host, expectedEpoch: 'any' });
        await this.adopt(claim.epoch, claim.next, false);
        return;
      }
      if (details['target'] === host || details['handoff'] === 'none') {
        this.requestRegistered = true; // already asked, or already ours: the next step sees which
        return;
      }
      this.logger.warn(
        { handoff: details['handoff'], target: details['target'] },
        'another handoff of this guest is under way; waiting',
      );
      await this.waitFor({ timeoutMs: this.options.handoff.sealPollIntervalMs * 5 });
    }
  }

  private async force(reason: 'timeout' | 'operator'): Promise<void> {
    const { shared, guestId, host } = this.options;
    const seen = this.ownerRecord?.epoch;
    const claim = await shared.claim(guestId, { host, expectedEpoch: seen && seen > 0 ? seen : 'any' });
    const sealed = claim.previousHandoff === 'sealed';
    if (sealed) this.counters.handoffsCompleted++;
    else this.counters.handoffsForced++;
    this.logger.warn(
      {
        reason,
        previousHost: claim.previousHost,
        previousEpoch: claim.previousEpoch,
        epoch: claim.epoch,
        next: claim.next,
      },
      sealed ? 'handoff completed on the seal' : 'handoff forced: the source is fenced out',
    );
    await this.adopt(claim.epoch, claim.next, !sealed);
  }

  /** This host owns the stream now: renumber the spool to continue it, then publish. */
  private async adopt(epoch: number, next: number | null, forced: boolean): Promise<void> {
    const from = this.state.spoolStart ?? this.options.log.oldest;
    await this.updateState({ role: 'adopting', epoch, adopt: { from, to: next, forced } }, true);
  }

  private async finishAdoption(): Promise<void> {
    const { log, control } = this.options;
    const adopt = this.state.adopt;
    if (!adopt) {
      await this.updateState({ role: 'owner' }, true);
      return;
    }
    const { from, to, forced } = adopt;
    if (to !== null && to !== from) {
      const last = log.lastRenumber;
      if (!(last && last.from === from && last.to === to)) {
        if (log.oldest < from) {
          this.lastErrorValue = `the local log holds bytes before offset ${from} that the stream does not continue; move ${log.options.dir} aside and attach again`;
          this.logger.error({ oldest: log.oldest, spoolStart: from }, this.lastErrorValue);
          this.counters.fenced++;
          await this.updateState({ role: 'fenced', adopt: undefined }, true);
          return;
        }
        await log.renumber(from, to, await this.adoptedBoots(from, to));
        this.logger.info({ from, to }, 'renumbered the local log to continue the stream');
      }
    }
    control.setContinuing(false);
    if (forced && log.state !== 'closed')
      control.writeMarker({ kind: 'gap', bytes: null, reason: 'handoff-timeout' });
    const cursor = to ?? log.oldest;
    this.cursorValue = cursor;
    this.sent = cursor;
    this.reconciledGeneration = -1;
    if (this.triggeredAt !== null) {
      this.lastTriggerToOwnerMs = performance.now() - this.triggeredAt;
      this.triggeredAt = null;
    }
    if (this.phaseValue !== 'none') this.setPhase(forced ? 'forced' : 'completed');
    await this.updateState(
      {
        role: 'owner',
        cursor,
        adopt: undefined,
        handoff: undefined,
        spoolStart: undefined,
        sealedAt: undefined,
      },
      true,
    );
    this.logger.info(
      { epoch: this.state.epoch, offset: cursor, forced },
      "owns the guest's stream; publishing",
    );
  }

  /** The boot records after renumbering: the stream's current boot, then the spool's boots after it. */
  private async adoptedBoots(from: number, to: number): Promise<BootStart[]> {
    const delta = to - from;
    const spoolBoots = this.options.log.boots.filter((b) => b.offset >= from);
    const st = await this.owner();
    const current = st.boot;
    if (current === null) return spoolBoots.map((b) => ({ ...b, offset: b.offset + delta }));
    let start = to;
    try {
      start = (await this.options.shared.bootRange(this.options.guestId, current)).start;
    } catch {
      // not recorded (trimmed): it started before what the stream keeps
    }
    return [
      { boot: current, offset: Math.min(start, to), atMs: 0 },
      ...spoolBoots.map((b, i) => ({ boot: current + 1 + i, offset: b.offset + delta, atMs: b.atMs })),
    ];
  }

  // Helpers ------------------------------------------------------------------

  private setPhase(phase: HandoffPhase): void {
    if (this.phaseValue === phase) return;
    this.phaseValue = phase;
    this.emit('change');
  }

  /** Merges `patch` (an `undefined` field is removed) and saves, now or soon. */
  private async updateState(patch: StatePatch, now: boolean): Promise<void> {
    const roleChanged = patch.role !== undefined && patch.role !== this.state.role;
    const next = { ...this.state, ...patch } as Record<string, unknown>;
    for (const [k, v] of Object.entries(patch)) if (v === undefined) delete next[k];
    this.state = next as unknown as ReplicationState;
    if (roleChanged) {
      this.logger.info({ role: this.state.role }, `replication role -> ${this.state.role}`);
      this.emit('change');
    }
    if (now) await this.saveNow();
    else this.scheduleSave();
  }

  private scheduleSave(): void {
    if (this.saveTimer) return;
    this.saveTimer = setTimeout(() => {
      this.saveTimer = null;
      void this.saveNow();
    }, this.options.stateSaveIntervalMs);
    this.saveTimer.unref();
  }

  private async saveNow(): Promise<void> {
    try {
      await this.options.stateFile.save({ ...this.state, cursor: this.cursorValue });
    } catch (err) {
      this.logger.warn({ err: describe(err) }, 'saving the replication state failed');
    }
  }

  private noteError(err: unknown): void {
    const text = describe(err);
    if (this.errorDelayMs === 0)
      this.logger.warn({ err: text }, 'replication error; reconciling and retrying');
    this.lastErrorValue = text;
    this.errorDelayMs = this.errorDelayMs === 0 ? 20 : Math.min(MAX_ERROR_DELAY_MS, this.errorDelayMs * 2);
    this.errorDelayMs = Math.round(this.errorDelayMs / 2 + (Math.random() * this.errorDelayMs) / 2);
  }

  private recovered(): void {
    this.logger.info('replication recovered');
    this.errorDelayMs = 0;
    this.lastErrorValue = null;
  }

  private wake(): void {
    this.woken = true;
    for (const w of [...this.wakers]) w();
  }

  /**
   * Waits for any of: the byte at `dataAfter` flushed, the clock's next tick (which
   * makes everything flushed by then due), `timeoutMs`, the oldest append's reply, a
   * wake, a stop. Built on the log's `flushed` event and plain promises: thousands of
   * replicators wait like this many times a second.
   */
  private async waitFor(w: {
    dataAfter?: number | undefined;
    tick?: boolean;
    timeoutMs?: number;
    inflight?: boolean;
  }): Promise<void> {
    if (this.stopped) return;
    if (this.woken) {
      this.woken = false;
      return;
    }
    const log = this.options.log;
    if (w.dataAfter !== undefined && (log.flushedEnd > w.dataAfter || log.state === 'closed')) return;
    let timer: NodeJS.Timeout | undefined;
    let resolve!: () => void;
    const woken = new Promise<void>((r) => {
      resolve = r;
    });
    this.wakers.add(resolve);
    this.dataWaitAt = w.dataAfter ?? null;
    if (w.timeoutMs !== undefined) timer = setTimeout(resolve, w.timeoutMs);
    if (w.tick) {
      void this.options.clock.next().then(() => {
        this.dueUntil = Math.max(this.dueUntil, this.options.log.flushedEnd);
        resolve();
      });
    }
    if (w.inflight && this.inflight[0]) void this.inflight[0].done.then(resolve);
    try {
      await woken;
    } finally {
      clearTimeout(timer);
      this.wakers.delete(resolve);
      this.dataWaitAt = null;
      this.woken = false;
    }
  }
}

function jitter(ms: number): number {
  return Math.round(ms / 2 + Math.random() * (ms / 2));
}

function describe(err: unknown): string {
  if (err instanceof ConsoledError) return `${err.code}: ${err.message}`;
  return err instanceof Error ? err.message : String(err);
}
