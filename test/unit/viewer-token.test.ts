import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { ConsoledError } from '../../common/errors.js';
import {
  issueViewerToken,
  MAX_TOKEN_CHARS,
  parseTtl,
  readUnverifiedClaims,
  renewalExpiryMs,
  UsedTokenRegistry,
  verifyViewerToken,
} from '../../sidecar/console/viewer-token.js';

const secret = randomBytes(32);
const T0 = 1_700_000_000_000; // a whole second, so exp = T0/1000 + ttl/1000 exactly

function errorOf(fn: () => unknown): ConsoledError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(ConsoledError);
    return err as ConsoledError;
  }
  throw new Error('expected a ConsoledError');
}

function codeOf(fn: () => unknown): string {
  return errorOf(fn).code;
}

function payloadOf(token: string): Record<string, unknown> {
  return JSON.parse(Buffer.from(token.split('.')[0]!, 'base64url').toString('utf8')) as Record<
    string,
    unknown
  >;
}

/** A single-use `ro` token for g1, 10 s from T0. */
function singleUseToken(extra: { chain?: string } = {}): string {
  return issueViewerToken(secret, {
    guest: 'g1',
    mode: 'ro',
    ttlMs: 10_000,
    singleUse: true,
    now: T0,
    ...extra,
  });
}

function withPayload(token: string, change: (p: Record<string, unknown>) => void): string {
  const p = payloadOf(token);
  change(p);
  return `${Buffer.from(JSON.stringify(p)).toString('base64url')}.${token.split('.')[1]!}`;
}

