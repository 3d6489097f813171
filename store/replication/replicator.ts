/**
 * One guest's replication (docs/design.md "Replication" and "Ownership"): tails the
 * local log and appends it to the shared stream in segments, exactly once and in
 * order, under a fencing epoch; and runs this host's side of a migration handoff and
 * of a release.
 *
 * Its role changes only through the ownership state machine (ownership.ts): after
 * every start and reconnect it is `unverified` until the owner record confirms it,
 * and what the record means is decided by `verdict`, never here. The local log is
 * the source of truth and the backlog: only bytes already in the files are sent (a
 * SIGKILL cannot leave the stream ahead of the log), and at most `maxInFlight`
 * segments are in memory, however long Redis is away.
 */
import { EventEmitter } from 'node:events';
import { rm } from 'node:fs/promises';
import type { Logger } from 'pino';
import { Backoff, jitter } from '../../common/backoff.js';
import { ConsoledError } from '../../common/errors.js';
import type { MarkerEvent } from '../../common/marker.js';
import type { LocalLog } from '../local-log.js';
import type { BootStart } from '../log-view.js';
import type { MarkerRecord } from '../marker-index.js';
import { LagTracker } from './lag-tracker.js';
import {
  allows,
  type Knowledge,
  learn,
  OWNING_ROLES,
  type OwnershipEvent,
  type OwnershipRole,
  transition,
  verdict,
  WRITING_ROLES,
} from './ownership.js';
import { RecentBytes } from './recent-bytes.js';
import type { AppendReply, RedisClient } from './redis-commands.js';
import { skipsKey } from './redis-keys.js';
import {
  type IncomingHandoff,
  type ReplicationState,
  type ReplicationStateFile,
  standingOf,
} from './replication-state.js';
import type { SegmentClock } from './segment-clock.js';
import type { OwnerRecord, SharedLog } from './shared-log.js';

/** What the replicators need to know of the Redis connection (the sidecar owns the client). */
export interface RedisLink {
  readonly ready: boolean;
  /** Grows on every (re)connect: a replicator verifies its role again when it changes. */
  readonly generation: number;
  /** Resolves once ready, or when `signal` aborts. */
  waitReady(signal: AbortSignal): Promise<void>;
}

/** The guest-side actions replication needs (the sidecar implements them for a Guest). */
export interface GuestControl {
  /** Resolves once the chardev sent nothing for `quietMs`, or after `timeoutMs` in all. */
  drainSource(quietMs: number, timeoutMs: number): Promise<void>;
  /** Appends a marker to the local log and returns the offset after it. */
  writeMarker(event: MarkerEvent): number;
  /** Stops reading the chardev for good: the guest runs on another host now, or is gone. */
  stopSource(): Promise<void>;
  /** While true, the guest continues a log another host keeps: opening the chardev starts no boot. */
  setContinuing(value: boolean): void;
  /** Calls `listener` with every chunk appended to the log, at its offset; returns the unsubscribe. */
  onOutput(listener: (offset: number, bytes: Buffer) => void): () => void;
  /** Further output is held in memory (the spool's last copy, see `replaySpool`). */
  holdInMemory(): void;
  /** Appends what memory held to the log; output is numbered again. */
  endHold(): void;
  /**
   * Appends bytes to the log itself, even while output is held; `markers` (offsets
   * relative to `bytes`) go to the log's marker index.
   */
  appendToLog(bytes: Buffer, markers?: readonly MarkerRecord[]): void;
  /** A marker into the log itself, even while output is held; returns the offset after it. */
  writeLogMarker(event: MarkerEvent): number;
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
  /**
   * Incoming or adopting: the log holding what the guest printed before this host
   * owned the stream (`<guest dir>/spool/`), copied into `log` once the seam is known.
   */
  readonly spool: LocalLog | null;
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
  role: OwnershipRole;
  host: string;
  epoch: number;
  /** The owner and epoch as last seen in Redis (null before the first look, or when nobody owns it). */
  owner: string | null;
  ownerEpoch: number | null;
  /** The highest epoch this host has known for the stream, and its holder. */
  knownEpoch: number;
  knownOwner: string | null;
  /** Why this host follows (null unless it is a follower). */
  followReason: string | null;
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
  /** Incoming: bytes held in the spool, not yet numbered or published. */
  spooledBytes: number;
  /** Not writing: bytes this log holds that the stream never got from this host. */
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

/** After an error the loop waits `jitter(20 ms)`, then twice as long each time, up to `jitter(5 s)`. */
const ERROR_BACKOFF = { initialDelayMs: 20, maxDelayMs: 5_000 } as const;
/** One read of the local log feeds this many bytes of segments when there is a backlog. */
const READ_AHEAD_BYTES = 1024 * 1024;
/** One read of the spool while copying it into the log. */
const SPOOL_COPY_BYTES = 256 * 1024;
const ABORTED_POLL_MS = 1_000;
const SKIP_RECORDS_KEPT = 100;

export class Replicator extends EventEmitter<{ change: [] }> {
  private state: ReplicationState;
  private roleValue: OwnershipRole;
  private cursorValue: number;
  private sent: number;
  private readonly inflight: InFlight[] = [];
  private failure: unknown = null;
  private skipAllowedAt: number | null = null;
  /** The link generation this host's role was last confirmed in (-1: not yet). */
  private verifiedGeneration = -1;
  private ownerRecord: OwnerRecord | null = null;
  private followReason: string | null = null;
  private nextPollAtMs = 0;
  /** Source: the destination that asked for the guest. */
  private handoffTarget: string | null = null;
  /** Handing off or releasing: the offset after its marker; nothing after it is sent. */
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
  private readonly errorBackoff = new Backoff(ERROR_BACKOFF);
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
    releases: 0,
  };

