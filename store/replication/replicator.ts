/**
 * One guest's replication (docs/design.md "Replication", "Ownership", "Migration
 * handoff"): the facade the sidecar drives. It runs one loop per guest that acts on
 * the ownership role (ownership.ts's state machine, held by ReplicatorCore): verify it
 * with Redis (ownership-verifier.ts), publish the local log (segment-publisher.ts),
 * hand the stream over or release it (source-handoff.ts), take it as a migration's
 * destination (destination-handoff.ts), or only watch.
 *
 * The local log is the source of truth and the backlog: only bytes already in the
 * files are sent (a SIGKILL cannot leave the stream ahead of the log), and at most
 * `maxInFlight` segments are in memory, however long Redis is away.
 */
import { EventEmitter } from 'node:events';
import { DestinationHandoff } from './destination-handoff.js';
import type { Knowledge, OwnershipRole } from './ownership.js';
import { allows, OWNING_ROLES, WRITING_ROLES } from './ownership.js';
import { OwnershipVerifier } from './ownership-verifier.js';
import { ReplicatorCore } from './replicator-core.js';
import type { HandoffPhase, ReplicationStatus, ReplicatorOptions } from './replicator-types.js';
import { SegmentPublisher } from './segment-publisher.js';
import { SourceHandoff } from './source-handoff.js';

export type {
  GuestControl,
  HandoffNotice,
  HandoffPhase,
  HandoffSettings,
  RedisLink,
  ReplicationStatus,
  ReplicatorOptions,
} from './replicator-types.js';

export class Replicator extends EventEmitter<{ change: [] }> {
  private readonly core: ReplicatorCore;
  private readonly pub: SegmentPublisher;
  private readonly source: SourceHandoff;
  private readonly dest: DestinationHandoff;
  private readonly verifier: OwnershipVerifier;
  private running: Promise<void> | null = null;
  private unsubscribeOutput: (() => void) | null = null;
  private unwatchFlushed: (() => void) | null = null;
  private readonly onClosed = (): void => this.core.wake();
  private readonly onRenumbered = (): void => {
    this.core.lag.reset();
    this.pub.forgetReads();
  };

  constructor(options: ReplicatorOptions) {
    super();
    this.core = new ReplicatorCore(options);
    this.pub = new SegmentPublisher(this.core);
    this.source = new SourceHandoff(this.core, this.pub);
    this.dest = new DestinationHandoff(this.core, this.pub);
    this.verifier = new OwnershipVerifier(this.core, this.pub, this.source);
    this.core.on('change', () => this.emit('change'));
  }

  /**
   * Destination: the guest runs here now (its first byte) or an operator asked
   * (`force` fences the source without waiting). See destination-handoff.ts.
   */
  requestOwnership(trigger: 'first-byte' | 'api', force = false): void {
    this.dest.requestOwnership(trigger, force);
  }

  /** Destination: the migration was cancelled (DELETE of the incoming guest). */
  cancelIncoming(): Promise<void> {
    return this.dest.cancelIncoming();
  }

  /** Confirms with Redis, for a status report, that this host still owns the stream. */
  confirm(timeoutMs: number): Promise<void> {
    return this.verifier.confirm(timeoutMs);
  }

  /** Counters for status and metrics. */
  get counters(): ReplicatorCore['counters'] {
    return this.core.counters;
  }

  get role(): OwnershipRole {
    return this.core.roleValue;
  }

  get epoch(): number {
    return this.core.state.epoch;
  }

  get cursor(): number {
    return this.core.cursorValue;
  }

  get phase(): HandoffPhase {
    return this.core.phaseValue;
  }

  get known(): Knowledge {
    return this.core.state.known;
  }

  /** The offset this host stops writing the stream at (sealing or releasing), or null. */
  get sealLimit(): number | null {
    return this.core.limit;
  }

  /** True while this host writes the guest's stream (a confirmed owner that has not sealed). */
  get writing(): boolean {
    return WRITING_ROLES.has(this.core.roleValue);
  }

  get lastError(): string | null {
    return this.core.lastErrorValue;
  }

  start(): void {
    if (this.running) return;
    this.unwatchFlushed = this.core.options.log.watchFlushed(this.core.onFlushed);
    this.core.options.log.on('closed', this.onClosed);
    this.core.options.log.on('renumbered', this.onRenumbered);
    this.unsubscribeOutput = this.core.options.control.onOutput((offset, bytes) => {
      // Only while sending: during an outage the local log alone holds the backlog.
      if (this.core.options.link.ready && this.core.writing) this.pub.recent.add(offset, bytes);
    });
    this.core.options.control.setContinuing(
      this.core.state.role === 'incoming' || this.core.state.role === 'adopting',
    );
    void this.core.saveNow();
    this.running = this.run();
  }

