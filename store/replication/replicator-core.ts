/**
 * What every part of a guest's replicator shares (docs/design.md "Ownership"): the
 * saved state and the ownership role (changed only through `setRole`, ownership.ts's
 * transition table), the handoff phase, the owner record last read, the loop's
 * waiting and waking, saving the state, and the error backoff. The parts
 * (segment-publisher.ts, source-handoff.ts, destination-handoff.ts,
 * ownership-verifier.ts) and the facade (replicator.ts) hold one of these each.
 */
import { EventEmitter } from 'node:events';
import type { Logger } from 'pino';
import { Backoff } from '../../common/backoff.js';
import { ConsoledError } from '../../common/errors.js';
import { LagTracker } from './lag-tracker.js';
import {
  allows,
  learn,
  OWNING_ROLES,
  type OwnershipEvent,
  type OwnershipRole,
  transition,
  WRITING_ROLES,
} from './ownership.js';
import type { ReplicationState } from './replication-state.js';
import type { HandoffPhase, ReplicatorOptions } from './replicator-types.js';
import type { OwnerRecord } from './shared-log.js';

type StatePatch = {
  [K in keyof Omit<ReplicationState, 'version' | 'host'>]?: ReplicationState[K] | undefined;
};

/** After an error the loop waits `jitter(20 ms)`, then twice as long each time, up to `jitter(5 s)`. */
const ERROR_BACKOFF = { initialDelayMs: 20, maxDelayMs: 5_000 } as const;

export class ReplicatorCore extends EventEmitter<{ change: [] }> {
  state: ReplicationState;
  roleValue: OwnershipRole;
  phaseValue: HandoffPhase;
  /** The stream holds this log's bytes before this offset (acknowledged appends). */
  cursorValue: number;
  /** The link generation this host's role was last confirmed in (-1: not yet). */
  verifiedGeneration = -1;
  ownerRecord: OwnerRecord | null = null;
  followReason: string | null = null;
  nextPollAtMs = 0;
  /** Source: the destination that asked for the guest. */
  handoffTarget: string | null = null;
  /** Handing off or releasing: the offset after its marker; nothing after it is sent. */
  limit: number | null = null;
  /** A detach or shutdown is publishing what is left. */
  finishing = false;
  stopped = false;
  readonly stopController = new AbortController();
  lastErrorValue: string | null = null;
  errorDelayMs = 0;
  readonly lag = new LagTracker();
  readonly logger: Logger;
  private readonly errorBackoff = new Backoff(ERROR_BACKOFF);
  private readonly wakers = new Set<() => void>();
  private woken = false;
  private saveTimer: NodeJS.Timeout | null = null;
  /** Offset whose flush wakes the loop (it waits for more data), or null. */
  private dataWaitAt: number | null = null;
  /** Offset whose flush wakes the loop at the clock's next tick, or null. */
  private tickWaitAt: number | null = null;
  /** The waiting loop's wake-up for a tick, or null. */
  private tickWaiter: (() => void) | null = null;
  private tickArmed = false;
  /** Bytes before this offset waited a whole tick of the clock: send them now. */
  dueUntil = 0;
  /** One timer for the loop's deadline (the owner poll): waits reuse it. */
  private deadlineTimer: NodeJS.Timeout | null = null;
  private deadlineAtMs = Number.POSITIVE_INFINITY;
  private deadlineWaiter: { atMs: number; resolve: () => void } | null = null;

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

  /** The local log flushed up to `end`: lag bookkeeping, and a loop waiting for data wakes. */
  readonly onFlushed = (end: number): void => {
    this.lag.flushed(end, Date.now());
    if (this.dataWaitAt !== null && end > this.dataWaitAt) this.wake();
    else if (this.tickWaitAt !== null && end > this.tickWaitAt) this.armTick();
  };

  /** At the clock's next tick, the bytes flushed by then are due, and a loop waiting for it wakes. */
  private armTick(): void {
    if (this.tickArmed) return;
    this.tickArmed = true;
    this.options.clock.onTick(this.onTick);
  }

  private readonly onTick = (): void => {
    this.tickArmed = false;
    this.dueUntil = Math.max(this.dueUntil, this.options.log.flushedEnd);
    this.tickWaiter?.();
  };

  /** Wakes the waiting loop at `atMs` if it is still waiting for that deadline; one timer serves every wait. */
  private armDeadline(atMs: number): void {
    if (this.deadlineTimer && this.deadlineAtMs <= atMs) return;
    if (this.deadlineTimer) clearTimeout(this.deadlineTimer);
    this.deadlineAtMs = atMs;
    this.deadlineTimer = setTimeout(this.onDeadline, Math.max(1, atMs - Date.now()));
    this.deadlineTimer.unref();
  }

  private readonly onDeadline = (): void => {
    this.deadlineTimer = null;
    this.deadlineAtMs = Number.POSITIVE_INFINITY;
    const waiter = this.deadlineWaiter;
    if (!waiter) return;
    if (waiter.atMs <= Date.now()) waiter.resolve();
    else this.armDeadline(waiter.atMs);
  };