  constructor(private readonly options: ReplicatorOptions) {
    super();
    this.state = options.state;
    this.cursorValue = options.state.cursor;
    this.sent = options.state.cursor;
    this.logger = options.logger.child({ component: 'replication' });
    this.recent = new RecentBytes(options.recentBytesMax);
    // A role that may write is confirmed with Redis before anything is appended.
    this.roleValue = OWNING_ROLES.has(options.state.role) ? 'unverified' : options.state.role;
    this.phaseValue =
      options.state.role === 'incoming'
        ? options.state.handoff
          ? options.state.handoff.aborted
            ? 'aborted'
            : 'requested'
          : 'waiting'
        : 'none';
    if (options.state.sealedAt !== undefined) this.limit = options.state.sealedAt;
  }

  get role(): OwnershipRole {
    return this.roleValue;
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

  get known(): Knowledge {
    return this.state.known;
  }

  /** The offset this host stops writing the stream at (sealing or releasing), or null. */
  get sealLimit(): number | null {
    return this.limit;
  }

  /** True while this host writes the guest's stream (a confirmed owner that has not sealed). */
  get writing(): boolean {
    return WRITING_ROLES.has(this.roleValue);
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
      if (this.options.link.ready && this.writing) this.recent.add(offset, bytes);
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
   * stops: a detach or a shutdown (docs/design.md "Shutdown": drain with a deadline).
   */
  async finish(timeoutMs: number): Promise<void> {
    if (this.roleValue === 'owner' && this.limit === null && !this.stopped) {
      this.finishing = true;
      this.wake();
      const deadline = Date.now() + timeoutMs;
      while (
        this.cursorValue < this.options.log.flushedEnd &&
        Date.now() < deadline &&
        this.roleValue === 'owner'
      ) {
        await this.changeOrTimeout(Math.min(50, Math.max(1, deadline - Date.now())));
      }
      const left = this.options.log.flushedEnd - this.cursorValue;
      if (left > 0 && this.roleValue === 'owner') {
        this.logger.warn(
          { unpublishedBytes: left },
          'replication not drained before the deadline; the rest is sent after the next attach',
        );
      }
    }
    await this.stop();
  }

  /**
   * A DELETE of the guest (docs/design.md "Ownership", giving ownership up). The
   * owner stops the chardev, writes its release marker, publishes up to it and
   * releases the stream at that offset, so any host may claim it next; bounded by
   * `releaseTimeoutMs`. With a live handoff to a named destination under way, it
   * finishes that handoff instead, bounded by `handoffTimeoutMs`. An incoming guest
   * cancels its migration. On time-out the stream stays as it is (owned, or sealed
   * for the destination).
   */
  async giveUp(releaseTimeoutMs: number, handoffTimeoutMs: number): Promise<void> {
    const started = Date.now();
    if (this.roleValue === 'incoming') {
      await this.cancelIncoming();
      return;
    }
    if (this.roleValue === 'owner' && this.handoffTarget === null && this.limit === null) {
      await this.options.control.stopSource();
      this.limit = this.options.control.writeMarker({
        kind: 'release',
        host: this.options.host,
        at: new Date(),
      });
      this.setRole('release-requested');
      this.wake();
    }
    if (!WRITING_ROLES.has(this.roleValue) && this.roleValue !== 'sealed') {
      if (OWNING_ROLES.has(this.roleValue) || this.roleValue === 'adopting') {
        this.logger.warn(
          { role: this.roleValue },
          'detached without releasing the stream: this host has not confirmed it owns it',
        );
      }
      return;
    }
    const handingOff = (): boolean =>
      this.roleValue === 'handing-off' || this.roleValue === 'sealed' || this.handoffTarget !== null;
    const deadline = (): number => started + (handingOff() ? handoffTimeoutMs : releaseTimeoutMs);
    while (Date.now() < deadline() && (WRITING_ROLES.has(this.roleValue) || this.roleValue === 'sealed')) {
      await this.changeOrTimeout(Math.min(100, Math.max(1, deadline() - Date.now())));
    }
    if (this.roleValue !== 'released' && this.roleValue !== 'handed-off') {
      this.logger.warn(
        { role: this.roleValue },
        'the release or handoff did not complete before the deadline; the stream stays as it is',
      );
    }
  }

  /** Wakes the loop (a notification arrived: look at the owner record now). */
  poke(): void {
    this.nextPollAtMs = 0;
    this.wake();
  }

  /**
   * Asks Redis, for a status report, whether this host still owns the stream, so
   * that two hosts never both say `owner` (docs/design.md "Ownership"). A host that
   * finds it no longer does becomes `unverified` and reconciles.
   */
  async confirm(timeoutMs: number): Promise<void> {
    if (!WRITING_ROLES.has(this.roleValue) || !this.options.link.ready) return;
    const generation = this.options.link.generation;
    let timer: NodeJS.Timeout | undefined;
    const record = await Promise.race([
      this.options.shared.owner(this.options.guestId).catch(() => null),
      new Promise<null>((resolve) => {
        timer = setTimeout(() => resolve(null), timeoutMs);
      }),
    ]);
    clearTimeout(timer);
    if (!WRITING_ROLES.has(this.roleValue)) return;
    if (record === null) {
      this.doubt('Redis did not answer the status check in time');
      return;
    }
    this.ownerRecord = record;
    if (record.host !== this.options.host || record.epoch !== this.state.epoch) {
      this.doubt(`the stream names ${record.host ?? 'nobody'} at epoch ${record.epoch}`);
    } else if (generation === this.options.link.generation) {
      this.verifiedGeneration = generation;
    }
  }

  /**
   * Destination: the guest runs here now (its first byte, `trigger: 'first-byte'`) or
   * an operator asked (`'api'`, `force` to fence the source without waiting).
   */
  requestOwnership(trigger: 'first-byte' | 'api', force = false): void {
    if (this.roleValue !== 'incoming') {
      if (trigger === 'api' && this.roleValue !== 'adopting') {
        throw new ConsoledError(
          'HANDOFF_STATE',
          `guest ${this.options.guestId} is ${this.roleValue} here, not incoming: attach it with incoming: true first`,
        );
      }
      return;
    }
    if (!this.state.handoff) {
      const owner = this.ownerRecord && this.ownerRecord.host !== this.options.host ? this.ownerRecord : null;
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
    if (force) {
      this.forceRequested = true;
      this.logger.warn({ trigger }, 'audit: an operator forces the handoff; the source will be fenced out');
    }
    this.wake();
  }

  /** Destination: the migration was cancelled (DELETE of the incoming guest). */
  async cancelIncoming(): Promise<void> {
    if (this.roleValue !== 'incoming') return;
    const handoff = this.state.handoff;
    this.counters.handoffsCancelled++;
    this.setPhase('cancelled');
    this.setRole('incoming-cancelled');
    // What the guest printed here stays in this host's log, numbered locally.
    try {
      await this.replaySpool(this.options.log.end);
    } catch (err) {
      this.logger.warn({ err: describe(err) }, 'could not copy the spool into the local log');
    }
    await this.updateState({ role: 'cancelled', handoff: undefined }, true);
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
    const role = this.roleValue;
    const now = Date.now();
    const writing = this.writing;
    const stoppedAt = this.limit ?? this.cursorValue;
    const spool = this.options.spool;
    return {
      role,
      host: this.options.host,
      epoch: this.state.epoch,
      owner: this.ownerRecord?.host ?? null,
      ownerEpoch: this.ownerRecord ? this.ownerRecord.epoch : null,
      knownEpoch: this.state.known.epoch,
      knownOwner: this.state.known.host,
      followReason: role === 'follower' || role === 'fenced' ? this.followReason : null,
      handoff: {
        phase: this.phaseValue,
        target: this.handoffTarget ?? this.ownerRecord?.target ?? null,
        source: this.state.handoff?.sourceHost ?? null,
        requestedAt: this.state.handoff ? new Date(this.state.handoff.requestedAtMs).toISOString() : null,
        sealedAt: this.state.sealedAt ?? null,
        lastTriggerToOwnerMs: this.lastTriggerToOwnerMs,
      },
      cursor: this.cursorValue,
      lagBytes: writing
        ? Math.max(0, Math.min(log.flushedEnd, this.limit ?? Number.POSITIVE_INFINITY) - this.cursorValue)
        : 0,
      lagSeconds: writing ? this.lag.lagSeconds(this.cursorValue, now) : 0,
      spooledBytes:
        (role === 'incoming' || role === 'adopting') && spool && spool.state !== 'closed'
          ? Math.max(0, spool.end - spool.oldest)
          : 0,
      unpublishedBytes:
        role === 'fenced' || role === 'handed-off' || role === 'sealed' || this.limit !== null
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
        switch (this.roleValue) {
          case 'unverified':
          case 'claiming':
            await this.verify();
            break;
          case 'owner':
          case 'handing-off':
          case 'releasing':
            await this.ownerStep();
            break;
          case 'sealed':
            await this.sealedStep();
            break;
          case 'incoming':
            await this.incomingStep();
            break;
          case 'adopting':
            await this.finishAdoption();
            break;
          default:
            await this.followerStep();
        }
        const settled =
          !OWNING_ROLES.has(this.roleValue) || this.verifiedGeneration === this.options.link.generation;
        if (this.errorDelayMs > 0 && this.failure === null && settled) this.recovered();
      } catch (err) {
        if (this.stopped) break;
        await Promise.allSettled(this.inflight.map((e) => e.done));
        this.collectAcks();
        this.failure = null;
        if (OWNING_ROLES.has(this.roleValue) && allows(this.roleValue, 'unconfirmed'))
          this.setRole('unconfirmed');
        this.verifiedGeneration = -1;
        this.noteError(err);
        await this.waitFor({ timeoutMs: this.errorDelayMs });
      }
    }
  }

  /** A role that may write lost its confirmation (reconnect, failed append, failed status check). */
  private doubt(why: string): void {
    this.verifiedGeneration = -1;
    if (allows(this.roleValue, 'unconfirmed') && OWNING_ROLES.has(this.roleValue)) {
      this.logger.info({ why }, 'ownership unconfirmed; verifying with Redis');
      this.setRole('unconfirmed');
    }
    this.wake();
  }

  // Verification: what the owner record means to this host ----------------------

  /**
   * Unverified or claiming: reads the owner record and acts on `verdict` (ownership.ts):
   * confirm, claim (only as the rules allow), or follow.
   */
  private async verify(): Promise<void> {
    const { link, shared, guestId, host } = this.options;
    if (!link.ready) {
      await link.waitReady(this.stopController.signal);
      return;
    }
    const generation = link.generation;
    this.counters.reconciles++;
    await Promise.allSettled(this.inflight.map((e) => e.done));
    this.inflight.length = 0;
    this.failure = null;
    const known = this.state.known;
    const record = await this.owner();
    const v = verdict(host, standingOf(this.state), known, record);
    switch (v.kind) {
      case 'own': {
        if (v.epoch !== this.state.epoch) await this.updateState({ epoch: v.epoch }, true);
        // A claim of an unowned stream whose save a SIGKILL lost: its renumbering is still to do.
        if (this.state.role === 'claiming') await this.renumberForClaim(record.next ?? record.streamEnd);
        await this.confirmed(record, generation);
        return;
      }
      case 'reclaim': {
        // Another host may have claimed the stream while Redis had lost ours, and
        // appended its own bytes at offsets this host's log holds too: continuing
        // there would glue two histories together. The stream keeps the other's.
        const last = await shared.lastEntry(guestId);
        if (last && last.host !== host && last.end > this.options.log.oldest) {
          await this.follow(
            record,
            `the stream holds ${last.host}'s bytes up to offset ${last.end}, where this host's log has its own: it does not reclaim`,
          );
          return;
        }
        const claim = await shared.claim(guestId, {
          host,
          expectedEpoch: v.expectedEpoch,
          knownEpoch: Math.max(known.epoch, this.state.epoch),
        });
        this.counters.reclaims++;
        this.logger.warn(
          { had: this.state.epoch, recordEpoch: record.epoch, epoch: claim.epoch },
          "Redis lost this host's claim; claimed the guest again",
        );
        await this.updateState({ epoch: claim.epoch, known: { epoch: claim.epoch, host } }, true);
        await this.confirmed(await this.owner(), generation);
        return;
      }
      case 'claim': {
        if (this.roleValue === 'unverified') this.setRole('may-claim');
        let claim: Awaited<ReturnType<SharedLog['claim']>>;
        try {
          claim = await shared.claim(guestId, {
            host,
            expectedEpoch: v.expectedEpoch,
            knownEpoch: known.epoch,
            requireUnowned: true,
          });
        } catch (err) {
          if (!(err instanceof ConsoledError) || err.code !== 'FENCED') throw err;
          await this.follow(await this.owner(), 'another host claimed the stream first');
          return;
        }
        this.logger.info(
          { epoch: claim.epoch, next: claim.next, previousEpoch: claim.previousEpoch },
          "claimed the guest's stream: nobody owned it",
        );
        await this.updateState({ epoch: claim.epoch, known: { epoch: claim.epoch, host } }, true);
        await this.renumberForClaim(claim.next);
        await this.confirmed(await this.owner(), generation);
        return;
      }
      case 'handed-off':
        await this.becomeHandedOff(record);
        return;
      case 'fenced':
        await this.lostOwnership(record);
        return;
      case 'released':
        this.learn(record);
        this.setRole('released');
        await this.updateState({ role: 'released' }, true);
        return;
      case 'follow':
        await this.follow(record, v.reason);
        return;
    }
  }

  /** The record confirmed this host as the owner: set the role, then where publishing resumes. */
  private async confirmed(record: OwnerRecord, generation: number): Promise<void> {
    this.learn(record);
    if (record.handoff === 'sealed' && record.host === this.options.host) {
      const at = record.sealedAt ?? record.next ?? this.cursorValue;
      this.limit = at;
      this.setRole(this.roleValue === 'unverified' ? 'sealed' : 'confirmed');
      if (this.state.sealedAt !== at) await this.updateState({ sealedAt: at }, true);
      this.setPhase('sealed');
    } else {
      this.setRole('confirmed');
      if (this.state.sealedAt !== undefined) {
        // Sealed before the restart, and the seal is gone (cancelled, or Redis lost it).
        this.limit = null;
        await this.updateState({ sealedAt: undefined }, true);
      }
      if (record.handoff === 'pending' && record.target && this.limit === null)
        this.handoffTarget = record.target;
    }
    this.resumeAt(record);
    this.verifiedGeneration = generation;
    if (this.state.role !== 'owner' && this.state.role !== 'sealed')
      await this.updateState({ role: this.roleValue === 'sealed' ? 'sealed' : 'owner' }, true);
    this.logger.info({ epoch: this.state.epoch, cursor: this.cursorValue }, "owns the guest's stream");
  }

  /**
   * Where publishing continues, from the stream's `next`: Redis lost the stream (send
   * the local log again), lost its tail (a failover: send again from `next`), or is
   * ahead of the local log.
   */
  private resumeAt(st: OwnerRecord): void {
    const log = this.options.log;
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
    } else {
      if (streamNext > log.end) {
        this.logger.error(
          { streamNext, localEnd: log.end },
          'the stream is ahead of the local log; bytes up to its end are not sent again',
        );
      }
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
    this.nextPollAtMs = Date.now() + jitter(this.options.handoff.pollIntervalMs);
    this.scheduleSave();
  }

  /**
   * An explicit attach claimed an unowned stream that continues at `next`: the local
   * log, captured since the attach, moves so that its first byte is `next`.
   */
  private async renumberForClaim(next: number | null): Promise<void> {
    const log = this.options.log;
    const from = this.state.spoolStart ?? log.oldest;
    if (next !== null && next !== from) {
      const last = log.lastRenumber;
      if (!(last && last.from === from && last.to === next)) {
        await this.updateState({ adopt: { kind: 'renumber', from, to: next } }, true);
        await log.renumber(from, next, await this.adoptedBoots(from, next, log.boots));
        this.logger.info({ from, to: next }, 'renumbered the local log to continue the stream');
      }
    }
    await this.updateState({ role: 'owner', adopt: undefined, spoolStart: undefined }, true);
  }

  private async follow(record: OwnerRecord, reason: string): Promise<void> {
    this.learn(record);
    this.followReason = reason;
    if (this.roleValue !== 'follower') {
      this.logger.warn(
        { owner: record.host, epoch: record.epoch, reason },
        'following: this host does not write the stream',
      );
      this.setRole('follows');
    }
    await this.updateState({ role: 'follower' }, true);
  }

  /** Followers, handed-off, fenced, released: they only watch the owner record. */
  private async followerStep(): Promise<void> {
    const { link } = this.options;
    if (!link.ready) {
      await link.waitReady(this.stopController.signal);
      return;
    }
    if (this.verifiedGeneration !== link.generation || Date.now() >= this.nextPollAtMs) {
      const generation = link.generation;
      const known = this.state.known;
      const record = await this.owner();
      const v = verdict(this.options.host, standingOf(this.state), known, record);
      // Who owns it now is news; an unowned stream keeps the reason this host stopped claiming.
      if (v.kind === 'follow' && (record.host !== null || this.followReason === null))
        this.followReason = v.reason;
      this.learn(record);
      this.verifiedGeneration = generation;
      this.nextPollAtMs = Date.now() + jitter(this.options.handoff.pollIntervalMs);
      this.scheduleSave();
      return;
    }
    await this.waitFor({ timeoutMs: Math.max(1, this.nextPollAtMs - Date.now()) });
  }

  /** Adds what a record says to this host's knowledge (saved soon). */
  private learn(record: OwnerRecord): void {
    const known = learn(this.state.known, record);
    if (known !== this.state.known) this.state = { ...this.state, known };
  }

  // Owner ----------------------------------------------------------------------

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
    if (this.verifiedGeneration !== link.generation) {
      if (this.roleValue === 'owner') {
        this.doubt('reconnected to Redis');
        return;
      }
      await this.recheck(link.generation); // handing off or releasing: keep the limit
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
      if (this.roleValue === 'releasing') await this.release(this.limit);
      else await this.seal(this.limit);
      return;
    }
    await this.pump(log);
  }

  /** Handing off or releasing after a reconnect: still ours? Then resume publishing. */
  private async recheck(generation: number): Promise<void> {
    await Promise.allSettled(this.inflight.map((e) => e.done));
    this.inflight.length = 0;
    this.failure = null;
    const record = await this.owner();
    if (record.host !== this.options.host || record.epoch !== this.state.epoch) {
      await this.lostOwnership(record);
      return;
    }
    this.learn(record);
    this.resumeAt(record);
    this.verifiedGeneration = generation;
  }

  private async pollOwner(): Promise<void> {
    const st = await this.owner();
    this.nextPollAtMs = Date.now() + jitter(this.options.handoff.pollIntervalMs);
    if (st.host !== this.options.host || st.epoch !== this.state.epoch) {
      this.doubt(`the stream names ${st.host ?? 'nobody'} at epoch ${st.epoch}`);
      return;
    }
    if (st.handoff === 'pending' && st.target) this.handoffTarget = st.target;
  }

  /** Another host holds the stream: handed off if this host had sealed, else fenced. */
  private async lostOwnership(st: OwnerRecord): Promise<void> {
    const { log, control } = this.options;
    this.learn(st);
    if (this.state.sealedAt !== undefined || (this.limit !== null && this.roleValue !== 'releasing')) {
      await this.becomeHandedOff(st);
      return;
    }
    this.counters.fenced++;
    const unpublished = Math.max(0, log.end - this.cursorValue);
    this.logger.error(
      { owner: st.host, epoch: st.epoch, ourEpoch: this.state.epoch, unpublishedBytes: unpublished },
      'fenced out: another host owns the guest; its bytes stay in the local log',
    );
    if (log.state !== 'closed' && unpublished > 0)
      control.writeMarker({ kind: 'gap', bytes: unpublished, reason: 'fenced' });
    if (this.handoffTarget !== null) this.setPhase('forced');
    this.followReason = `fenced out by ${st.host ?? 'nobody'} at epoch ${st.epoch}`;
    this.setRole('fenced');
    this.limit = null;
    await this.updateState({ role: 'fenced', sealedAt: undefined }, true);
  }

  /** Releasing: everything up to the release marker is in the stream; give it up there. */
  private async release(at: number): Promise<void> {
    const { shared, guestId, host } = this.options;
    try {
      await shared.release(guestId, this.state.epoch, host, at);
    } catch (err) {
      if (err instanceof ConsoledError && err.code === 'HANDOFF_STATE') {
        // A destination asked meanwhile: hand the guest to it at the same offset.
        const record = await this.owner();
        if (record.handoff === 'pending' && record.target) {
          this.handoffTarget = record.target;
          this.logger.info(
            { target: record.target },
            'a handoff was asked during the release; sealing for it',
          );
          await this.seal(at);
          return;
        }
      }
      if (err instanceof ConsoledError && err.code === 'FENCED') {
        await this.lostOwnership(await this.owner());
        return;
      }
      throw err;
    }
    this.counters.releases++;
    this.logger.info(
      { releasedAt: at, epoch: this.state.epoch },
      'released the stream: any host may claim it',
    );
    this.setRole('released');
    this.limit = null;
    await this.updateState({ role: 'released', known: { epoch: this.state.epoch, host: null } }, true);
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
        { allowSkip, markers: log.markersIn(start, end) },
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

  // Source side of a handoff ----------------------------------------------------

  private async beginSourceHandoff(target: string): Promise<void> {
    const { control, handoff, guestId, host } = this.options;
    this.setPhase('draining');
    this.setRole('handoff-requested');
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
      if (st.host !== host || st.epoch !== this.state.epoch) {
        await this.lostOwnership(st);
        return;
      }
      this.setRole('handoff-withdrawn');
      return;
    }
    this.limit = control.writeMarker({ kind: 'handoff-to', host: target, at: new Date() });
    this.emit('change');
  }

  private async seal(at: number): Promise<void> {
    const { shared, guestId, host, notify } = this.options;
    const st = await this.owner();
    if (
      this.roleValue === 'handing-off' &&
      st.host === host &&
      st.epoch === this.state.epoch &&
      st.handoff === 'none'
    ) {
      // Cancelled while we drained: the marker stays, publishing goes on.
      this.logger.info('the handoff was cancelled before the seal; staying the owner');
      this.limit = null;
      this.handoffTarget = null;
      this.counters.handoffsCancelled++;
      this.setPhase('cancelled');
      this.setRole('handoff-withdrawn');
      return;
    }
    const reply = await shared.seal(guestId, this.state.epoch, host, at);
    const target = reply.target ?? this.handoffTarget;
    this.logger.info({ sealedAt: at, target }, 'sealed the stream for the handoff');
    this.setPhase('sealed');
    this.setRole('sealed');
    await this.updateState({ role: 'sealed', sealedAt: at }, true);
    if (target) notify(target, { guest: guestId, event: 'sealed', from: host });
  }

  /** Sealed: wait for the destination's claim (then stop), or a cancel (then go on). */
  private async sealedStep(): Promise<void> {
    const { host, link } = this.options;
    if (!link.ready) {
      await link.waitReady(this.stopController.signal);
      return;
    }
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
      this.setRole('seal-cancelled');
      await this.updateState({ role: 'owner', sealedAt: undefined }, true);
      this.verifiedGeneration = -1;
      return;
    }
    await this.waitFor({ timeoutMs: this.options.handoff.sealPollIntervalMs });
  }

