/**
 * Who may write a guest's shared stream: the ownership state machine of
 * docs/design.md "Ownership", as one union of roles, one table of transitions and
 * one pure decision (`verdict`) on what an owner record means to this host. The
 * replicator changes its role only through `transition`, and decides what to do
 * after a (re)connect only through `verdict`; both are tested on their own.
 *
 * The rule they hold: a host claims a stream only when nobody owns it and it knows
 * of no later owner (after an explicit attach), as the named destination of a
 * handoff, when an operator forces it, or to restore its own claim that Redis lost.
 * Never because it restarted, re-attached, or found state it cannot read.
 */
import { ConsoledError } from '../../common/errors.js';
import type { OwnerRecord } from './shared-log.js';

/**
 * What this host is to a guest's shared stream right now:
 * - `unverified`: it was (or means to become) the owner but has not confirmed that
 *   with Redis since its last start or reconnect; it captures locally, never appends;
 * - `claiming`: attached explicitly, the stream has no owner: its claim is under way;
 * - `owner`: confirmed; it appends;
 * - `handing-off`: a named destination asked; it drains, writes its handoff marker
 *   and publishes up to it;
 * - `sealed`: it sealed the stream at its final offset and waits for the destination;
 * - `releasing`: a DELETE: it drains, writes its release marker, publishes, releases;
 * - `released`: it gave the stream up; nobody owns it;
 * - `handed-off`: the destination claimed; its chardev is stopped here;
 * - `follower`: another host owns the stream, or this host cannot tell: it captures
 *   locally and serves reads, never appends, never claims on its own;
 * - `fenced`: it was the owner and another host holds a higher epoch (a follower);
 * - `incoming`: the destination of a live migration: it holds what the guest prints
 *   outside its log and asks the owner to hand over;
 * - `adopting`: it claimed as the destination: it writes the seam's markers and then
 *   the held output at the stream's offsets;
 * - `cancelled`: its incoming migration was cancelled.
 */
export type OwnershipRole =
  | 'unverified'
  | 'claiming'
  | 'owner'
  | 'handing-off'
  | 'sealed'
  | 'releasing'
  | 'released'
  | 'handed-off'
  | 'follower'
  | 'fenced'
  | 'incoming'
  | 'adopting'
  | 'cancelled';

/** Roles in which this host writes (or is about to write) the stream. */
export const WRITING_ROLES: ReadonlySet<OwnershipRole> = new Set(['owner', 'handing-off', 'releasing']);

/** Roles that must be confirmed with Redis again after a restart or reconnect. */
export const OWNING_ROLES: ReadonlySet<OwnershipRole> = new Set([
  'owner',
  'handing-off',
  'sealed',
  'releasing',
  'claiming',
]);

export type OwnershipEvent =
  /** Redis said this host holds the stream at its epoch (or a later one it claimed). */
  | 'confirmed'
  /** A reconnect, a failed append or a status check left this host's ownership unconfirmed. */
  | 'unconfirmed'
  /** Nobody owns the stream and this host may claim it (explicit attach, or its own lost claim). */
  | 'may-claim'
  | 'claimed'
  /** Another host owns the stream, or this host cannot tell. */
  | 'follows'
  /** Another host took the stream from this owner with a higher epoch. */
  | 'fenced'
  /** This host had sealed; the destination has claimed. */
  | 'handed-off'
  /** Redis says the stream was released (by this host, before a restart lost the save). */
  | 'released'
  | 'handoff-requested'
  | 'handoff-withdrawn'
  | 'sealed'
  | 'seal-cancelled'
  | 'release-requested'
  | 'release-failed'
  | 'incoming-claimed'
  | 'adopted'
  | 'adopt-refused'
  | 'incoming-cancelled';

const TRANSITIONS: Readonly<Record<OwnershipRole, Partial<Record<OwnershipEvent, OwnershipRole>>>> = {
  unverified: {
    confirmed: 'owner',
    'handoff-requested': 'handing-off',
    'release-requested': 'releasing',
    'may-claim': 'claiming',
    follows: 'follower',
    fenced: 'fenced',
    'handed-off': 'handed-off',
    sealed: 'sealed',
    released: 'released',
    unconfirmed: 'unverified',
  },
  claiming: {
    claimed: 'owner',
    follows: 'follower',
    confirmed: 'owner',
    unconfirmed: 'unverified',
  },
  owner: {
    confirmed: 'owner',
    unconfirmed: 'unverified',
    'handoff-requested': 'handing-off',
    'release-requested': 'releasing',
    fenced: 'fenced',
    sealed: 'sealed',
  },
  'handing-off': {
    'handoff-withdrawn': 'owner',
    sealed: 'sealed',
    fenced: 'fenced',
    'handed-off': 'handed-off',
    unconfirmed: 'handing-off',
  },
  sealed: {
    'handed-off': 'handed-off',
    'seal-cancelled': 'owner',
    fenced: 'handed-off',
    unconfirmed: 'sealed',
  },
  releasing: {
    released: 'released',
    'release-failed': 'owner',
    sealed: 'sealed',
    'handoff-requested': 'handing-off',
    fenced: 'fenced',
    unconfirmed: 'releasing',
  },
  released: { unconfirmed: 'released' },
  'handed-off': { unconfirmed: 'handed-off' },
  follower: { unconfirmed: 'follower', follows: 'follower' },
  fenced: { unconfirmed: 'fenced', follows: 'fenced' },
  incoming: {
    'incoming-claimed': 'adopting',
    'incoming-cancelled': 'cancelled',
    unconfirmed: 'incoming',
  },
  adopting: { adopted: 'owner', 'adopt-refused': 'fenced', unconfirmed: 'adopting' },
  cancelled: { unconfirmed: 'cancelled' },
};

