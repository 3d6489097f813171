/**
 * The destination's side of a live migration (docs/design.md "Migration handoff"):
 * hold the guest's output in the spool, ask the owner to hand over, claim on the seal,
 * on a release, or by force after the completion timeout (or an operator), then write
 * the seam's markers, copy the spool in at the stream's offsets and own the stream.
 */
import { rm } from 'node:fs/promises';
import { ConsoledError } from '../../common/errors.js';
import { adoptedBoots } from './adopted-boots.js';
import type { IncomingHandoff } from './replication-state.js';
import { describeError, type ReplicatorCore } from './replicator-core.js';
import type { SegmentPublisher } from './segment-publisher.js';
import type { OwnerRecord } from './shared-log.js';

/** One read of the spool while copying it into the log. */
const SPOOL_COPY_BYTES = 256 * 1024;
const ABORTED_POLL_MS = 1_000;

export class DestinationHandoff {
  private requestRegistered = false;
  private forceRequested = false;
  /** When the handoff was triggered here (for `lastTriggerToOwnerMs`). */
  triggeredAt: number | null = null;
  /** The last handoff this host completed as destination: from the trigger to owning the stream. */
  lastTriggerToOwnerMs: number | null = null;

  constructor(
    private readonly core: ReplicatorCore,
    private readonly pub: SegmentPublisher,
  ) {}

  /**
   * Destination: the guest runs here now (its first byte, `trigger: 'first-byte'`) or
   * an operator asked (`'api'`, `force` to fence the source without waiting).
   */
  requestOwnership(trigger: 'first-byte' | 'api', force = false): void {
    if (this.core.roleValue !== 'incoming') {
      if (trigger === 'api' && this.core.roleValue !== 'adopting') {
        throw new ConsoledError(
          'HANDOFF_STATE',
          `guest ${this.core.options.guestId} is ${this.core.roleValue} here, not incoming: attach it with incoming: true first`,
        );
      }
      return;
    }
    if (!this.core.state.handoff) {
      const owner =
        this.core.ownerRecord && this.core.ownerRecord.host !== this.core.options.host
          ? this.core.ownerRecord
          : null;
      this.triggeredAt = performance.now();
      this.core.state = {
        ...this.core.state,
        handoff: {
          requestedAtMs: Date.now(),
          sourceHost: owner?.host ?? null,
          sourceEpoch: owner?.epoch ?? null,
          aborted: false,
        },
      };
      this.core.setPhase('requested');
      void this.core.saveNow();
      this.core.logger.info({ trigger, source: owner?.host ?? null }, 'incoming guest claims the stream');
    }
    if (force) {
      this.forceRequested = true;
      this.core.logger.warn(
        { trigger },
        'audit: an operator forces the handoff; the source will be fenced out',
      );
    }
    this.core.wake();
  }

  /** Destination: the migration was cancelled (DELETE of the incoming guest). */
  async cancelIncoming(): Promise<void> {
    if (this.core.roleValue !== 'incoming') return;
    const handoff = this.core.state.handoff;
    this.core.counters.handoffsCancelled++;
    this.core.setPhase('cancelled');
    this.core.setRole('incoming-cancelled');
    // What the guest printed here stays in this host's log, numbered locally.
    const saveCancelled = () => this.core.updateState({ role: 'cancelled', handoff: undefined }, true);
    try {
      await this.replaySpool(this.core.options.log.end, saveCancelled);
    } catch (err) {
      this.core.logger.warn({ err: describeError(err) }, 'could not copy the spool into the local log');
      await saveCancelled();
    }
    if (!handoff) return;
    try {
      await this.core.options.shared.cancelHandoff(this.core.options.guestId, this.core.options.host);
      if (handoff.sourceHost) {
        this.core.options.notify(handoff.sourceHost, {
          guest: this.core.options.guestId,
          event: 'cancelled',
          from: this.core.options.host,
        });
      }
    } catch (err) {
      this.core.logger.warn({ err: describeError(err) }, 'could not cancel the handoff in Redis');
    }
  }

  // Destination side of a handoff --------------------------------------------------