  private async becomeHandedOff(st: OwnerRecord): Promise<void> {
    this.learn(st);
    const unpublished = Math.max(0, this.options.log.end - (this.limit ?? this.cursorValue));
    this.counters.handoffsCompleted++;
    this.logger.info(
      { owner: st.host, epoch: st.epoch, unpublishedBytes: unpublished },
      'handed the guest off; stopping its chardev',
    );
    this.setPhase('completed');
    this.setRole('handed-off');
    await this.updateState({ role: 'handed-off' }, true);
    await this.options.control.stopSource();
  }

  // Destination side of a handoff --------------------------------------------------

  private async incomingStep(): Promise<void> {
    const { link, shared, guestId, host, handoff } = this.options;
    const h = this.state.handoff;
    if (!h) {
      // No guest byte yet. Learn who owns the guest, for the handoff-from marker.
      if (this.ownerRecord === null && link.ready) {
        this.learn(await this.owner());
      }
      await this.waitFor(this.ownerRecord === null ? { timeoutMs: 500 } : {});
      return;
    }
    if (!link.ready) {
      await link.waitReady(this.stopController.signal);
      return;
    }
    if (!this.requestRegistered || this.verifiedGeneration !== link.generation) {
      this.verifiedGeneration = link.generation;
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
      // Our claim, made before a SIGKILL lost its save: whether it was forced is in the record.
      const forced = st.prevHost !== null && st.prevHost !== host && st.prevHandoff !== 'sealed';
      await this.adopt(st.epoch, st.next ?? st.streamEnd, forced, st.prevHost);
      return;
    }
    if (st.host === null) {
      if (this.mayClaimUnowned(st, h)) await this.claimUnowned(st);
      else await this.waitFor({ timeoutMs: handoff.sealPollIntervalMs });
      return;
    }
    if (st.handoff === 'sealed' && (st.target === null || st.target === host)) {
      try {
        const claim = await shared.claim(guestId, {
          host,
          expectedEpoch: st.epoch,
          requireSealed: true,
          knownEpoch: Math.max(st.epoch, this.state.known.epoch),
        });
        this.counters.handoffsCompleted++;
        await this.adopt(claim.epoch, claim.next, false, claim.previousHost);
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

  /**
   * A released stream is taken at once. A record with no owner at all may be a Redis
   * that lost the source's claim, which the source is about to restore: the
   * destination waits the completion timeout for an owner to show up before it takes it.
   */
  private mayClaimUnowned(st: OwnerRecord, h: IncomingHandoff): boolean {
    if (st.handoff === 'released' || st.epoch > 0) return true;
    return Date.now() - h.requestedAtMs >= this.options.handoff.completionTimeoutMs;
  }

  /** Nobody owns the stream (the source released it, or never replicated): take it as it stands. */
  private async claimUnowned(st: OwnerRecord): Promise<void> {
    const { shared, guestId, host } = this.options;
    try {
      const claim = await shared.claim(guestId, {
        host,
        expectedEpoch: st.epoch,
        knownEpoch: Math.max(st.epoch, this.state.known.epoch),
        requireUnowned: true,
      });
      await this.adopt(claim.epoch, claim.next, false, claim.previousHost ?? this.state.known.host);
    } catch (err) {
      if (!(err instanceof ConsoledError) || err.code !== 'FENCED') throw err;
      this.requestRegistered = false; // somebody owns it now: ask them
    }
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
        const st = await this.owner();
        if (this.mayClaimUnowned(st, this.state.handoff!)) await this.claimUnowned(st);
        else this.requestRegistered = true; // the next steps wait for an owner to show up
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
    const seen = this.ownerRecord?.epoch ?? 0;
    const claim = await shared.claim(guestId, {
      host,
      expectedEpoch: seen > 0 ? seen : 'any',
      knownEpoch: Math.max(seen, this.state.known.epoch),
    });
    const sealed = claim.previousHandoff === 'sealed' || claim.previousHost === null;
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
    await this.adopt(claim.epoch, claim.next, !sealed, claim.previousHost);
  }

  /** This host owns the stream now: the spool is numbered after the seam's markers, then published. */
  private async adopt(
    epoch: number,
    next: number | null,
    forced: boolean,
    source: string | null,
  ): Promise<void> {
    this.setRole('incoming-claimed');
    await this.updateState(
      {
        role: 'adopting',
        epoch,
        known: { epoch, host: this.options.host },
        adopt: { kind: 'spool', next, forced, source },
      },
      true,
    );
  }

  /**
   * Adopting: the local log is empty (an incoming guest's log starts empty); it moves
   * to the stream's `next`, gets the seam's markers (a gap marker first when the
   * handoff was forced: the hole is here, before anything this host captured), and
   * then what the spool holds. The local log equals the stream from the seam on.
   */
  private async finishAdoption(): Promise<void> {
    const { log } = this.options;
    const adopt = this.state.adopt;
    if (adopt?.kind !== 'spool') {
      await this.becomeOwnerAfterAdoption(log.oldest, false);
      return;
    }
    let spoolFrom = adopt.spoolFrom;
    if (spoolFrom === undefined) {
      const next = adopt.next ?? log.end;
      if (log.end !== next && log.end === log.oldest) {
        const last = log.lastRenumber;
        if (!(last && last.to === next))
          await log.renumber(log.end, next, await this.adoptedBoots(log.end, next, []));
      }
      if (log.end === next) {
        if (adopt.forced)
          this.options.control.writeLogMarker({ kind: 'gap', bytes: null, reason: 'handoff-timeout' });
        this.options.control.writeLogMarker({
          kind: 'handoff-from',
          host: adopt.source ?? 'unknown',
          at: new Date(),
        });
        await log.flush();
      } else if (log.end < next) {
        this.lastErrorValue = `the local log ends at ${log.end}, before the stream's ${next}; move ${log.options.dir} aside and attach again`;
        this.logger.error(this.lastErrorValue);
        this.counters.fenced++;
        this.setRole('adopt-refused');
        await this.updateState({ role: 'fenced', adopt: undefined }, true);
        return;
      }
      spoolFrom = log.end;
      await this.updateState({ adopt: { ...adopt, spoolFrom } }, true);
    }
    await this.replaySpool(spoolFrom);
    await this.becomeOwnerAfterAdoption(adopt.next ?? log.oldest, adopt.forced);
  }

  /**
   * Copies what the spool holds into the log after `spoolFrom` (the log's offsets
   * `spoolFrom + i` are the spool's `i`), then numbers output directly again. The last
   * stretch is copied while new output waits in memory, so the copy ends. A copy cut
   * short by a SIGKILL resumes where the log ends.
   */
  private async replaySpool(spoolFrom: number): Promise<void> {
    const { log, control } = this.options;
    const spool = this.options.spool;
    if (!spool || spool.state === 'closed') {
      control.endHold();
      return;
    }
    control.holdInMemory();
    try {
      await spool.flush();
      let base = spoolFrom;
      for (;;) {
        const copied = log.end - base;
        if (copied < spool.oldest) {
          // The spool rotated away its oldest bytes while it waited: a counted hole, marked here.
          control.writeLogMarker({ kind: 'gap', bytes: spool.oldest - copied, reason: 'spool-overflow' });
          base = log.end - spool.oldest;
          await log.flush();
          await this.updateState(
            {
              adopt:
                this.state.adopt?.kind === 'spool' ? { ...this.state.adopt, spoolFrom: base } : undefined,
            },
            true,
          );
          continue;
        }
        if (copied >= spool.flushedEnd) break;
        const want = Math.min(spool.flushedEnd, copied + SPOOL_COPY_BYTES);
        if (!log.canAccept(want - copied)) {
          await log.flush();
          continue;
        }
        const bytes = await spool.read(copied, want);
        if (log.end - base !== copied) continue; // cannot happen: only this loop appends now
        const markers = spool.markersIn(copied, want).map((m) => ({ ...m, offset: m.offset - copied }));
        control.appendToLog(bytes, markers);
      }
    } finally {
      control.endHold();
    }
    const spoolDir = spool.options.dir;
    await spool.close();
    await rm(spoolDir, { recursive: true, force: true });
    this.logger.info({ bytes: log.end - spoolFrom }, 'copied the spool into the log');
  }

  private async becomeOwnerAfterAdoption(cursor: number, forced: boolean): Promise<void> {
    this.options.control.setContinuing(false);
    this.cursorValue = cursor;
    this.sent = cursor;
    this.verifiedGeneration = -1;
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
    // Owner, and confirmed by its own claim; the next reconnect verifies again.
    this.setRole('adopted');
    this.verifiedGeneration = this.options.link.generation;
    this.resumeAt(await this.owner());
    this.logger.info(
      { epoch: this.state.epoch, offset: cursor, forced },
      "owns the guest's stream; publishing",
    );
  }

  /** The boot records after renumbering: the stream's current boot, then the local boots after it. */
  private async adoptedBoots(
    from: number,
    to: number,
    localBoots: readonly BootStart[],
  ): Promise<BootStart[]> {
    const delta = to - from;
    const spoolBoots = localBoots.filter((b) => b.offset >= from);
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

  private async owner(): Promise<OwnerRecord> {
    const record = await this.options.shared.owner(this.options.guestId);
    this.ownerRecord = record;
    return record;
  }

  /** Applies `event` to the role (ownership.ts) and logs `old -> new`. */
  private setRole(event: OwnershipEvent): void {
    const next = transition(this.roleValue, event);
    if (next === this.roleValue) return;
    this.logger.info({ role: next, was: this.roleValue, event }, `replication role -> ${next}`);
    this.roleValue = next;
    this.emit('change');
  }

  private setPhase(phase: HandoffPhase): void {
    if (this.phaseValue === phase) return;
    this.phaseValue = phase;
    this.emit('change');
  }

  /** Merges `patch` (an `undefined` field is removed) and saves, now or soon. */
  private async updateState(patch: StatePatch, now: boolean): Promise<void> {
    const next = { ...this.state, ...patch } as Record<string, unknown>;
    for (const [k, v] of Object.entries(patch)) if (v === undefined) delete next[k];
    this.state = next as unknown as ReplicationState;
    if (now) await this.saveNow();
    else this.scheduleSave();
  }

  private changeOrTimeout(ms: number): Promise<void> {
    return new Promise<void>((resolve) => {
      const done = (): void => {
        clearTimeout(timer);
        this.off('change', done);
        resolve();
      };
      const timer = setTimeout(done, ms);
      this.once('change', done);
    });
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
    this.errorDelayMs = this.errorBackoff.next();
  }

  private recovered(): void {
    this.logger.info('replication recovered');
    this.errorDelayMs = 0;
    this.errorBackoff.reset();
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

function describe(err: unknown): string {
  if (err instanceof ConsoledError) return `${err.code}: ${err.message}`;
  return err instanceof Error ? err.message : String(err);
}