/** The role `event` leads to from `role`; an event the table does not allow is a bug. */
export function transition(role: OwnershipRole, event: OwnershipEvent): OwnershipRole {
  const next = TRANSITIONS[role][event];
  if (next === undefined)
    throw new ConsoledError('INTERNAL', `ownership: event ${event} is not allowed in role ${role}`);
  return next;
}

/** Whether `event` is allowed in `role` (for callers that ignore a stale event). */
export function allows(role: OwnershipRole, event: OwnershipEvent): boolean {
  return TRANSITIONS[role][event] !== undefined;
}

/** The highest epoch this host has known for the stream, and who held it. */
export interface Knowledge {
  readonly epoch: number;
  readonly host: string | null;
}

export const NO_KNOWLEDGE: Knowledge = { epoch: 0, host: null };

/** Adds what an owner record says to what this host knew. */
export function learn(known: Knowledge, record: Pick<OwnerRecord, 'epoch' | 'host'>): Knowledge {
  if (record.epoch > known.epoch) return { epoch: record.epoch, host: record.host };
  if (record.epoch === known.epoch && known.host === null && record.host !== null)
    return { epoch: record.epoch, host: record.host };
  return known;
}

/** What this host was to the stream before it looked (persisted; see replication-state.ts). */
export type Standing =
  /** The owner at `epoch` (owner, handing off, sealed or releasing when it stopped). */
  | { readonly kind: 'owner'; readonly epoch: number; readonly sealed: boolean }
  /** Explicitly attached: it claims if nobody owns the stream and it knows of no later owner. */
  | { readonly kind: 'claim-if-unowned' }
  /** Anything else: it never claims on its own. */
  | { readonly kind: 'follower' };

/** What to do about an owner record, from this host's standing and knowledge. */
export type Verdict =
  /** The record names this host: it owns the stream at `epoch` (it may be a claim whose save was lost). */
  | { readonly kind: 'own'; readonly epoch: number; readonly sealed: boolean }
  /** Redis lost this host's claim (no hash, or an older epoch): claim again above `knownEpoch`. */
  | { readonly kind: 'reclaim'; readonly expectedEpoch: number }
  /** Nobody owns the stream and this host may take it. */
  | { readonly kind: 'claim'; readonly expectedEpoch: number }
  /** This host sealed for a handoff and the destination holds the stream now. */
  | { readonly kind: 'handed-off' }
  /** This host owned the stream and another host took it with a higher epoch. */
  | { readonly kind: 'fenced' }
  /** The record says this host released the stream. */
  | { readonly kind: 'released' }
  /** Another host owns the stream, or nobody does and this host may not take it. */
  | { readonly kind: 'follow'; readonly reason: string };

/**
 * The decision of docs/design.md "Ownership" on one owner record. `known` must
 * already include what this host knew before reading `record` (not the record itself).
 */
export function verdict(host: string, standing: Standing, known: Knowledge, record: OwnerRecord): Verdict {
  const unowned = record.host === null;
  if (record.host === host && record.epoch >= known.epoch) {
    return { kind: 'own', epoch: record.epoch, sealed: record.handoff === 'sealed' };
  }
  if (standing.kind === 'owner') {
    const ours = standing.epoch;
    if (!unowned && record.epoch >= ours) {
      return standing.sealed && record.epoch > ours ? { kind: 'handed-off' } : { kind: 'fenced' };
    }
    if (record.epoch > ours || known.epoch > ours) return { kind: 'fenced' };
    if (unowned && record.handoff === 'released' && record.epoch === ours) return { kind: 'released' };
    // No hash, or an older epoch than ours (a failover to a replica that missed our
    // claim, a restart without persistence): ours is the latest claim anybody made.
    return { kind: 'reclaim', expectedEpoch: record.epoch };
  }
  if (standing.kind === 'claim-if-unowned') {
    if (!unowned) return { kind: 'follow', reason: `owned by ${record.host} at epoch ${record.epoch}` };
    if (known.epoch > record.epoch) {
      return {
        kind: 'follow',
        reason: `this host knows epoch ${known.epoch} (${known.host ?? 'unknown host'}) but the stream says ${record.epoch}: Redis lost the owner; an operator decides`,
      };
    }
    return { kind: 'claim', expectedEpoch: record.epoch };
  }
  return {
    kind: 'follow',
    reason: unowned
      ? 'nobody owns the stream, and this host does not claim on its own'
      : `owned by ${record.host}`,
  };
}
