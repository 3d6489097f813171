import { EventEmitter } from 'node:events';
import { ConsoledError } from '../../common/errors.js';

/** Who may hold the lock: a connected `rw` viewer. */
export interface LockCandidate {
  readonly viewerId: string;
  readonly mode: 'ro' | 'rw';
  /** The name its token carries (`admin` for the admin token); what a reservation matches. */
  readonly name?: string | undefined;
  /**
   * Its token's chain id (viewer-token.ts): the same across single-use successors and
   * renewals, whose `jti`s differ; a reservation with a chain matches it too.
   */
  readonly chain?: string | undefined;
}

/**
 * The lock kept for a writer whose connection the daemon closed for an upgrade or a
 * restart (docs/design.md "Upgrade"): until `untilMs` (ms since the epoch) only a
 * viewer whose token has the same name gets it. Defined once here: a migration's
 * destination reuses it.
 */
export interface LockReservation {
  readonly name: string;
  /** The holder's token chain, when it had one: only a token of that chain gets the lock back. */
  readonly chain?: string | undefined;
  readonly untilMs: number;
}

/** Why the lock changed hands. */
export type LockCause = 'acquire' | 'takeover' | 'release' | 'left';

export interface LockChange<T extends LockCandidate> {
  readonly from: T | null;
  readonly to: T | null;
  readonly cause: LockCause;
}

export interface WriterLockEvents<T extends LockCandidate> {
  change: [LockChange<T>];
}

/**
 * One writer per guest (docs/design.md "WebSocket protocol"): only the holder's
 * keystrokes reach the guest. The first `rw` viewer gets it, a `rw` viewer may take
 * it over when takeover is allowed, the holder may release it, and it is free when
 * the holder leaves. One setter (`set`) changes the holder and emits `change`.
 */
export class WriterLock<T extends LockCandidate> extends EventEmitter<WriterLockEvents<T>> {
  private holderValue: T | null = null;
  private reservationValue: LockReservation | null = null;

  constructor(private readonly allowTakeover: boolean) {
    super();
  }

  get holder(): T | null {
    return this.holderValue;
  }

  get takeoverAllowed(): boolean {
    return this.allowTakeover;
  }

  /** The reservation in force, if any (an expired one is dropped). */
  get reservation(): LockReservation | null {
    const r = this.reservationValue;
    if (r && r.untilMs <= Date.now()) this.reservationValue = null;
    return this.reservationValue;
  }

  /**
   * Keeps the free lock for the writer named `name` until `untilMs`; a reservation
   * already past is ignored. The holder, if any, keeps it.
   */
  reserve(reservation: LockReservation): void {
    if (reservation.untilMs > Date.now()) this.reservationValue = { ...reservation };
  }

  /**
   * What to keep when the daemon closes every viewer for an upgrade or a restart: the
   * holder's name and token chain, for `forMs` (null when nobody named holds the lock, or `forMs` is 0).
   */
  reservationForRestart(forMs: number): LockReservation | null {
    const name = this.holderValue?.name;
    if (!name || forMs <= 0) return this.reservation;
    const chain = this.holderValue?.chain;
    return { name, ...(chain !== undefined ? { chain } : {}), untilMs: Date.now() + forMs };
  }

  /** Whether `who` may not take the free lock because it is kept for someone else. */
  private reservedAgainst(who: T): LockReservation | null {
    const r = this.reservation;
    return r && (r.name !== who.name || (r.chain !== undefined && r.chain !== who.chain)) ? r : null;
  }

  /** Takes the lock if it is free. Throws TOKEN_WRONG_MODE for `ro`, LOCK_HELD when another holds it. */
  acquire(who: T): void {
    this.assertMayWrite(who);
    if (this.holderValue === who) return;
    if (this.holderValue !== null) {
      throw new ConsoledError('LOCK_HELD', `the writer lock is held by ${this.holderValue.viewerId}`);
    }
    const reserved = this.reservedAgainst(who);
    if (reserved) {
      throw new ConsoledError(
        'LOCK_HELD',
        `the writer lock is kept for ${reserved.name} until ${new Date(reserved.untilMs).toISOString()} (a restart)`,
      );
    }
    this.set(who, 'acquire');
  }

  /** Takes the lock, from its holder if need be. Throws TOKEN_WRONG_MODE or TAKEOVER_DISABLED. */
  takeover(who: T): void {
    this.assertMayWrite(who);
    if (this.holderValue === who) return;
    if (this.holderValue === null) {
      this.set(who, 'acquire');
      return;
    }
    if (!this.allowTakeover)
      throw new ConsoledError('TAKEOVER_DISABLED', 'takeover is disabled for this guest');
    this.set(who, 'takeover');
  }

  /** The holder gives the lock up. Throws NOT_WRITER for anyone else. */
  release(who: T): void {
    if (this.holderValue !== who)
      throw new ConsoledError('NOT_WRITER', 'only the writer can release the lock');
    this.set(null, 'release');
  }

  /** A viewer left: the lock is free if it held it. */
  leave(who: T): void {
    if (this.holderValue === who) this.set(null, 'left');
  }

  /**
   * The first `rw` viewer gets the lock when it is free and not kept for another
   * name; returns whether it did.
   */
  offer(who: T): boolean {
    if (who.mode !== 'rw' || this.holderValue !== null || this.reservedAgainst(who)) return false;
    this.set(who, 'acquire');
    return true;
  }

  private assertMayWrite(who: T): void {
    if (who.mode !== 'rw') throw new ConsoledError('TOKEN_WRONG_MODE', 'this connection is read-only');
  }

  private set(to: T | null, cause: LockCause): void {
    if (to !== null) this.reservationValue = null; // taken (or taken over): the reservation is spent
    const from = this.holderValue;
    this.holderValue = to;
    this.emit('change', { from, to, cause });
  }
}
