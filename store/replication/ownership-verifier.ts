/**
 * What an owner record means to this host, acted on (docs/design.md "Ownership"):
 * after every start and reconnect, and for status requests, the record is read and
 * ownership.ts's `verdict` decides: confirm, restore a claim Redis lost, claim an
 * unowned stream after an explicit attach, or follow. Followers only watch.
 */
import { jitter } from '../../common/backoff.js';
import { ConsoledError } from '../../common/errors.js';
import { adoptedBoots } from './adopted-boots.js';
import { verdict, WRITING_ROLES } from './ownership.js';
import { standingOf } from './replication-state.js';
import type { ReplicatorCore } from './replicator-core.js';
import type { SegmentPublisher } from './segment-publisher.js';
import type { OwnerRecord, SharedLog } from './shared-log.js';
import type { SourceHandoff } from './source-handoff.js';

export class OwnershipVerifier {
  constructor(
    private readonly core: ReplicatorCore,
    private readonly pub: SegmentPublisher,
    private readonly source: SourceHandoff,
  ) {}

  /**
   * Asks Redis, for a status report, whether this host still owns the stream, so
   * that two hosts never both say `owner` (docs/design.md "Ownership"). A host that
   * finds it no longer does becomes `unverified` and reconciles.
   */
  async confirm(timeoutMs: number): Promise<void> {
    if (!WRITING_ROLES.has(this.core.roleValue) || !this.core.options.link.ready) return;
    const generation = this.core.options.link.generation;
    let timer: NodeJS.Timeout | undefined;
    const record = await Promise.race([
      this.core.options.shared.owner(this.core.options.guestId).catch(() => null),
      new Promise<null>((resolve) => {
        timer = setTimeout(() => resolve(null), timeoutMs);
      }),
    ]);
    clearTimeout(timer);
    if (!WRITING_ROLES.has(this.core.roleValue)) return;
    if (record === null) {
      this.core.doubt('Redis did not answer the status check in time');
      return;
    }
    this.core.ownerRecord = record;
    if (record.host !== this.core.options.host || record.epoch !== this.core.state.epoch) {
      this.core.doubt(`the stream names ${record.host ?? 'nobody'} at epoch ${record.epoch}`);
    } else if (generation === this.core.options.link.generation) {
      this.core.verifiedGeneration = generation;
    }
  }

  // Verification: what the owner record means to this host ----------------------

