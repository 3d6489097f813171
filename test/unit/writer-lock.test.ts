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
