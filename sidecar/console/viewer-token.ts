/**
 * Viewer tokens for the WebSocket console (README "Tokens"):
 * HMAC-SHA256 signed, scoped to one guest and one mode, expiring, optionally
 * single-use. Compact and URL-safe, in the manner of a JWS compact token without
 * the header: `base64url(payload JSON) "." base64url(HMAC-SHA256)`.
 *
 * The MAC covers a fixed domain label plus the encoded payload, so a secret that is
 * also used to sign something else can never produce a valid viewer token by accident.
 * The version lives in the label: a future format changes the label and old tokens
 * stop verifying (they expire within minutes anyway).
 */
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { ConsoledError } from '../../common/errors.js';
import { assertGuestId, isGuestId } from '../../common/guest-id.js';
import { ExpiringIds, type ExpiringIdsStats } from './expiring-ids.js';

export type ViewerMode = 'ro' | 'rw';

/** The signed payload. Field names follow JWT where one exists (`exp`, `iat`, `jti`, `sub`). */
export interface ViewerTokenClaims {
  /** Guest id the token is valid for. */
  guest: string;
  /** Highest mode the token grants. */
  mode: ViewerMode;
  /** Expiry, seconds since the epoch; the token is valid strictly before it. */
  exp: number;
  /** Issue time, seconds since the epoch. */
  iat: number;
  /** Random id (128 bits, base64url); the key for single-use bookkeeping. */
  jti: string;
  /** Present and true for a single-use token. */
  once?: true;
  /** Display name shown to other viewers (for example as the lock holder). */
  sub?: string;
  /**
   * Renewable until, seconds since the epoch: only a token with it can be renewed in
   * band (`{"type":"renew"}`), and no renewal expires after it (README "Tokens").
   */
  ren?: number;
  /**
   * Chain id: the `jti` of the first token of a renewal or successor chain; absent on
   * that first token. Revoking it revokes the whole chain.
   */
  chn?: string;
}

export interface IssueViewerTokenOptions {
  guest: string;
  mode: ViewerMode;
  /** Lifetime in milliseconds; `exp` is rounded up to the next whole second. */
  ttlMs: number;
  /** @default false */
  singleUse?: boolean | undefined;
  /** Display name, 1–64 printable characters. */
  name?: string | undefined;
  /** Clock, ms since the epoch. @default Date.now() */
  now?: number | undefined;
  /** `ren`: renewable until this time (ms since the epoch, rounded up to a whole second). */
  renewableUntilMs?: number | undefined;
  /** `chn`: the chain this token continues (the `jti` of the chain's first token). */
  chain?: string | undefined;
  /**
   * `iat` to write, ms since the epoch: a successor keeps its chain's, so that its
   * lifetime (`exp - iat`) stays the chain's. @default now
   */
  issuedAtMs?: number | undefined;
}

export interface VerifyViewerTokenOptions {
  /** The guest the connection is for. */
  guest: string;
  /** The mode asked for; `rw` tokens may connect `ro`. @default the token's own mode */
  wantMode?: ViewerMode | undefined;
  /** Clock, ms since the epoch. @default Date.now() */
  now?: number | undefined;
  /** Required to accept single-use tokens; a single-use token without one is refused. */
  usedTokens?: UsedTokenRegistry | undefined;
  /** Whether a token's `jti` or chain id was revoked (token-revocations.ts); none: nothing is. */
  isRevoked?: ((jti: string, chain: string) => boolean) | undefined;
}

export interface VerifiedViewerToken {
  guest: string;
  /** The mode granted for this connection: `wantMode`, or the token's mode. */
  mode: ViewerMode;
  /** The mode the token itself grants. */
  tokenMode: ViewerMode;
  jti: string;
  expiresAtMs: number;
  /** `iat` in ms: with `expiresAtMs`, the lifetime a renewal gives again. */
  issuedAtMs: number;
  singleUse: boolean;
  name: string | undefined;
  /** `ren` in ms; null: not renewable. */
  renewableUntilMs: number | null;
  /** The chain id: `chn`, or the token's own `jti` when it starts a chain. */
  chain: string;
}

/** Shortest secret accepted: 128 bits. */
export const MIN_SECRET_BYTES = 16;
/** Tokens are a few hundred bytes; refuse to even parse anything much longer. */
export const MAX_TOKEN_CHARS = 2048;
/** Longest display name (`sub`). */
export const MAX_NAME_CHARS = 64;