  async incomingStep(): Promise<void> {
    const { link, shared, guestId, host, handoff } = this.core.options;
    const h = this.core.state.handoff;
    if (!h) {
      // No guest byte yet. Learn who owns the guest, for the handoff-from marker.
      if (this.core.ownerRecord === null && link.ready) {
        this.core.learn(await this.core.owner());
      }
      await this.core.waitFor(this.core.ownerRecord === null ? { timeoutMs: 500 } : {});
      return;
    }
    if (!link.ready) {
      await link.waitReady(this.core.stopController.signal);
      return;
    }
    if (!this.requestRegistered || this.core.verifiedGeneration !== link.generation) {
      this.core.verifiedGeneration = link.generation;
      await this.registerRequest();
      return;
    }
    if (this.forceRequested) {
      this.forceRequested = false;
      await this.force('operator');
      return;
    }
    const st = await this.core.owner();
    if (st.host === host && st.epoch > this.core.state.epoch) {
      // Our claim, made before a SIGKILL lost its save: whether it was forced is in the record.
      const forced = st.prevHost !== null && st.prevHost !== host && st.prevHandoff !== 'sealed';
      await this.adopt(st.epoch, st.next ?? st.streamEnd, forced, st.prevHost);
      return;
    }
    if (st.host === null) {
      if (this.mayClaimUnowned(st, h)) await this.claimUnowned(st);
      else await this.core.waitFor({ timeoutMs: handoff.sealPollIntervalMs });
      return;
    }
    if (st.handoff === 'sealed' && (st.target === null || st.target === host)) {
      try {
        const claim = await shared.claim(guestId, {
          host,
          expectedEpoch: st.epoch,
          requireSealed: true,
          knownEpoch: Math.max(st.epoch, this.core.state.known.epoch),
        });
        this.core.counters.handoffsCompleted++;
        if (claim.previousHost !== null && claim.previousHost !== host)
          this.core.options.notify(claim.previousHost, { guest: guestId, event: 'claimed', from: host });
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
      this.core.counters.handoffsAborted++;
      this.core.logger.warn(
        { waitedMs: waited, source: st.host },
        'no seal in time; handoff aborted, spooling locally until the source seals or an operator forces it',
      );
      this.core.setPhase('aborted');
      await this.core.updateState({ handoff: { ...h, aborted: true } }, true);
      return;
    }
    const timeoutMs = h.aborted
      ? Math.max(ABORTED_POLL_MS, handoff.sealPollIntervalMs)
      : Math.max(1, Math.min(handoff.sealPollIntervalMs, handoff.completionTimeoutMs - waited));
    await this.core.waitFor({ timeoutMs });
  }

  /**
   * A released stream is taken at once. A record with no owner at all may be a Redis
   * that lost the source's claim, which the source is about to restore: the
   * destination waits the completion timeout for an owner to show up before it takes it.
   */
  mayClaimUnowned(st: OwnerRecord, h: IncomingHandoff): boolean {
    if (st.handoff === 'released' || st.epoch > 0) return true;
    return Date.now() - h.requestedAtMs >= this.core.options.handoff.completionTimeoutMs;
  }

  /** Nobody owns the stream (the source released it, or never replicated): take it as it stands. */
  async claimUnowned(st: OwnerRecord): Promise<void> {
    const { shared, guestId, host } = this.core.options;
    try {
      const claim = await shared.claim(guestId, {
        host,
        expectedEpoch: st.epoch,
        knownEpoch: Math.max(st.epoch, this.core.state.known.epoch),
        requireUnowned: true,
      });
      await this.adopt(claim.epoch, claim.next, false, claim.previousHost ?? this.core.state.known.host);
    } catch (err) {
      if (!(err instanceof ConsoledError) || err.code !== 'FENCED') throw err;
      this.requestRegistered = false; // somebody owns it now: ask them
    }
  }

  async registerRequest(): Promise<void> {
    const { shared, guestId, host, notify } = this.core.options;
    try {
      const reply = await shared.requestHandoff(guestId, host, 'any');
      this.requestRegistered = true;
      const h = this.core.state.handoff!;
      await this.core.updateState(
        { handoff: { ...h, sourceHost: reply.host, sourceEpoch: reply.epoch } },
        false,
      );
      notify(reply.host, { guest: guestId, event: 'requested', from: host });
    } catch (err) {
      if (!(err instanceof ConsoledError) || err.code !== 'HANDOFF_STATE') throw err;
      const details = err.details ?? {};
      if (details['handoff'] === 'unowned') {
        const st = await this.core.owner();
        if (this.mayClaimUnowned(st, this.core.state.handoff!)) await this.claimUnowned(st);
        else this.requestRegistered = true; // the next steps wait for an owner to show up
        return;
      }
      if (details['target'] === host || details['handoff'] === 'none') {
        this.requestRegistered = true; // already asked, or already ours: the next step sees which
        return;
      }
      this.core.logger.warn(
        { handoff: details['handoff'], target: details['target'] },
        'another handoff of this guest is under way; waiting',
      );
      await this.core.waitFor({ timeoutMs: this.core.options.handoff.sealPollIntervalMs * 5 });
    }
  }

  async force(reason: 'timeout' | 'operator'): Promise<void> {
    const { shared, guestId, host } = this.core.options;
    const seen = this.core.ownerRecord?.epoch ?? 0;
    const claim = await shared.claim(guestId, {
      host,
      expectedEpoch: seen > 0 ? seen : 'any',
      knownEpoch: Math.max(seen, this.core.state.known.epoch),
    });
    const sealed = claim.previousHandoff === 'sealed' || claim.previousHost === null;
    if (sealed) this.core.counters.handoffsCompleted++;
    else this.core.counters.handoffsForced++;
    this.core.logger.warn(
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
  async adopt(epoch: number, next: number | null, forced: boolean, source: string | null): Promise<void> {
    this.core.setRole('incoming-claimed');
    await this.core.updateState(
      {
        role: 'adopting',
        epoch,
        known: { epoch, host: this.core.options.host },
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
  async finishAdoption(): Promise<void> {
    const { log } = this.core.options;
    const adopt = this.core.state.adopt;
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
          await log.renumber(log.end, next, await adoptedBoots(this.core, log.end, next, []));
      }
      if (log.end === next) {
        if (adopt.forced)
          this.core.options.control.writeLogMarker({ kind: 'gap', bytes: null, reason: 'handoff-timeout' });
        this.core.options.control.writeLogMarker({
          kind: 'handoff-from',
          host: adopt.source ?? 'unknown',
          at: new Date(),
        });
        await log.flush();
      } else if (log.end < next) {
        this.core.lastErrorValue = `the local log ends at ${log.end}, before the stream's ${next}; move ${log.options.dir} aside and attach again`;
        this.core.logger.error(this.core.lastErrorValue);
        this.core.counters.fenced++;
        this.core.setRole('adopt-refused');
        await this.core.updateState({ role: 'fenced', adopt: undefined }, true);
        return;
      }
      spoolFrom = log.end;
      await this.core.updateState({ adopt: { ...adopt, spoolFrom } }, true);
    }
    const cursor = adopt.next ?? log.oldest;
    await this.replaySpool(spoolFrom, () => this.saveOwnership(cursor));
    await this.becomeOwnerAfterAdoption(cursor, adopt.forced);
  }

  /** The adoption is on disk: the state says owner before any live byte follows the copy. */
  private saveOwnership(cursor: number): Promise<void> {
    return this.core.updateState(
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
  }

  /**
   * Copies what the spool holds into the log after `spoolFrom` (the log's offsets
   * `spoolFrom + i` are the spool's `i`), then numbers output directly again. The last
   * stretch is copied while new output waits in memory, so the copy ends. Once the
   * copy is on disk, `commit` saves the state that says so, and only then does live
   * output follow it and the spool go: a SIGKILL before the commit resumes the copy
   * where the log ends (the log then holds spool bytes only); after it, the state
   * says the copy is done.
   */
  async replaySpool(spoolFrom: number, commit: () => Promise<void>): Promise<void> {
    const { log, control } = this.core.options;
    const spool = this.core.options.spool;
    if (!spool || spool.state === 'closed') {
      await commit();
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
          await this.core.updateState(
            {
              adopt:
                this.core.state.adopt?.kind === 'spool'
                  ? { ...this.core.state.adopt, spoolFrom: base }
                  : undefined,
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
      await log.flush();
      await commit();
    } finally {
      control.endHold();
    }
    const spoolDir = spool.options.dir;
    await spool.close();
    await rm(spoolDir, { recursive: true, force: true });
    this.core.logger.info({ bytes: log.end - spoolFrom }, 'copied the spool into the log');
  }

  async becomeOwnerAfterAdoption(cursor: number, forced: boolean): Promise<void> {
    this.core.options.control.setContinuing(false);
    this.core.cursorValue = cursor;
    this.pub.sent = cursor;
    this.core.verifiedGeneration = -1;
    if (this.triggeredAt !== null) {
      this.lastTriggerToOwnerMs = performance.now() - this.triggeredAt;
      this.triggeredAt = null;
    }
    if (this.core.phaseValue !== 'none') this.core.setPhase(forced ? 'forced' : 'completed');
    await this.saveOwnership(cursor);
    // Owner, and confirmed by its own claim; the next reconnect verifies again.
    this.core.setRole('adopted');
    this.core.verifiedGeneration = this.core.options.link.generation;
    this.pub.resumeAt(await this.core.owner());
    this.core.logger.info(
      { epoch: this.core.state.epoch, offset: cursor, forced },
      "owns the guest's stream; publishing",
    );
  }
}