describe('issueViewerToken / verifyViewerToken', () => {
  it('round-trips the claims and is compact and URL-safe', () => {
    const token = issueViewerToken(secret, {
      guest: 'g1',
      mode: 'rw',
      ttlMs: 60_000,
      name: 'alice',
      now: T0,
    });
    expect(token).toMatch(/^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]{43}$/);
    expect(token.length).toBeLessThan(300);
    const v = verifyViewerToken(secret, token, { guest: 'g1', wantMode: 'rw', now: T0 });
    expect(v).toMatchObject({ guest: 'g1', mode: 'rw', tokenMode: 'rw', singleUse: false, name: 'alice' });
    expect(v.expiresAtMs).toBe(T0 + 60_000);
    expect(v.jti).toMatch(/^[A-Za-z0-9_-]{22}$/);
    expect(payloadOf(token)).toMatchObject({
      guest: 'g1',
      mode: 'rw',
      exp: (T0 + 60_000) / 1000,
      sub: 'alice',
    });
  });

  it('gives every token a fresh jti', () => {
    const a = issueViewerToken(secret, { guest: 'g1', mode: 'ro', ttlMs: 1000, now: T0 });
    const b = issueViewerToken(secret, { guest: 'g1', mode: 'ro', ttlMs: 1000, now: T0 });
    expect(payloadOf(a)['jti']).not.toBe(payloadOf(b)['jti']);
  });

  it('grants the token mode when no mode is asked for', () => {
    const token = issueViewerToken(secret, { guest: 'g1', mode: 'ro', ttlMs: 1000, now: T0 });
    expect(verifyViewerToken(secret, token, { guest: 'g1', now: T0 }).mode).toBe('ro');
  });

  it('rejects malformed tokens with TOKEN_INVALID', () => {
    const good = issueViewerToken(secret, { guest: 'g1', mode: 'rw', ttlMs: 1000, now: T0 });
    const [p, s] = good.split('.') as [string, string];
    for (const bad of [
      '',
      'abc',
      '.',
      `.${s}`,
      `${p}.`,
      `${p}.${s}.x`,
      `${p}=.${s}`,
      `${p}.${s}=`,
      `${p}.${s.slice(0, -1)}`,
      `${p}.${s}AA`,
      `${p}.${s.replaceAll(/./g, '*')}`,
      `${'A'.repeat(MAX_TOKEN_CHARS)}.${s}`,
    ]) {
      expect(
        codeOf(() => verifyViewerToken(secret, bad, { guest: 'g1', now: T0 })),
        bad,
      ).toBe('TOKEN_INVALID');
    }
  });

  it('rejects a tampered payload (TOKEN_INVALID, not a claim error)', () => {
    const token = issueViewerToken(secret, { guest: 'g1', mode: 'ro', ttlMs: 1000, now: T0 });
    const escalated = withPayload(token, (c) => {
      c['mode'] = 'rw';
    });
    expect(codeOf(() => verifyViewerToken(secret, escalated, { guest: 'g1', now: T0 }))).toBe(
      'TOKEN_INVALID',
    );
    const extended = withPayload(token, (c) => {
      c['exp'] = (c['exp'] as number) + 3600;
    });
    expect(codeOf(() => verifyViewerToken(secret, extended, { guest: 'g1', now: T0 }))).toBe('TOKEN_INVALID');
    const otherGuest = withPayload(token, (c) => {
      c['guest'] = 'g2';
    });
    expect(codeOf(() => verifyViewerToken(secret, otherGuest, { guest: 'g2', now: T0 }))).toBe(
      'TOKEN_INVALID',
    );
  });

  it('rejects a tampered signature and a token signed with another secret', () => {
    const token = issueViewerToken(secret, { guest: 'g1', mode: 'rw', ttlMs: 1000, now: T0 });
    const [p, s] = token.split('.') as [string, string];
    const sig = Buffer.from(s, 'base64url');
    sig[5] = sig[5]! ^ 0x01;
    const flipped = `${p}.${sig.toString('base64url')}`;
    expect(codeOf(() => verifyViewerToken(secret, flipped, { guest: 'g1', now: T0 }))).toBe('TOKEN_INVALID');
    const foreign = issueViewerToken(randomBytes(32), { guest: 'g1', mode: 'rw', ttlMs: 1000, now: T0 });
    expect(codeOf(() => verifyViewerToken(secret, foreign, { guest: 'g1', now: T0 }))).toBe('TOKEN_INVALID');
  });

  it('expires exactly at exp', () => {
    const token = issueViewerToken(secret, { guest: 'g1', mode: 'rw', ttlMs: 60_000, now: T0 });
    expect(() => verifyViewerToken(secret, token, { guest: 'g1', now: T0 + 59_999 })).not.toThrow();
    expect(codeOf(() => verifyViewerToken(secret, token, { guest: 'g1', now: T0 + 60_000 }))).toBe(
      'TOKEN_EXPIRED',
    );
    expect(codeOf(() => verifyViewerToken(secret, token, { guest: 'g1', now: T0 + 3_600_000 }))).toBe(
      'TOKEN_EXPIRED',
    );
  });

  it('rounds exp up, so a token never lives shorter than its TTL', () => {
    const token = issueViewerToken(secret, { guest: 'g1', mode: 'rw', ttlMs: 1500, now: T0 + 250 });
    expect(verifyViewerToken(secret, token, { guest: 'g1', now: T0 + 250 }).expiresAtMs).toBe(T0 + 2000);
  });

  it('is scoped to one guest (TOKEN_WRONG_GUEST)', () => {
    const token = issueViewerToken(secret, { guest: 'g1', mode: 'rw', ttlMs: 1000, now: T0 });
    expect(codeOf(() => verifyViewerToken(secret, token, { guest: 'g10', now: T0 }))).toBe(
      'TOKEN_WRONG_GUEST',
    );
  });

  it('lets rw connect as ro but not ro as rw (TOKEN_WRONG_MODE)', () => {
    const rw = issueViewerToken(secret, { guest: 'g1', mode: 'rw', ttlMs: 1000, now: T0 });
    const ro = issueViewerToken(secret, { guest: 'g1', mode: 'ro', ttlMs: 1000, now: T0 });
    expect(verifyViewerToken(secret, rw, { guest: 'g1', wantMode: 'ro', now: T0 })).toMatchObject({
      mode: 'ro',
      tokenMode: 'rw',
    });
    expect(verifyViewerToken(secret, ro, { guest: 'g1', wantMode: 'ro', now: T0 }).mode).toBe('ro');
    expect(codeOf(() => verifyViewerToken(secret, ro, { guest: 'g1', wantMode: 'rw', now: T0 }))).toBe(
      'TOKEN_WRONG_MODE',
    );
  });

  it('accepts a single-use token once (TOKEN_REUSED after), and a refused attempt does not burn it', () => {
    const used = new UsedTokenRegistry();
    const token = singleUseToken();
    expect(
      codeOf(() =>
        verifyViewerToken(secret, token, { guest: 'g1', wantMode: 'rw', now: T0, usedTokens: used }),
      ),
    ).toBe('TOKEN_WRONG_MODE');
    expect(verifyViewerToken(secret, token, { guest: 'g1', now: T0, usedTokens: used }).singleUse).toBe(true);
    expect(
      codeOf(() => verifyViewerToken(secret, token, { guest: 'g1', now: T0 + 1, usedTokens: used })),
    ).toBe('TOKEN_REUSED');
    // Past its expiry the token is forgotten, and it fails as expired rather than reused.
    expect(
      codeOf(() => verifyViewerToken(secret, token, { guest: 'g1', now: T0 + 10_000, usedTokens: used })),
    ).toBe('TOKEN_EXPIRED');
  });

  it('refuses a single-use token when no registry is given (fails closed)', () => {
    const token = issueViewerToken(secret, {
      guest: 'g1',
      mode: 'ro',
      ttlMs: 1000,
      singleUse: true,
      now: T0,
    });
    expect(codeOf(() => verifyViewerToken(secret, token, { guest: 'g1', now: T0 }))).toBe('INTERNAL');
  });

  it('reports the first failing check: signature before expiry before guest before mode', () => {
    const ro = issueViewerToken(secret, { guest: 'g1', mode: 'ro', ttlMs: 1000, now: T0 });
    expect(codeOf(() => verifyViewerToken(secret, ro, { guest: 'g2', wantMode: 'rw', now: T0 + 5000 }))).toBe(
      'TOKEN_EXPIRED',
    );
    expect(codeOf(() => verifyViewerToken(secret, ro, { guest: 'g2', wantMode: 'rw', now: T0 }))).toBe(
      'TOKEN_WRONG_GUEST',
    );
  });

  it('carries the WebSocket close codes of common/errors.ts', () => {
    const token = issueViewerToken(secret, { guest: 'g1', mode: 'ro', ttlMs: 1000, now: T0 });
    const err = errorOf(() => verifyViewerToken(secret, token, { guest: 'g1', now: T0 + 1000 }));
    expect([err.code, err.wsCloseCode, err.httpStatus]).toEqual(['TOKEN_EXPIRED', 4402, 401]);
  });

  it('validates what it issues', () => {
    const bad: [string, () => unknown][] = [
      ['BAD_CONFIG', () => issueViewerToken(Buffer.alloc(8), { guest: 'g1', mode: 'ro', ttlMs: 1 })],
      ['BAD_CONFIG', () => verifyViewerToken(Buffer.alloc(8), 'a.b', { guest: 'g1' })],
      ['BAD_GUEST_ID', () => issueViewerToken(secret, { guest: '../etc', mode: 'ro', ttlMs: 1 })],
      ['BAD_PARAMETER', () => issueViewerToken(secret, { guest: 'g1', mode: 'wr' as 'rw', ttlMs: 1 })],
      ['BAD_PARAMETER', () => issueViewerToken(secret, { guest: 'g1', mode: 'ro', ttlMs: 0 })],
      ['BAD_PARAMETER', () => issueViewerToken(secret, { guest: 'g1', mode: 'ro', ttlMs: Number.NaN })],
      ['BAD_PARAMETER', () => issueViewerToken(secret, { guest: 'g1', mode: 'ro', ttlMs: 1, name: '' })],
      [
        'BAD_PARAMETER',
        () => issueViewerToken(secret, { guest: 'g1', mode: 'ro', ttlMs: 1, name: 'a\x1b[2J' }),
      ],
      [
        'BAD_PARAMETER',
        () => issueViewerToken(secret, { guest: 'g1', mode: 'ro', ttlMs: 1, name: 'x'.repeat(65) }),
      ],
    ];
    for (const [code, fn] of bad) expect(codeOf(fn)).toBe(code);
  });
});

