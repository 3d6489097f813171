/** WriterLock: one holder, acquire, takeover (when allowed), release, leave; every change emitted once. */
import { describe, expect, it } from 'vitest';
import type { ConsoledError } from '../../common/errors.js';
import { type LockChange, WriterLock } from '../../sidecar/console/writer-lock.js';

interface V {
  viewerId: string;
  mode: 'ro' | 'rw';
}

const a: V = { viewerId: 'a', mode: 'rw' };
const b: V = { viewerId: 'b', mode: 'rw' };
const r: V = { viewerId: 'r', mode: 'ro' };

function codeOf(f: () => void): string | undefined {
  try {
    f();
  } catch (err) {
    return (err as ConsoledError).code;
  }
  return undefined;
}

describe('WriterLock', () => {
  it('follows offer, acquire, takeover, release and leave', () => {
    const lock = new WriterLock<V>(true);
    const changes: Array<[string | null, string | null, string]> = [];
    lock.on('change', (c: LockChange<V>) =>
      changes.push([c.from?.viewerId ?? null, c.to?.viewerId ?? null, c.cause]),
    );
    expect(lock.offer(r)).toBe(false);
    expect(lock.offer(a)).toBe(true);
    expect(lock.offer(b)).toBe(false);
    expect(codeOf(() => lock.acquire(b))).toBe('LOCK_HELD');
    expect(codeOf(() => lock.acquire(r))).toBe('TOKEN_WRONG_MODE');
    expect(codeOf(() => lock.takeover(r))).toBe('TOKEN_WRONG_MODE');
    expect(codeOf(() => lock.release(b))).toBe('NOT_WRITER');
    lock.takeover(b);
    lock.takeover(b); // already held: no change
    lock.leave(a); // not the holder: no change
    lock.release(b);
    lock.acquire(a);
    lock.leave(a);
    expect(lock.holder).toBe(null);
    expect(changes).toEqual([
      [null, 'a', 'acquire'],
      ['a', 'b', 'takeover'],
      ['b', null, 'release'],
      [null, 'a', 'acquire'],
      ['a', null, 'left'],
    ]);
  });

  it('refuses takeover when disabled, but a free lock can still be taken', () => {
    const lock = new WriterLock<V>(false);
    lock.takeover(a);
    expect(lock.holder).toBe(a);
    expect(codeOf(() => lock.takeover(b))).toBe('TAKEOVER_DISABLED');
    expect(lock.holder).toBe(a);
  });
});

describe('WriterLock reservation (an upgrade closed the writer)', () => {
  interface N extends V {
    name: string;
  }
  const ops1: N = { viewerId: 'v1', mode: 'rw', name: 'ops' };
  const ops2: N = { viewerId: 'v2', mode: 'rw', name: 'ops' };
  const other: N = { viewerId: 'v3', mode: 'rw', name: 'someone-else' };

  it('keeps the lock for the same name: others wait, the same name takes it back', () => {
    const before = new WriterLock<N>(true);
    expect(before.offer(ops1)).toBe(true);
    const kept = before.reservationForRestart(5000);
    expect(kept?.name).toBe('ops');

    const after = new WriterLock<N>(true); // the successor's hub
    after.reserve(kept!);
    expect(after.offer(other)).toBe(false);
    expect(codeOf(() => after.acquire(other))).toBe('LOCK_HELD');
    expect(after.offer(ops2)).toBe(true);
    expect(after.holder).toBe(ops2);
    expect(after.reservation).toBeNull(); // spent
  });

  it('with a token chain, only that chain takes it back: the same name on another token waits', () => {
    interface C extends N {
      chain: string;
    }
    const mine: C = { viewerId: 'v1', mode: 'rw', name: 'ops', chain: 'chain-1' };
    const mySuccessor: C = { viewerId: 'v2', mode: 'rw', name: 'ops', chain: 'chain-1' };
    const sameNameOtherToken: C = { viewerId: 'v3', mode: 'rw', name: 'ops', chain: 'chain-2' };
    const before = new WriterLock<C>(true);
    before.offer(mine);
    const kept = before.reservationForRestart(5000);
    expect(kept).toMatchObject({ name: 'ops', chain: 'chain-1' });
    const after = new WriterLock<C>(true);
    after.reserve(kept!);
    expect(after.offer(sameNameOtherToken)).toBe(false);
    expect(codeOf(() => after.acquire(sameNameOtherToken))).toBe('LOCK_HELD');
    expect(after.offer(mySuccessor)).toBe(true);
  });

  it('lapses: after its time anyone may take the lock', () => {
    const lock = new WriterLock<N>(true);
    lock.reserve({ name: 'ops', untilMs: Date.now() - 1 }); // already past: ignored
    expect(lock.reservation).toBeNull();
    lock.reserve({ name: 'ops', untilMs: Date.now() + 60_000 });
    expect(lock.offer(other)).toBe(false);
    lock.takeover(other); // an explicit takeover is the operator's choice: it wins
    expect(lock.holder).toBe(other);
    expect(lock.reservation).toBeNull();
  });

  it('keeps nothing when nobody named holds the lock, or the window is 0', () => {
    const lock = new WriterLock<N>(true);
    expect(lock.reservationForRestart(5000)).toBeNull();
    lock.offer(ops1);
    expect(lock.reservationForRestart(0)).toBeNull();
  });
});