const MAC_LABEL = 'consoled-viewer-token-v1.';
const SIGNATURE_BYTES = 32;
const JTI_BYTES = 16;
const B64URL = /^[A-Za-z0-9_-]+$/;
/** A token id (`jti`, `chn`) as consoled accepts one: base64url, 1 to 64 characters. */
export const TOKEN_ID_PATTERN = /^[A-Za-z0-9_-]{1,64}$/;
// C0, DEL and C1 controls: a name is displayed in other people's terminals and pages.
const CONTROL_CHARS = /[\u0000-\u001f\u007f-\u009f]/;

function checkSecret(secret: Buffer): void {
  if (!Buffer.isBuffer(secret) || secret.length < MIN_SECRET_BYTES) {
    throw new ConsoledError(
      'BAD_CONFIG',
      `the viewer token secret must be at least ${MIN_SECRET_BYTES} bytes`,
    );
  }
}

function mac(secret: Buffer, encodedPayload: string): Buffer {
  return createHmac('sha256', secret).update(MAC_LABEL).update(encodedPayload).digest();
}

function isMode(value: unknown): value is ViewerMode {
  return value === 'ro' || value === 'rw';
}

function isValidName(value: unknown): value is string {
  return (
    typeof value === 'string' &&
    value.length > 0 &&
    value.length <= MAX_NAME_CHARS &&
    !CONTROL_CHARS.test(value)
  );
}

/** Decodes base64url, refusing padding, stray characters and non-canonical trailing bits. */
function decodeB64url(text: string): Buffer | null {
  if (!B64URL.test(text)) return null;
  const bytes = Buffer.from(text, 'base64url');
  return bytes.toString('base64url') === text ? bytes : null;
}

/** Issues a signed viewer token. Throws BAD_PARAMETER, BAD_GUEST_ID or BAD_CONFIG on bad input. */
export function issueViewerToken(secret: Buffer, options: IssueViewerTokenOptions): string {
  checkSecret(secret);
  const guest = assertGuestId(options.guest);
  if (!isMode(options.mode)) throw new ConsoledError('BAD_PARAMETER', 'mode must be "ro" or "rw"');
  if (typeof options.ttlMs !== 'number' || !Number.isFinite(options.ttlMs) || options.ttlMs <= 0) {
    throw new ConsoledError('BAD_PARAMETER', 'ttlMs must be a positive number of milliseconds');
  }
  if (options.name !== undefined && !isValidName(options.name)) {
    throw new ConsoledError(
      'BAD_PARAMETER',
      `name must be 1-${MAX_NAME_CHARS} characters without control characters`,
    );
  }
  const { renewableUntilMs, chain } = options;
  if (renewableUntilMs !== undefined && !(Number.isSafeInteger(renewableUntilMs) && renewableUntilMs > 0)) {
    throw new ConsoledError('BAD_PARAMETER', 'renewableUntilMs must be a time in ms since the epoch');
  }
  if (chain !== undefined && !TOKEN_ID_PATTERN.test(chain)) {
    throw new ConsoledError('BAD_PARAMETER', 'chain must be a token id');
  }
  const now = options.now ?? Date.now();
  const claims: ViewerTokenClaims = {
    guest,
    mode: options.mode,
    exp: Math.ceil((now + options.ttlMs) / 1000),
    iat: Math.floor((options.issuedAtMs ?? now) / 1000),
    jti: randomBytes(JTI_BYTES).toString('base64url'),
    ...(options.singleUse ? { once: true as const } : {}),
    ...(options.name !== undefined ? { sub: options.name } : {}),
    ...(renewableUntilMs !== undefined ? { ren: Math.ceil(renewableUntilMs / 1000) } : {}),
    ...(chain !== undefined ? { chn: chain } : {}),
  };
  const payload = Buffer.from(JSON.stringify(claims), 'utf8').toString('base64url');
  return `${payload}.${mac(secret, payload).toString('base64url')}`;
}

function invalid(why: string): ConsoledError {
  return new ConsoledError('TOKEN_INVALID', `viewer token rejected: ${why}`);
}

function parseClaims(json: Buffer): ViewerTokenClaims {
  let value: unknown;
  try {
    value = JSON.parse(json.toString('utf8'));
  } catch {
    throw invalid('payload is not JSON');
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value))
    throw invalid('payload is not an object');
  const c = value as Record<string, unknown>;
  if (!isGuestId(c['guest'])) throw invalid('bad guest claim');
  if (!isMode(c['mode'])) throw invalid('bad mode claim');
  if (!Number.isSafeInteger(c['exp']) || !Number.isSafeInteger(c['iat'])) throw invalid('bad time claims');
  if (typeof c['jti'] !== 'string' || !B64URL.test(c['jti'])) throw invalid('bad jti claim');
  if (c['once'] !== undefined && c['once'] !== true) throw invalid('bad once claim');
  if (c['sub'] !== undefined && !isValidName(c['sub'])) throw invalid('bad sub claim');
  if (c['ren'] !== undefined && !Number.isSafeInteger(c['ren'])) throw invalid('bad ren claim');
  if (c['chn'] !== undefined && (typeof c['chn'] !== 'string' || !TOKEN_ID_PATTERN.test(c['chn'])))
    throw invalid('bad chn claim');
  return c as unknown as ViewerTokenClaims;
}

