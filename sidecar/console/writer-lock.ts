import { EventEmitter } from 'node:events';
import { ConsoledError } from '../../common/errors.js';

/** Who may hold the lock: a connected `rw` viewer. */
export interface LockCandidate {
  readonly viewerId: string;
  readonly mode: 'ro' | 'rw';
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

  constructor(private readonly allowTakeover: boolean) {
    super();
  }

  get holder(): T | null {
    return this.holderValue;
  }

  get takeoverAllowed(): boolean {
    return this.allowTakeover;
  }

  /** Takes the lock if it is free. Throws TOKEN_WRONG_MODE for `ro`, LOCK_HELD when another holds it. */
  acquire(who: T): void {
    this.assertMayWrite(who);
    if (this.holderValue === who) return;
    if (this.holderValue !== null) {
      throw new ConsoledError('LOCK_HELD', `the writer lock is held by ${this.holderValue.viewerId}`);
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

  /** The first `rw` viewer gets the lock when it is free; returns whether it did. */
  offer(who: T): boolean {
    if (who.mode !== 'rw' || this.holderValue !== null) return false;
    this.set(who, 'acquire');
    return true;
  }

  private assertMayWrite(who: T): void {
    if (who.mode !== 'rw') throw new ConsoledError('TOKEN_WRONG_MODE', 'this connection is read-only');
  }

  private set(to: T | null, cause: LockCause): void {
    const from = this.holderValue;
    this.holderValue = to;
    this.emit('change', { from, to, cause });
  }
}