  constructor(readonly options: ReplicatorOptions) {
    super();
    this.state = options.state;
    this.cursorValue = options.state.cursor;
    this.logger = options.logger.child({ component: 'replication' });
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

  /** True while this host writes the guest's stream (a confirmed owner that has not sealed). */
  get writing(): boolean {
    return WRITING_ROLES.has(this.roleValue);
  }

  /**
   * Waits for any of: the byte at `dataAfter` flushed, `timeoutMs`, one of `also`
   * settling, a wake, a stop. Built on the log's `flushed` event and plain promises:
   * thousands of replicators wait like this many times a second.
   */
  async waitFor(w: {
    dataAfter?: number | undefined;
    /** Wake at the clock's next tick. */
    tick?: boolean;
    /** Wake at the clock's next tick after the byte at this offset is flushed. */
    tickAfter?: number | undefined;
    timeoutMs?: number;
    /** Wake at this time (ms since the epoch): one timer, kept across waits. */
    untilMs?: number | undefined;
    also?: ReadonlyArray<Promise<unknown>>;
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
    if (w.tick || w.tickAfter !== undefined) {
      this.tickWaiter = resolve;
      if (w.tick) this.armTick();
      else if (w.tickAfter !== undefined && log.flushedEnd > w.tickAfter) this.armTick();
      else this.tickWaitAt = w.tickAfter ?? null;
    }
    if (w.untilMs !== undefined) {
      this.deadlineWaiter = { atMs: w.untilMs, resolve };
      this.armDeadline(w.untilMs);
    }
    if (w.timeoutMs !== undefined) timer = setTimeout(resolve, w.timeoutMs);
    for (const p of w.also ?? []) void p.then(resolve, resolve);
    try {
      await woken;
    } finally {
      clearTimeout(timer);
      this.wakers.delete(resolve);
      this.dataWaitAt = null;
      this.tickWaitAt = null;
      this.tickWaiter = null;
      this.deadlineWaiter = null;
      this.woken = false;
    }
  }

  /** Applies `event` to the role (ownership.ts) and logs `old -> new`. */
  setRole(event: OwnershipEvent): void {
    const next = transition(this.roleValue, event);
    if (next === this.roleValue) return;
    this.logger.info({ role: next, was: this.roleValue, event }, `replication role -> ${next}`);
    this.roleValue = next;
    this.emit('change');
  }

  setPhase(phase: HandoffPhase): void {
    if (this.phaseValue === phase) return;
    this.phaseValue = phase;
    this.emit('change');
  }

  /** Merges `patch` (an `undefined` field is removed) and saves, now or soon. */
  async updateState(patch: StatePatch, now: boolean): Promise<void> {
    const next = { ...this.state, ...patch } as Record<string, unknown>;
    for (const [k, v] of Object.entries(patch)) if (v === undefined) delete next[k];
    // The one cast of the state: removing an optional field, which a typed spread under
    // exactOptionalPropertyTypes cannot say; every field set comes typed from StatePatch.
    this.state = next as unknown as ReplicationState;
    if (now) await this.saveNow();
    else this.scheduleSave();
  }

  changeOrTimeout(ms: number): Promise<void> {
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

  /** Drops a pending save (the caller saves now). */
  cancelSave(): void {
    if (this.saveTimer) clearTimeout(this.saveTimer);
    this.saveTimer = null;
  }

  scheduleSave(): void {
    if (this.saveTimer) return;
    this.saveTimer = setTimeout(() => {
      this.saveTimer = null;
      void this.saveNow();
    }, this.options.stateSaveIntervalMs);
    this.saveTimer.unref();
  }

  async saveNow(): Promise<void> {
    try {
      await this.options.stateFile.save({ ...this.state, cursor: this.cursorValue });
    } catch (err) {
      this.logger.warn({ err: describeError(err) }, 'saving the replication state failed');
    }
  }

  noteError(err: unknown): void {
    const text = describeError(err);
    if (this.errorDelayMs === 0)
      this.logger.warn({ err: text }, 'replication error; reconciling and retrying');
    this.lastErrorValue = text;
    this.errorDelayMs = this.errorBackoff.next();
  }

  recovered(): void {
    this.logger.info('replication recovered');
    this.errorDelayMs = 0;
    this.errorBackoff.reset();
    this.lastErrorValue = null;
  }

  wake(): void {
    this.woken = true;
    for (const w of [...this.wakers]) w();
  }

  // Helpers ------------------------------------------------------------------

  async owner(): Promise<OwnerRecord> {
    const record = await this.options.shared.owner(this.options.guestId);
    this.ownerRecord = record;
    return record;
  }

  /** Adds what a record says to this host's knowledge (saved soon). */
  learn(record: OwnerRecord): void {
    const known = learn(this.state.known, record);
    if (known !== this.state.known) this.state = { ...this.state, known };
  }

  /** A role that may write lost its confirmation (reconnect, failed append, failed status check). */
  doubt(why: string): void {
    this.verifiedGeneration = -1;
    if (allows(this.roleValue, 'unconfirmed') && OWNING_ROLES.has(this.roleValue)) {
      this.logger.info({ why }, 'ownership unconfirmed; verifying with Redis');
      this.setRole('unconfirmed');
    }
    this.wake();
  }
}

/** An error as one line for the log and `lastError`. */
export function describeError(err: unknown): string {
  if (err instanceof ConsoledError) return `${err.code}: ${err.message}`;
  return err instanceof Error ? err.message : String(err);
}
