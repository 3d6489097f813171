/**
 * How one consoled host proves to another that a proxied console connection comes
 * from a host of the same cluster (docs/design.md "Console across hosts"). The
 * proxying host (the edge) signs each upstream request; the owner checks it before
 * it believes what the request says about the viewer (its address) and counts it as
 * proxied. The viewer's own token is checked by both.
 *
 * The key is derived from the viewer-token secret (`console.tokenSecret`), which the
 * hosts of a cluster share anyway for a token to be valid on every host: anyone who
 * holds it can mint viewer tokens already, so the host credential grants nothing
 * new, and there is no second secret to distribute or rotate. A distinct label keeps
 * the two uses apart: no viewer token can pass as a host credential or back.
 *
 * Header `X-Consoled-Host`: `v1.<hostId>.<issued ms>.<nonce>.<mac>`, the MAC
 * (HMAC-SHA256, base64url) over the host id, the time, the nonce, the request path
 * with its query, and the viewer address header. Valid within CLOCK_SKEW_MS of the
 * owner's clock, once: a nonce seen is refused until it is too old anyway.
 */
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { ConsoledError } from '../../common/errors.js';

/** The header that carries the credential. */
export const HOST_CREDENTIAL_HEADER = 'x-consoled-host';
/** The viewer's address as the edge saw it; believed only with a valid credential. */
export const PROXIED_CLIENT_HEADER = 'x-consoled-client';

const LABEL = 'consoled-host-credential-v1';
/** How far the signer's clock may be from the checker's, either way. */
export const CLOCK_SKEW_MS = 60_000;
/** Most nonces remembered; past it the oldest go (they expire within 2 × CLOCK_SKEW_MS). */
const MAX_NONCES = 100_000;
const HOST_ID = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;
const B64URL = /^[A-Za-z0-9_-]+$/;

/** What a verified credential says. */
export interface VerifiedHost {
  readonly hostId: string;
  /** The viewer's address as the edge saw it ('' when it sent none). */
  readonly client: string;
}

function macOf(key: Buffer, parts: readonly string[]): Buffer {
  return createHmac('sha256', key).update(parts.join('\n')).digest();
}

function refused(why: string): ConsoledError {
  return new ConsoledError('HOST_AUTH_FAILED', `host credential refused: ${why}`);
}

export class HostCredential {
  private readonly key: Buffer;
  /** Nonces seen, with when they stop mattering (ms). */
  private readonly seen = new Map<string, number>();

  constructor(
    tokenSecret: Buffer,
    readonly hostId: string,
  ) {
    this.key = createHmac('sha256', tokenSecret).update(LABEL).digest();
  }

  /** The headers an upstream request for `path` (with its query) carries. */
  sign(path: string, client: string, now = Date.now()): Record<string, string> {
    const issued = String(now);
    const nonce = randomBytes(12).toString('base64url');
    const mac = macOf(this.key, [this.hostId, issued, nonce, path, client]).toString('base64url');
    return {
      [HOST_CREDENTIAL_HEADER]: `v1.${this.hostId}.${issued}.${nonce}.${mac}`,
      [PROXIED_CLIENT_HEADER]: client,
    };
  }

  /**
   * Checks the credential of a request for `path`; throws HOST_AUTH_FAILED. A
   * credential is good once: its nonce is remembered until it is too old to verify.
   */
  verify(header: string, path: string, client: string, now = Date.now()): VerifiedHost {
    const parts = header.split('.');
    if (parts.length !== 5 || parts[0] !== 'v1') throw refused('not v1.<host>.<time>.<nonce>.<mac>');
    const [, hostId = '', issuedText = '', nonce = '', macText = ''] = parts;
    if (
      !HOST_ID.test(hostId) ||
      !/^\d{1,16}$/.test(issuedText) ||
      !B64URL.test(nonce) ||
      !B64URL.test(macText)
    )
      throw refused('malformed');
    const mac = Buffer.from(macText, 'base64url');
    const expected = macOf(this.key, [hostId, issuedText, nonce, path, client]);
    if (mac.length !== expected.length || !timingSafeEqual(mac, expected)) throw refused('bad signature');
    const issued = Number(issuedText);
    if (Math.abs(now - issued) > CLOCK_SKEW_MS)
      throw refused('too old, or the hosts’ clocks differ by over a minute');
    this.forgetOld(now);
    if (this.seen.has(nonce)) throw refused('replayed');
    if (this.seen.size >= MAX_NONCES) {
      const oldest = this.seen.keys().next().value;
      if (oldest !== undefined) this.seen.delete(oldest);
    }
    this.seen.set(nonce, issued + CLOCK_SKEW_MS);
    return { hostId, client };
  }

  private forgetOld(now: number): void {
    // Insertion order is nearly time order: stop at the first one still current.
    for (const [nonce, until] of this.seen) {
      if (until > now) break;
      this.seen.delete(nonce);
    }
  }
}
