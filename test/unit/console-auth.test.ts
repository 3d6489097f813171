/**
 * sidecar/console/console-auth.ts on its own: what a renewal and a successor keep of
 * the token they continue (guest, mode, name, single use, `ren`, the chain, the
 * lifetime), the issuing bounds of `renewableFor`, and revocation by chain.
 */
import { describe, expect, it } from 'vitest';
import { ConsoledError } from '../../common/errors.js';
import { ConsoleAuth } from '../../sidecar/console/console-auth.js';
import { readUnverifiedClaims } from '../../sidecar/console/viewer-token.js';

const auth = () =>
  new ConsoleAuth(Buffer.from('console-auth-unit-test-secret-0123456789'), 'the-admin-token-0123456789', {
    maxUsedTokens: 100,
    maxTokenTtlMs: 3_600_000,
    maxSessionTtlMs: 7_200_000,
    requireAuth: true,
  });

function codeOf(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(ConsoledError);
    return (err as ConsoledError).code;
  }
  throw new Error('expected a ConsoledError');
}

describe('ConsoleAuth renewal', () => {
  it('renews into the same chain, mode, name and ren, for the same lifetime from now, capped at ren', () => {
    const a = auth();
    const now = Date.now();
    const first = a.issue({ guest: 'g1', mode: 'rw', ttlMs: 60_000, name: 'alice', renewableForMs: 90_000 });
    const grant = a.verify(first.token, 'g1', 'ro');
    const later = now + 20_000;
    const { issued, grant: next } = a.renew(grant, later);
    const claims = readUnverifiedClaims(issued.token)!;
    const before = readUnverifiedClaims(first.token)!;
    expect(claims).toMatchObject({ guest: 'g1', mode: 'rw', sub: 'alice', ren: before.ren, chn: first.id });
    expect(claims.exp - claims.iat).toBe(before.exp - before.iat);
    expect(claims.iat).toBe(Math.floor(later / 1000));
    expect(next.token).toMatchObject({ jti: issued.id, chain: first.id, expiresAtMs: issued.expiresAtMs });
    expect(next.mode).toBe('ro'); // the connection's mode is kept; the token's is rw
    // Near ren the lifetime is cut at ren; at ren nothing more.
    const capped = a.renew(next, now + 80_000).issued;
    expect(capped.expiresAtMs).toBe(before.ren! * 1000);
    expect(codeOf(() => a.renew(next, before.ren! * 1000))).toBe('TOKEN_NOT_RENEWABLE');
  });

  it('refuses tokens without ren, the admin token, and a revoked chain', () => {
    const a = auth();
    const plain = a.issue({ guest: 'g1', mode: 'ro', ttlMs: 60_000 });
    expect(codeOf(() => a.renew(a.verify(plain.token, 'g1', undefined)))).toBe('TOKEN_NOT_RENEWABLE');
    expect(codeOf(() => a.renew(a.verify('the-admin-token-0123456789', 'g1', undefined)))).toBe(
      'TOKEN_NOT_RENEWABLE',
    );
    const first = a.issue({ guest: 'g1', mode: 'ro', ttlMs: 60_000, renewableForMs: 600_000 });
    const grant = a.verify(first.token, 'g1', undefined);
    const renewed = a.renew(grant).issued;
    a.revocations.revoke(first.id, Date.now() + 60_000);
    expect(codeOf(() => a.renew(grant))).toBe('TOKEN_REVOKED');
    expect(codeOf(() => a.verify(renewed.token, 'g1', undefined))).toBe('TOKEN_REVOKED');
  });

  it('gives a single-use token a successor in the same chain, with its ren, expiry and iat', () => {
    const a = auth();
    const first = a.issue({
      guest: 'g1',
      mode: 'ro',
      ttlMs: 60_000,
      singleUse: true,
      renewableForMs: 600_000,
    });
    const successor = a.successor(a.verify(first.token, 'g1', undefined), 'g1')!;
    const before = readUnverifiedClaims(first.token)!;
    expect(readUnverifiedClaims(successor.token)).toMatchObject({
      once: true,
      chn: first.id,
      ren: before.ren,
      exp: before.exp,
      iat: before.iat,
    });
    expect(codeOf(() => a.verify(first.token, 'g1', undefined))).toBe('TOKEN_REUSED');
  });

  it('issues renewable tokens only within maxSessionTtlMs and for at least their ttl', () => {
    const a = auth();
    expect(codeOf(() => a.issue({ guest: 'g1', mode: 'ro', ttlMs: 60_000, renewableForMs: 7_200_001 }))).toBe(
      'BAD_PARAMETER',
    );
    expect(codeOf(() => a.issue({ guest: 'g1', mode: 'ro', ttlMs: 60_000, renewableForMs: 59_999 }))).toBe(
      'BAD_PARAMETER',
    );
    expect(
      a.issue({ guest: 'g1', mode: 'ro', ttlMs: 60_000, renewableForMs: 7_200_000 }).renewableUntil,
    ).toBeDefined();
  });
});