/**
 * The claims of a token without checking its signature, or null when it is not
 * shaped like a viewer token. For clients, which cannot check the signature, to
 * read `exp` and `ren` (when to renew), and for a token this process just signed;
 * never for a decision on a token someone presented ({@link decodeViewerToken}).
 */
export function readUnverifiedClaims(token: string): ViewerTokenClaims | null {
  if (typeof token !== 'string' || token.length > MAX_TOKEN_CHARS) return null;
  const dot = token.indexOf('.');
  const payload = dot > 0 ? decodeB64url(token.slice(0, dot)) : null;
  if (payload === null) return null;
  try {
    return parseClaims(payload);
  } catch {
    return null;
  }
}

/**
 * The expiry (ms) of a token that renews `token` at `nowMs`: the same lifetime
 * (`exp - iat`) counted from now's whole second, capped at `ren`. Null when it is not
 * renewable at `nowMs`: no `ren`, or `ren` has come.
 */
export function renewalExpiryMs(
  token: Pick<VerifiedViewerToken, 'issuedAtMs' | 'expiresAtMs' | 'renewableUntilMs'>,
  nowMs: number = Date.now(),
): number | null {
  const until = token.renewableUntilMs;
  if (until === null || until <= nowMs) return null;
  const lifetimeMs = token.expiresAtMs - token.issuedAtMs;
  return Math.min(Math.floor(nowMs / 1000) * 1000 + lifetimeMs, until);
}

/**
 * Checks a token's shape and signature and parses its claims; throws TOKEN_INVALID.
 * Expiry, guest, mode and single use are the caller's to check ({@link verifyViewerToken}).
 */
export function decodeViewerToken(secret: Buffer, token: string): ViewerTokenClaims {
  checkSecret(secret);
  if (typeof token !== 'string' || token.length === 0 || token.length > MAX_TOKEN_CHARS) {
    throw invalid('empty or oversized');
  }
  const dot = token.indexOf('.');
  if (dot <= 0 || dot !== token.lastIndexOf('.')) throw invalid('not two dot-separated parts');
  const encodedPayload = token.slice(0, dot);
  const payload = decodeB64url(encodedPayload);
  const signature = decodeB64url(token.slice(dot + 1));
  if (payload === null || signature === null) throw invalid('not base64url');
  // The length is public (always 32 bytes), so checking it first leaks nothing, and
  // timingSafeEqual requires equal lengths.
  if (signature.length !== SIGNATURE_BYTES || !timingSafeEqual(signature, mac(secret, encodedPayload))) {
    throw invalid('bad signature');
  }
  return parseClaims(payload);
}

/** Throws TOKEN_EXPIRED when the token is no longer valid at `now`; returns the expiry in ms. */
export function checkViewerTokenExpiry(claims: ViewerTokenClaims, now: number = Date.now()): number {
  const expiresAtMs = claims.exp * 1000;
  if (now >= expiresAtMs) {
    throw new ConsoledError('TOKEN_EXPIRED', undefined, { expiredAt: new Date(expiresAtMs).toISOString() });
  }
  return expiresAtMs;
}

/**
 * Verifies a viewer token for one connection. Checks run in this order, and the
 * first failure is thrown: TOKEN_INVALID (shape, signature, claims), TOKEN_EXPIRED,
 * TOKEN_WRONG_GUEST, TOKEN_WRONG_MODE, TOKEN_REVOKED, TOKEN_REUSED. A single-use token is recorded
 * as used only once every other check has passed, so a refused attempt does not
 * burn it.
 */
