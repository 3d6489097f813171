/**
 * The revoked token ids (sidecar/console/token-revocations.ts) and the bounded set of
 * expiring ids under them (expiring-ids.ts): a revocation matches a token by its `jti`
 * or its chain id, lasts until its end and no longer, can only be moved later, stays
 * within its bound, and is kept in `<stateDir>/revoked-tokens` across a reopen.
 */
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { silentLogger } from '../../common/logger.js';
import { ExpiringIds } from '../../sidecar/console/expiring-ids.js';
import { TokenRevocations } from '../../sidecar/console/token-revocations.js';
import { removeTmpDirs, tmpDir } from '../support/tmp.js';

const T0 = 1_700_000_000_000;

afterAll(async () => {
  await removeTmpDirs();
});

describe('ExpiringIds', () => {
  it('holds an id until its expiry, moves it only later, and forgets it after', () => {
    const ids = new ExpiringIds(10);
    expect(ids.set('a', T0 + 100, T0)).toBe(true);
    expect(ids.set('a', T0 + 50, T0)).toBe(false); // earlier: kept as it was
    expect(ids.get('a', T0)).toBe(T0 + 100);
    expect(ids.set('a', T0 + 500, T0)).toBe(true);
    expect(ids.get('a', T0 + 499)).toBe(T0 + 500);
    expect(ids.set('b', T0, T0)).toBe(false); // already over
    ids.forgetExpired(T0 + 500);
    expect(ids.stats()).toEqual({ size: 0, maxEntries: 10, evictions: 0, expired: 1 });
  });

  it('is bounded: evicts the soonest-expiring id, counting it, and not an id whose expiry moved', () => {
    const ids = new ExpiringIds(2);
    ids.set('moved', T0 + 100, T0);
    ids.set('late', T0 + 5000, T0);
    ids.set('moved', T0 + 9000, T0); // its first expiry is now a stale heap item
    ids.set('new', T0 + 7000, T0);
    expect([...ids.entries(T0)].map(([id]) => id).sort()).toEqual(['moved', 'new']);
    expect(ids.evictions).toBe(1);
  });

  it('never forgets an id whose expiry moved later when its old expiry comes', () => {
    const ids = new ExpiringIds(4);
    for (let i = 1; i <= 10_000; i++) ids.set('same', T0 + i, T0);
    ids.forgetExpired(T0 + 5_000);
    expect(ids.get('same', T0 + 5_000)).toBe(T0 + 10_000);
    expect(ids.stats()).toMatchObject({ size: 1, expired: 0, evictions: 0 });
    ids.forgetExpired(T0 + 10_000);
    expect(ids.stats()).toMatchObject({ size: 0, expired: 1 });
  });
});

describe('TokenRevocations', () => {
  it('matches a token by its jti or its chain id, until the revocation ends', () => {
    const r = new TokenRevocations();
    expect(r.revoke('chain-1', T0 + 1000, T0)).toBe(T0 + 1000);
    expect(r.match('chain-1', 'chain-1', T0)).toBe('chain-1'); // the chain's first token
    expect(r.match('renewed-2', 'chain-1', T0)).toBe('chain-1'); // a renewal of it
    expect(r.match('other', 'other', T0)).toBeNull();
    expect(r.match('renewed-2', 'chain-1', T0 + 1000)).toBeNull();
    // A second revocation moves the end later, never earlier.
    r.revoke('x', T0 + 5000, T0);
    expect(r.revoke('x', T0 + 2000, T0)).toBe(T0 + 5000);
    expect(r.revoke('x', T0 + 8000, T0)).toBe(T0 + 8000);
  });

  it('is bounded', () => {
    const r = new TokenRevocations(silentLogger(), 3);
    const now = Date.now();
    for (let i = 0; i < 10; i++) r.revoke(`id${i}`, now + 60_000 + i, now);
    expect(r.stats()).toMatchObject({ size: 3, maxEntries: 3, evictions: 7 });
    // The ones that end latest are the ones kept.
    expect(r.until('id9', now)).toBe(now + 60_009);
    expect(r.until('id0', now)).toBeUndefined();
  });

  it('is kept in <stateDir>/revoked-tokens: reopened, the live revocations hold and the ended ones are dropped', async () => {
    const stateDir = tmpDir('state');
    const now = Date.now();
    const r = TokenRevocations.open(stateDir, silentLogger());
    r.revoke('long', now + 3_600_000);
    r.revoke('long', now + 7_200_000); // moved: a second line
    r.revoke('brief', now + 300);
    r.close();
    const file = join(stateDir, 'revoked-tokens');
    expect((await readFile(file, 'utf8')).trim().split('\n')).toHaveLength(3);
    // A line torn by a crash is skipped.
    await writeFile(file, `${await readFile(file, 'utf8')}torn-li`);
    await new Promise((resolve) => setTimeout(resolve, 350));
    const again = TokenRevocations.open(stateDir, silentLogger());
    expect(again.match('long', 'long')).toBe('long');
    expect(again.until('long')).toBe(now + 7_200_000);
    expect(again.match('brief', 'brief')).toBeNull();
    expect(await readFile(file, 'utf8')).toBe(`long ${now + 7_200_000}\n`);
    again.close();
  });
});