describe('renewal claims: ren and chn', () => {
  it('round-trip: ren rounded up to a whole second, the chain id defaulting to the jti', () => {
    const token = issueViewerToken(secret, {
      guest: 'g1',
      mode: 'rw',
      ttlMs: 60_000,
      renewableUntilMs: T0 + 3_600_500,
      chain: 'first-token-id',
      now: T0,
    });
    expect(payloadOf(token)).toMatchObject({ ren: (T0 + 3_601_000) / 1000, chn: 'first-token-id' });
    expect(verifyViewerToken(secret, token, { guest: 'g1', now: T0 })).toMatchObject({
      renewableUntilMs: T0 + 3_601_000,
      chain: 'first-token-id',
      issuedAtMs: T0,
      expiresAtMs: T0 + 60_000,
    });
    const plain = issueViewerToken(secret, { guest: 'g1', mode: 'rw', ttlMs: 60_000, now: T0 });
    expect(payloadOf(plain)).not.toHaveProperty('ren');
    expect(payloadOf(plain)).not.toHaveProperty('chn');
    const v = verifyViewerToken(secret, plain, { guest: 'g1', now: T0 });
    expect(v.renewableUntilMs).toBeNull();
    expect(v.chain).toBe(v.jti);
  });

  it('a successor may keep its chain’s iat', () => {
    const token = issueViewerToken(secret, {
      guest: 'g1',
      mode: 'ro',
      ttlMs: 30_000,
      issuedAtMs: T0 - 30_000,
      now: T0,
    });
    expect(payloadOf(token)).toMatchObject({ iat: (T0 - 30_000) / 1000, exp: (T0 + 30_000) / 1000 });
  });

  it('are read without the secret by clients, and refused when malformed', () => {
    const token = issueViewerToken(secret, {
      guest: 'g1',
      mode: 'ro',
      ttlMs: 60_000,
      renewableUntilMs: T0 + 120_000,
      now: T0,
    });
    expect(readUnverifiedClaims(token)).toMatchObject({
      exp: (T0 + 60_000) / 1000,
      ren: (T0 + 120_000) / 1000,
    });
    for (const [claim, value] of [
      ['ren', 'soon'],
      ['ren', 1.5],
      ['chn', 'not/base64url'],
      ['chn', 'x'.repeat(65)],
      ['chn', 7],
    ] as const) {
      const bad = withPayload(token, (p) => {
        p[claim] = value;
      });
      expect(readUnverifiedClaims(bad), `${claim}: ${value}`).toBeNull();
      // Signed or not, a verifier refuses it before looking at the claim.
      expect(codeOf(() => verifyViewerToken(secret, bad, { guest: 'g1', now: T0 }))).toBe('TOKEN_INVALID');
    }
    expect(readUnverifiedClaims('the-admin-token')).toBeNull();
    expect(() => issueViewerToken(secret, { guest: 'g1', mode: 'ro', ttlMs: 1, chain: 'a.b' })).toThrow();
    expect(
      codeOf(() => issueViewerToken(secret, { guest: 'g1', mode: 'ro', ttlMs: 1, renewableUntilMs: -1 })),
    ).toBe('BAD_PARAMETER');
  });

  it('a renewal lives as long as the token it renews, from now’s whole second, and not past ren', () => {
    const token = { issuedAtMs: T0, expiresAtMs: T0 + 300_000, renewableUntilMs: T0 + 3_600_000 };
    // Four minutes in: five minutes again from the current second.
    expect(renewalExpiryMs(token, T0 + 240_400)).toBe(T0 + 540_000);
    // Close to ren: capped at it.
    expect(renewalExpiryMs(token, T0 + 3_500_000)).toBe(T0 + 3_600_000);
    // At ren and after, and without ren: not renewable.
    expect(renewalExpiryMs(token, T0 + 3_600_000)).toBeNull();
    expect(renewalExpiryMs({ ...token, renewableUntilMs: null }, T0 + 1000)).toBeNull();
  });

  it('a revoked jti or chain is refused (TOKEN_REVOKED) before a single-use token is spent', () => {
    const used = new UsedTokenRegistry();
    const token = singleUseToken({ chain: 'chain-1' });
    const revoked = new Set(['chain-1']);
    const isRevoked = (jti: string, chain: string) => revoked.has(jti) || revoked.has(chain);
    expect(
      codeOf(() => verifyViewerToken(secret, token, { guest: 'g1', now: T0, usedTokens: used, isRevoked })),
    ).toBe('TOKEN_REVOKED');
    expect(used.size).toBe(0);
    revoked.clear();
    expect(
      verifyViewerToken(secret, token, { guest: 'g1', now: T0, usedTokens: used, isRevoked }).chain,
    ).toBe('chain-1');
  });
});