  /**
   * Unverified or claiming: reads the owner record and acts on `verdict` (ownership.ts):
   * confirm, claim (only as the rules allow), or follow.
   */
  async verify(): Promise<void> {
    const { link, shared, guestId, host } = this.core.options;
    if (!link.ready) {
      await link.waitReady(this.core.stopController.signal);
      return;
    }
    const generation = link.generation;
    this.core.counters.reconciles++;
    await Promise.allSettled(this.pub.inflight.map((e) => e.done));
    this.pub.inflight.length = 0;
    this.pub.failure = null;
    const known = this.core.state.known;
    const record = await this.core.owner();
    const v = verdict(host, standingOf(this.core.state), known, record);
    switch (v.kind) {
      case 'own': {
        if (v.epoch !== this.core.state.epoch) await this.core.updateState({ epoch: v.epoch }, true);
        // A claim of an unowned stream whose save a SIGKILL lost: its renumbering is still to do.
        if (this.core.state.role === 'claiming') await this.renumberForClaim(record.next ?? record.streamEnd);
        await this.confirmed(record, generation);
        return;
      }
      case 'reclaim': {
        // Another host may have claimed the stream while Redis had lost ours, and
        // appended its own bytes at offsets this host's log holds too: continuing
        // there would glue two histories together. The stream keeps the other's.
        const last = await shared.lastEntry(guestId);
        if (last && last.host !== host && last.end > this.core.options.log.oldest) {
          await this.follow(
            record,
            `the stream holds ${last.host}'s bytes up to offset ${last.end}, where this host's log has its own: it does not reclaim`,
          );
          return;
        }
        const claim = await shared.claim(guestId, {
          host,
          expectedEpoch: v.expectedEpoch,
          knownEpoch: Math.max(known.epoch, this.core.state.epoch),
        });
        this.core.counters.reclaims++;
        this.core.logger.warn(
          { had: this.core.state.epoch, recordEpoch: record.epoch, epoch: claim.epoch },
          "Redis lost this host's claim; claimed the guest again",
        );
        await this.core.updateState({ epoch: claim.epoch, known: { epoch: claim.epoch, host } }, true);
        await this.confirmed(await this.core.owner(), generation);
        return;
      }
      case 'claim': {
        if (this.core.roleValue === 'unverified') this.core.setRole('may-claim');
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
          await this.follow(await this.core.owner(), 'another host claimed the stream first');
          return;
        }
        this.core.logger.info(
          { epoch: claim.epoch, next: claim.next, previousEpoch: claim.previousEpoch },
          "claimed the guest's stream: nobody owned it",
        );
        await this.core.updateState({ epoch: claim.epoch, known: { epoch: claim.epoch, host } }, true);
        await this.renumberForClaim(claim.next);
        await this.confirmed(await this.core.owner(), generation);
        return;
      }
      case 'handed-off':
        await this.source.becomeHandedOff(record);
        return;
      case 'fenced':
        await this.source.lostOwnership(record);
        return;
      case 'released':
        this.core.learn(record);
        this.core.setRole('released');
        await this.core.updateState({ role: 'released' }, true);
        return;
      case 'follow':
        await this.follow(record, v.reason);
        return;
    }
  }

  /** The record confirmed this host as the owner: set the role, then where publishing resumes. */
  async confirmed(record: OwnerRecord, generation: number): Promise<void> {
    this.core.learn(record);
    if (record.handoff === 'sealed' && record.host === this.core.options.host) {
      const at = record.sealedAt ?? record.next ?? this.core.cursorValue;
      this.core.limit = at;
      this.core.setRole(this.core.roleValue === 'unverified' ? 'sealed' : 'confirmed');
      if (this.core.state.sealedAt !== at) await this.core.updateState({ sealedAt: at }, true);
      this.core.setPhase('sealed');
    } else {
      this.core.setRole('confirmed');
      if (this.core.state.sealedAt !== undefined) {
        // Sealed before the restart, and the seal is gone (cancelled, or Redis lost it).
        this.core.limit = null;
        await this.core.updateState({ sealedAt: undefined }, true);
      }
      if (record.handoff === 'pending' && record.target && this.core.limit === null)
        this.core.handoffTarget = record.target;
    }
    this.pub.resumeAt(record);
    this.core.verifiedGeneration = generation;
    if (this.core.state.role !== 'owner' && this.core.state.role !== 'sealed')
      await this.core.updateState({ role: this.core.roleValue === 'sealed' ? 'sealed' : 'owner' }, true);
    this.core.logger.info(
      { epoch: this.core.state.epoch, cursor: this.core.cursorValue },
      "owns the guest's stream",
    );
  }

  /**
   * An explicit attach claimed an unowned stream that continues at `next`: the local
   * log, captured since the attach, moves so that its first byte is `next`.
   */
  async renumberForClaim(next: number | null): Promise<void> {
    const log = this.core.options.log;
    const from = this.core.state.spoolStart ?? log.oldest;
    if (next !== null && next !== from) {
      const last = log.lastRenumber;
      if (!(last && last.from === from && last.to === next)) {
        await this.core.updateState({ adopt: { kind: 'renumber', from, to: next } }, true);
        await log.renumber(from, next, await adoptedBoots(this.core, from, next, log.boots));
        this.core.logger.info({ from, to: next }, 'renumbered the local log to continue the stream');
      }
    }
    await this.core.updateState({ role: 'owner', adopt: undefined, spoolStart: undefined }, true);
  }

  async follow(record: OwnerRecord, reason: string): Promise<void> {
    this.core.learn(record);
    this.core.followReason = reason;
    if (this.core.roleValue !== 'follower') {
      this.core.logger.warn(
        { owner: record.host, epoch: record.epoch, reason },
        'following: this host does not write the stream',
      );
      this.core.setRole('follows');
    }
    await this.core.updateState({ role: 'follower' }, true);
  }

  /** Followers, handed-off, fenced, released: they only watch the owner record. */
  async followerStep(): Promise<void> {
    const { link } = this.core.options;
    if (!link.ready) {
      await link.waitReady(this.core.stopController.signal);
      return;
    }
    if (this.core.verifiedGeneration !== link.generation || Date.now() >= this.core.nextPollAtMs) {
      const generation = link.generation;
      const known = this.core.state.known;
      const record = await this.core.owner();
      const v = verdict(this.core.options.host, standingOf(this.core.state), known, record);
      // Who owns it now is news; an unowned stream keeps the reason this host stopped claiming.
      if (v.kind === 'follow' && (record.host !== null || this.core.followReason === null))
        this.core.followReason = v.reason;
      this.core.learn(record);
      this.core.verifiedGeneration = generation;
      this.core.nextPollAtMs = Date.now() + jitter(this.core.options.handoff.pollIntervalMs);
      this.core.scheduleSave();
      return;
    }
    await this.core.waitFor({ timeoutMs: Math.max(1, this.core.nextPollAtMs - Date.now()) });
  }

  /** Handing off or releasing after a reconnect: still ours? Then resume publishing. */
  async recheck(generation: number): Promise<void> {
    await Promise.allSettled(this.pub.inflight.map((e) => e.done));
    this.pub.inflight.length = 0;
    this.pub.failure = null;
    const record = await this.core.owner();
    if (record.host !== this.core.options.host || record.epoch !== this.core.state.epoch) {
      await this.source.lostOwnership(record);
      return;
    }
    this.core.learn(record);
    this.pub.resumeAt(record);
    this.core.verifiedGeneration = generation;
  }

  async pollOwner(): Promise<void> {
    const st = await this.core.owner();
    this.core.nextPollAtMs = Date.now() + jitter(this.core.options.handoff.pollIntervalMs);
    if (st.host !== this.core.options.host || st.epoch !== this.core.state.epoch) {
      this.core.doubt(`the stream names ${st.host ?? 'nobody'} at epoch ${st.epoch}`);
      return;
    }
    if (st.handoff === 'pending' && st.target) this.core.handoffTarget = st.target;
  }
}