  /** Stops at once (what is not sent stays in the local log). */
  async stop(): Promise<void> {
    if (!this.core.stopped) {
      this.core.stopped = true;
      this.core.stopController.abort();
      this.core.wake();
    }
    await this.running;
    await Promise.allSettled(this.pub.inflight.map((e) => e.done));
    this.pub.collectAcks();
    this.unwatchFlushed?.();
    this.unwatchFlushed = null;
    this.core.options.log.off('closed', this.onClosed);
    this.core.options.log.off('renumbered', this.onRenumbered);
    this.unsubscribeOutput?.();
    this.pub.recent.clear();
    this.core.cancelSave();
    await this.core.saveNow();
  }

  /**
   * Publishes what the (closed or closing) log holds, for at most `timeoutMs`, then
   * stops: a detach or a shutdown (docs/design.md "Shutdown": drain with a deadline).
   */
  async finish(timeoutMs: number): Promise<void> {
    if (this.core.roleValue === 'owner' && this.core.limit === null && !this.core.stopped) {
      this.core.finishing = true;
      this.core.wake();
      const deadline = Date.now() + timeoutMs;
      while (
        this.core.cursorValue < this.core.options.log.flushedEnd &&
        Date.now() < deadline &&
        this.core.roleValue === 'owner'
      ) {
        await this.core.changeOrTimeout(Math.min(50, Math.max(1, deadline - Date.now())));
      }
      const left = this.core.options.log.flushedEnd - this.core.cursorValue;
      if (left > 0 && this.core.roleValue === 'owner') {
        this.core.logger.warn(
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
    if (this.core.roleValue === 'incoming') {
      await this.dest.cancelIncoming();
      return;
    }
    if (this.core.roleValue === 'owner' && this.core.handoffTarget === null && this.core.limit === null) {
      // A destination may have asked a moment ago (its notice not seen yet): hand over then.
      const record = await this.core.owner().catch(() => null);
      if (record?.handoff === 'pending' && record.target) {
        this.core.handoffTarget = record.target;
        this.core.wake();
      }
    }
    if (this.core.roleValue === 'owner' && this.core.handoffTarget === null && this.core.limit === null) {
      await this.core.options.control.stopSource();
      this.core.limit = this.core.options.control.writeMarker({
        kind: 'release',
        host: this.core.options.host,
        at: new Date(),
      });
      this.core.setRole('release-requested');
      this.core.wake();
    }
    if (!WRITING_ROLES.has(this.core.roleValue) && this.core.roleValue !== 'sealed') {
      if (OWNING_ROLES.has(this.core.roleValue) || this.core.roleValue === 'adopting') {
        this.core.logger.warn(
          { role: this.core.roleValue },
          'detached without releasing the stream: this host has not confirmed it owns it',
        );
      }
      return;
    }
    const handingOff = (): boolean =>
      this.core.roleValue === 'handing-off' ||
      this.core.roleValue === 'sealed' ||
      this.core.handoffTarget !== null;
    const deadline = (): number => started + (handingOff() ? handoffTimeoutMs : releaseTimeoutMs);
    while (
      Date.now() < deadline() &&
      (WRITING_ROLES.has(this.core.roleValue) || this.core.roleValue === 'sealed')
    ) {
      await this.core.changeOrTimeout(Math.min(100, Math.max(1, deadline() - Date.now())));
    }
    if (this.core.roleValue !== 'released' && this.core.roleValue !== 'handed-off') {
      this.core.logger.warn(
        { role: this.core.roleValue },
        'the release or handoff did not complete before the deadline; the stream stays as it is',
      );
    }
  }

  /** Wakes the loop (a notification arrived: look at the owner record now). */
  poke(): void {
    this.core.nextPollAtMs = 0;
    this.core.wake();
  }

  status(): ReplicationStatus {
    const log = this.core.options.log;
    const role = this.core.roleValue;
    const now = Date.now();
    const writing = this.core.writing;
    const stoppedAt = this.core.limit ?? this.core.cursorValue;
    const spool = this.core.options.spool;
    return {
      role,
      host: this.core.options.host,
      epoch: this.core.state.epoch,
      owner: this.core.ownerRecord?.host ?? null,
      ownerEpoch: this.core.ownerRecord ? this.core.ownerRecord.epoch : null,
      knownEpoch: this.core.state.known.epoch,
      knownOwner: this.core.state.known.host,
      followReason: role === 'follower' || role === 'fenced' ? this.core.followReason : null,
      handoff: {
        phase: this.core.phaseValue,
        target: this.core.handoffTarget ?? this.core.ownerRecord?.target ?? null,
        source: this.core.state.handoff?.sourceHost ?? null,
        requestedAt: this.core.state.handoff
          ? new Date(this.core.state.handoff.requestedAtMs).toISOString()
          : null,
        sealedAt: this.core.state.sealedAt ?? null,
        lastTriggerToOwnerMs: this.dest.lastTriggerToOwnerMs,
      },
      cursor: this.core.cursorValue,
      lagBytes: writing
        ? Math.max(
            0,
            Math.min(log.flushedEnd, this.core.limit ?? Number.POSITIVE_INFINITY) - this.core.cursorValue,
          )
        : 0,
      lagSeconds: writing ? this.core.lag.lagSeconds(this.core.cursorValue, now) : 0,
      spooledBytes:
        (role === 'incoming' || role === 'adopting') && spool && spool.state !== 'closed'
          ? Math.max(0, spool.end - spool.oldest)
          : 0,
      unpublishedBytes:
        role === 'fenced' || role === 'handed-off' || role === 'sealed' || this.core.limit !== null
          ? Math.max(0, log.end - stoppedAt)
          : 0,
      skippedBytes: this.core.state.skippedBytes,
      lastError: this.core.lastErrorValue,
    };
  }

  // The loop -------------------------------------------------------------------

  async run(): Promise<void> {
    while (!this.core.stopped) {
      try {
        switch (this.core.roleValue) {
          case 'unverified':
          case 'claiming':
            await this.verifier.verify();
            break;
          case 'owner':
          case 'handing-off':
          case 'releasing':
            await this.ownerStep();
            break;
          case 'sealed':
            await this.source.sealedStep();
            break;
          case 'incoming':
            await this.dest.incomingStep();
            break;
          case 'adopting':
            await this.dest.finishAdoption();
            break;
          default:
            await this.verifier.followerStep();
        }
        const settled =
          !OWNING_ROLES.has(this.core.roleValue) ||
          this.core.verifiedGeneration === this.core.options.link.generation;
        if (this.core.errorDelayMs > 0 && this.pub.failure === null && settled) this.core.recovered();
      } catch (err) {
        if (this.core.stopped) break;
        await Promise.allSettled(this.pub.inflight.map((e) => e.done));
        this.pub.collectAcks();
        this.pub.failure = null;
        if (OWNING_ROLES.has(this.core.roleValue) && allows(this.core.roleValue, 'unconfirmed'))
          this.core.setRole('unconfirmed');
        this.core.verifiedGeneration = -1;
        this.core.noteError(err);
        await this.core.waitFor({ timeoutMs: this.core.errorDelayMs });
      }
    }
  }

  // Owner ----------------------------------------------------------------------

  async ownerStep(): Promise<void> {
    const { link, log } = this.core.options;
    if (!link.ready) {
      this.pub.recent.clear();
      this.pub.dropReadBacks();
      await Promise.allSettled(this.pub.inflight.map((e) => e.done));
      this.pub.collectAcks();
      await link.waitReady(this.core.stopController.signal);
      return;
    }
    this.pub.collectAcks();
    if (this.pub.failure !== null) {
      const failure = this.pub.failure;
      this.core.counters.appendErrors++;
      throw failure;
    }
    if (this.core.verifiedGeneration !== link.generation) {
      if (this.core.roleValue === 'owner') {
        this.core.doubt('reconnected to Redis');
        return;
      }
      await this.verifier.recheck(link.generation); // handing off or releasing: keep the limit
      return;
    }
    if (this.core.limit === null) {
      if (this.core.handoffTarget !== null) {
        await this.source.beginSourceHandoff(this.core.handoffTarget);
        return;
      }
      if (Date.now() >= this.core.nextPollAtMs && !this.core.finishing) {
        await this.verifier.pollOwner();
        return;
      }
    } else if (this.core.cursorValue >= this.core.limit && this.pub.inflight.length === 0) {
      if (this.core.roleValue === 'releasing') await this.source.release(this.core.limit);
      else await this.source.seal(this.core.limit);
      return;
    }
    await this.pub.pump(log);
  }
}