describe('UsedTokenRegistry', () => {
  it('remembers an id until its expiry', () => {
    const r = new UsedTokenRegistry();
    expect(r.markUsed('a', T0 + 100, T0)).toBe(true);
    expect(r.markUsed('a', T0 + 100, T0 + 99)).toBe(false);
    expect(r.has('a', T0 + 99)).toBe(true);
    expect(r.markUsed('a', T0 + 100, T0 + 100)).toBe(true); // expired: forgotten, not recorded again
    expect(r.size).toBe(0);
    expect(r.stats()).toMatchObject({ size: 0, evictions: 0, expired: 1 });
  });

  it('is bounded: evicts the soonest-expiring id and counts it', () => {
    const r = new UsedTokenRegistry({ maxEntries: 3 });
    r.markUsed('late', T0 + 9000, T0);
    r.markUsed('soon', T0 + 1000, T0);
    r.markUsed('mid', T0 + 5000, T0);
    expect(r.markUsed('new', T0 + 7000, T0)).toBe(true);
    expect(r.size).toBe(3);
    expect(r.evictions).toBe(1);
    expect(r.has('soon', T0)).toBe(false);
    for (const id of ['late', 'mid', 'new']) expect(r.markUsed(id, T0 + 9000, T0 + 1)).toBe(false);
    r.markUsed('newer', T0 + 8000, T0 + 2);
    expect(r.has('mid', T0 + 2)).toBe(false);
    expect(r.stats()).toEqual({ size: 3, maxEntries: 3, evictions: 2, expired: 0 });
  });

  it('makes room by forgetting expired ids before evicting live ones', () => {
    const r = new UsedTokenRegistry({ maxEntries: 2 });
    r.markUsed('a', T0 + 10, T0);
    r.markUsed('b', T0 + 20, T0);
    r.markUsed('c', T0 + 1000, T0 + 15);
    expect(r.stats()).toMatchObject({ size: 2, evictions: 0, expired: 1 });
  });

  it('stays within its cap under many ids with random expiries', () => {
    const r = new UsedTokenRegistry({ maxEntries: 100 });
    let now = T0;
    for (let i = 0; i < 5000; i++) {
      now += 1;
      r.markUsed(`j${i}`, now + 1 + Math.floor(Math.random() * 500), now);
      expect(r.size).toBeLessThanOrEqual(100);
    }
    const { evictions, expired, size } = r.stats();
    expect(evictions + expired + size).toBe(5000);
  });

  it('rejects a bad cap', () => {
    expect(codeOf(() => new UsedTokenRegistry({ maxEntries: 0 }))).toBe('BAD_CONFIG');
  });
});

describe('parseTtl', () => {
  it('parses units and numbers (milliseconds)', () => {
    expect(parseTtl('90s')).toBe(90_000);
    expect(parseTtl('10m')).toBe(600_000);
    expect(parseTtl('1h')).toBe(3_600_000);
    expect(parseTtl('1d')).toBe(86_400_000);
    expect(parseTtl('250ms')).toBe(250);
    expect(parseTtl('1.5m')).toBe(90_000);
    expect(parseTtl(' 30s ')).toBe(30_000);
    expect(parseTtl(5000)).toBe(5000);
  });

  it('refuses ambiguous, empty, zero and negative values with BAD_PARAMETER', () => {
    for (const bad of [
      '600',
      '',
      '10 m',
      '10M',
      '-1s',
      '0s',
      'm',
      '1w',
      0,
      -5,
      Number.NaN,
      Number.POSITIVE_INFINITY,
    ]) {
      expect(
        codeOf(() => parseTtl(bad)),
        String(bad),
      ).toBe('BAD_PARAMETER');
    }
  });
});
