/**
 * The owner's side of giving a guest's stream up (docs/design.md "Migration handoff",
 * "Giving ownership up"): drain, mark and seal for a named destination, wait for its
 * claim, stop the chardev; release at the final offset on a DELETE; and what happens
 * when another host turns out to hold the stream (handed off, or fenced).
 */
import { ConsoledError } from '../../common/errors.js';
import type { ReplicatorCore } from './replicator-core.js';
import type { SegmentPublisher } from './segment-publisher.js';
import type { OwnerRecord } from './shared-log.js';

export class SourceHandoff {
  constructor(
    private readonly core: ReplicatorCore,
    private readonly pub: SegmentPublisher,
  ) {}

  // Source side of a handoff ----------------------------------------------------

  async beginSourceHandoff(target: string): Promise<void> {
    const { control, handoff, guestId, host } = this.core.options;
    this.core.setPhase('draining');
    this.core.setRole('handoff-requested');
    this.core.logger.info({ target }, 'handoff requested; draining the chardev');
    await Promise.allSettled(this.pub.inflight.map((e) => e.done));
    await control.drainSource(handoff.drainQuietMs, handoff.drainTimeoutMs);
    const st = await this.core.owner();
    if (
      st.handoff !== 'pending' ||
      st.target !== target ||
      st.host !== host ||
      st.epoch !== this.core.state.epoch
    ) {
      this.core.logger.info(
        { guest: guestId, handoff: st.handoff },
        'the handoff request went away; staying the owner',
      );
      this.core.handoffTarget = null;
      this.core.setPhase('cancelled');
      if (st.host !== host || st.epoch !== this.core.state.epoch) {
        await this.lostOwnership(st);
        return;
      }
      this.core.setRole('handoff-withdrawn');
      return;
    }
    // This host restarted and has not read the chardev since, or lost it: what the
    // guest printed meanwhile is gone, and the hole is here, before the handoff marker.
    if (control.outputMayBeUnread())
      control.writeMarker({ kind: 'gap', bytes: null, reason: 'not-connected' });
    this.core.limit = control.writeMarker({ kind: 'handoff-to', host: target, at: new Date() });
    this.core.emit('change');
  }

  async seal(at: number): Promise<void> {
    const { shared, guestId, host, notify } = this.core.options;
    const st = await this.core.owner();
    if (
      this.core.roleValue === 'handing-off' &&
      st.host === host &&
      st.epoch === this.core.state.epoch &&
      st.handoff === 'none'
    ) {
      // Cancelled while we drained: the marker stays, publishing goes on.
      this.core.logger.info('the handoff was cancelled before the seal; staying the owner');
      this.core.limit = null;
      this.core.handoffTarget = null;
      this.core.counters.handoffsCancelled++;
      this.core.setPhase('cancelled');
      this.core.setRole('handoff-withdrawn');
      return;
    }
    const reply = await shared.seal(guestId, this.core.state.epoch, host, at);
    const target = reply.target ?? this.core.handoffTarget;
    this.core.logger.info({ sealedAt: at, target }, 'sealed the stream for the handoff');
    this.core.setPhase('sealed');
    this.core.setRole('sealed');
    await this.core.updateState({ role: 'sealed', sealedAt: at }, true);
    if (target) notify(target, { guest: guestId, event: 'sealed', from: host });
  }

  /** Sealed: wait for the destination's claim (then stop), or a cancel (then go on). */
  async sealedStep(): Promise<void> {
    const { host, link } = this.core.options;
    if (!link.ready) {
      await link.waitReady(this.core.stopController.signal);
      return;
    }
    const st = await this.core.owner();
    if (st.host !== host || st.epoch !== this.core.state.epoch) {
      await this.becomeHandedOff(st);
      return;
    }
    if (st.handoff === 'none') {
      this.core.logger.info('the handoff was cancelled after the seal; publishing again');
      this.core.limit = null;
      this.core.handoffTarget = null;
      this.core.counters.handoffsCancelled++;
      this.core.setPhase('cancelled');
      this.core.setRole('seal-cancelled');
      await this.core.updateState({ role: 'owner', sealedAt: undefined }, true);
      this.core.verifiedGeneration = -1;
      return;
    }
    await this.core.waitFor({ timeoutMs: this.core.options.handoff.sealPollIntervalMs });
  }

  async becomeHandedOff(st: OwnerRecord): Promise<void> {
    this.core.learn(st);
    const unpublished = Math.max(0, this.core.options.log.end - (this.core.limit ?? this.core.cursorValue));
    this.core.counters.handoffsCompleted++;
    this.core.logger.info(
      { owner: st.host, epoch: st.epoch, unpublishedBytes: unpublished },
      'handed the guest off; stopping its chardev',
    );
    this.core.setPhase('completed');
    this.core.setRole('handed-off');
    await this.core.updateState({ role: 'handed-off' }, true);
    await this.core.options.control.stopSource();
  }

  /** Another host holds the stream: handed off if this host had sealed, else fenced. */
  async lostOwnership(st: OwnerRecord): Promise<void> {
    const { log, control } = this.core.options;
    this.core.learn(st);
    if (
      this.core.state.sealedAt !== undefined ||
      (this.core.limit !== null && this.core.roleValue !== 'releasing')
    ) {
      await this.becomeHandedOff(st);
      return;
    }
    this.core.counters.fenced++;
    const unpublished = Math.max(0, log.end - this.core.cursorValue);
    this.core.logger.error(
      { owner: st.host, epoch: st.epoch, ourEpoch: this.core.state.epoch, unpublishedBytes: unpublished },
      'fenced out: another host owns the guest; its bytes stay in the local log',
    );
    if (log.state !== 'closed' && unpublished > 0)
      control.writeMarker({ kind: 'gap', bytes: unpublished, reason: 'fenced' });
    if (this.core.handoffTarget !== null) this.core.setPhase('forced');
    this.core.followReason = `fenced out by ${st.host ?? 'nobody'} at epoch ${st.epoch}`;
    this.core.setRole('fenced');
    this.core.limit = null;
    await this.core.updateState({ role: 'fenced', sealedAt: undefined }, true);
  }

  /** Releasing: everything up to the release marker is in the stream; give it up there. */
  async release(at: number): Promise<void> {
    const { shared, guestId, host } = this.core.options;
    try {
      await shared.release(guestId, this.core.state.epoch, host, at);
    } catch (err) {
      if (err instanceof ConsoledError && err.code === 'HANDOFF_STATE') {
        // A destination asked meanwhile: hand the guest to it at the same offset.
        const record = await this.core.owner();
        if (record.handoff === 'pending' && record.target) {
          this.core.handoffTarget = record.target;
          this.core.logger.info(
            { target: record.target },
            'a handoff was asked during the release; sealing for it',
          );
          await this.seal(at);
          return;
        }
      }
      if (err instanceof ConsoledError && err.code === 'FENCED') {
        await this.lostOwnership(await this.core.owner());
        return;
      }
      throw err;
    }
    this.core.counters.releases++;
    this.core.logger.info(
      { releasedAt: at, epoch: this.core.state.epoch },
      'released the stream: any host may claim it',
    );
    this.core.setRole('released');
    this.core.limit = null;
    await this.core.updateState(
      { role: 'released', known: { epoch: this.core.state.epoch, host: null } },
      true,
    );
  }
}