export function verifyViewerToken(
  secret: Buffer,
  token: string,
  options: VerifyViewerTokenOptions,
): VerifiedViewerToken {
  const claims = decodeViewerToken(secret, token);
  const now = options.now ?? Date.now();
  const expiresAtMs = checkViewerTokenExpiry(claims, now);
  if (claims.guest !== options.guest) throw new ConsoledError('TOKEN_WRONG_GUEST');
  const mode = options.wantMode ?? claims.mode;
  if (!isMode(mode)) throw new ConsoledError('BAD_PARAMETER', 'mode must be "ro" or "rw"');
  if (mode === 'rw' && claims.mode !== 'rw') {
    throw new ConsoledError('TOKEN_WRONG_MODE', 'the token grants read-only access');
  }
  const chain = claims.chn ?? claims.jti;
  if (options.isRevoked?.(claims.jti, chain)) throw new ConsoledError('TOKEN_REVOKED');
  const singleUse = claims.once === true;
  if (singleUse) {
    // Fail closed: without a registry a single-use token would be reusable.
    if (options.usedTokens === undefined) {
      throw new ConsoledError(
        'INTERNAL',
        'a single-use viewer token was verified without a used-token registry',
      );
    }
    if (!options.usedTokens.markUsed(claims.jti, expiresAtMs, now)) throw new ConsoledError('TOKEN_REUSED');
  }
  return {
    guest: claims.guest,
    mode,
    tokenMode: claims.mode,
    jti: claims.jti,
    expiresAtMs,
    issuedAtMs: claims.iat * 1000,
    singleUse,
    name: claims.sub,
    renewableUntilMs: claims.ren === undefined ? null : claims.ren * 1000,
    chain,
  };
}

export interface UsedTokenRegistryOptions {
  /** Most token ids held at once. @default 100000 */
  maxEntries?: number | undefined;
  /**
   * Called with each id newly recorded as used, before `markUsed` returns: where it
   * is persisted (used-token-journal.ts). A throw refuses the token, which stays
   * recorded (fail closed).
   */
  onRecord?: ((jti: string, expiresAtMs: number) => void) | undefined;
}

export type UsedTokenRegistryStats = ExpiringIdsStats;

/**
 * Remembers the ids of single-use tokens already used, each until its token
 * expires (after that the token fails TOKEN_EXPIRED anyway). Bounded (expiring-ids.ts):
 * when full, the id whose token expires soonest is evicted and counted; an evicted
 * token could be replayed until it expires, so a non-zero `evictions` deserves a
 * warning and a larger cap or shorter TTLs.
 */
export class UsedTokenRegistry {
  readonly maxEntries: number;
  readonly #onRecord: ((jti: string, expiresAtMs: number) => void) | undefined;
  /**
   * The ids themselves, for the journal that loads them back at start
   * (used-token-journal.ts); anything else records through `markUsed`.
   */
  readonly ids: ExpiringIds;

  constructor(options: UsedTokenRegistryOptions = {}) {
    this.ids = new ExpiringIds(options.maxEntries ?? 100_000);
    this.maxEntries = this.ids.maxEntries;
    this.#onRecord = options.onRecord;
  }

  /**
   * Records `jti` as used until `expiresAtMs`. Returns false when it was already
   * recorded and has not expired: the token is being reused.
   */
  markUsed(jti: string, expiresAtMs: number, nowMs: number = Date.now()): boolean {
    this.ids.forgetExpired(nowMs);
    if (this.ids.has(jti, nowMs)) return false;
    if (!this.ids.set(jti, expiresAtMs, nowMs)) return true; // expired already: nothing to hold
    this.#onRecord?.(jti, expiresAtMs);
    return true;
  }

  /** Whether `jti` is recorded as used and not yet expired. */
  has(jti: string, nowMs: number = Date.now()): boolean {
    return this.ids.has(jti, nowMs);
  }

  get size(): number {
    return this.ids.size;
  }

  /** The ids recorded and not yet expired, with their expiry (ms since the epoch). */
  entries(nowMs: number = Date.now()): IterableIterator<[string, number]> {
    return this.ids.entries(nowMs);
  }

  get evictions(): number {
    return this.ids.evictions;
  }

  stats(): UsedTokenRegistryStats {
    return this.ids.stats();
  }
}

const TTL_PATTERN = /^(\d+(?:\.\d+)?)(ms|s|m|h|d)$/;
const TTL_UNIT_MS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/**
 * Parses a token lifetime: a number is milliseconds; a string needs a unit
 * (`500ms`, `90s`, `10m`, `1h`, `1d`). A bare number in a string is refused because
 * it is ambiguous (seconds or milliseconds?). Throws BAD_PARAMETER.
 */
export function parseTtl(value: string | number): number {
  let ms: number;
  if (typeof value === 'number') {
    ms = value;
  } else {
    const match = typeof value === 'string' ? TTL_PATTERN.exec(value.trim()) : null;
    if (match === null) {
      throw new ConsoledError('BAD_PARAMETER', `bad TTL ${JSON.stringify(value)}: use e.g. 90s, 10m, 1h`);
    }
    ms = Number(match[1]) * TTL_UNIT_MS[match[2]!]!;
  }
  ms = Math.round(ms);
  if (!Number.isSafeInteger(ms) || ms <= 0) {
    throw new ConsoledError('BAD_PARAMETER', `bad TTL ${JSON.stringify(value)}: must be positive`);
  }
  return ms;
}
