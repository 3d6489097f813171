/**
 * The `Origin` check on WebSocket upgrades: the defence against cross-site
 * WebSocket hijacking. Browsers attach cookies and ambient credentials to a
 * WebSocket handshake from any site and the same-origin policy does not apply to
 * it, so a server that does not check `Origin` lets any web page drive the console
 * (OpenStack nova's console proxies, CVE-2015-0259:
 * https://nvd.nist.gov/vuln/detail/CVE-2015-0259).
 *
 * Rules:
 * - no `Origin` header: allowed. Browsers always send one on a WebSocket handshake,
 *   so its absence means a non-browser client (CLI, orchestrator), which a hostile
 *   web page cannot impersonate;
 * - an `Origin` whose scheme, host and port equal the request's (the page this
 *   daemon serves at `/console/{id}`): always allowed. The request's scheme is
 *   `http:`, or the one a trusted proxy forwarded (forwarded.ts), so a page on
 *   `https://` does not match a plain-HTTP daemon and the other way round;
 * - otherwise the origin must equal an allowlist entry (scheme, host and port,
 *   compared after normalisation), or the allowlist must hold `*`.
 *
 * The same-host rule trusts the `Host` header, which DNS rebinding lets a hostile
 * page choose. That is harmless while a viewer token is required (the page cannot
 * read the token), but a daemon that runs without auth must also require a
 * loopback or configured `Host` ({@link isAllowedHost}).
 */
import { ConsoledError } from '../../common/errors.js';

/** The allowlist entry that admits every origin. */
export const ANY_ORIGIN = '*';

const SPECIAL_SCHEMES = new Set(['http:', 'https:']);
// WHATWG URL accepts hosts such as `*.example.com`; an origin's host is a DNS name or an IP.
const HOSTNAME = /^(?:\[[0-9a-f:.]+\]|[a-z0-9_.-]+)$/;
const OPAQUE_ORIGIN = /^[a-z][a-z0-9+.-]*:\/\/[^/?#\s]+$/;

/**
 * Normalises a serialised origin (`scheme://host[:port]`): lower-case scheme and
 * host, default port dropped, IDN in punycode. Returns null when it is not one.
 * The literal `null` (sandboxed frames, `file:` pages) normalises to itself.
 */
export function normalizeOrigin(value: string): string | null {
  const text = value.trim();
  if (text === 'null') return 'null';
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    return null;
  }
  if (SPECIAL_SCHEMES.has(url.protocol)) {
    // An origin has no path, query, fragment or credentials; `new URL` fills in "/".
    const bare = /^[a-z][a-z0-9+.-]*:\/\/[^/?#]+\/?$/i.test(text);
    if (!bare || url.username !== '' || url.password !== '' || !HOSTNAME.test(url.hostname)) return null;
    return `${url.protocol}//${url.host}`;
  }
  // Other schemes (browser extensions and the like) are compared as written.
  const lower = text.toLowerCase();
  return OPAQUE_ORIGIN.test(lower) ? lower : null;
}

/**
 * Validates and normalises a configured allowlist; for the config loader, so that a
 * typo fails at start naming the entry instead of silently matching nothing.
 * Throws BAD_CONFIG.
 */
export function validateOriginAllowlist(entries: readonly string[]): string[] {
  return entries.map((entry, i) => {
    if (entry === ANY_ORIGIN) return entry;
    const normalized = typeof entry === 'string' ? normalizeOrigin(entry) : null;
    if (normalized === null) {
      throw new ConsoledError(
        'BAD_CONFIG',
        `console.allowedOrigins[${i}]: ${JSON.stringify(entry)} is not an origin (scheme://host[:port]) or "*"`,
      );
    }
    return normalized;
  });
}

/** The host:port the `Host` header names, canonical as in a URL of `scheme`; null if malformed. */
function canonicalHostHeader(hostHeader: string, scheme: string): string | null {
  const host = hostHeader.trim();
  if (host === '' || /[/?#@\\\s]/.test(host)) return null;
  try {
    return new URL(`${scheme}//${host}`).host;
  } catch {
    return null;
  }
}

/** The site a request was made to: its scheme and `Host` (forwarded ones behind a trusted proxy). */
export interface RequestSite {
  readonly scheme: 'http:' | 'https:';
  readonly host: string | undefined;
}

/**
 * Throws ConsoledError ORIGIN_FORBIDDEN unless the WebSocket upgrade's `Origin`
 * is acceptable (see the module comment). The Origin must be in the canonical form
 * a browser sends (`http://0x7f.1` or `HTTP://Host` never come from one); the same-host
 * rule compares scheme, host and port, the host canonically (WHATWG URL host
 * parsing, so `Host: 2130706433` is 127.0.0.1). `allowlist` entries that are not
 * origins never match; validate them once with {@link validateOriginAllowlist}.
 */
export function checkOrigin(
  originHeader: string | undefined,
  site: RequestSite,
  allowlist: readonly string[],
): void {
  if (originHeader === undefined) return;
  const origin = normalizeOrigin(originHeader);
  if (origin !== null && origin === originHeader) {
    if (allowlist.includes(ANY_ORIGIN)) return;
    if (
      site.host !== undefined &&
      origin === `${site.scheme}//${canonicalHostHeader(site.host, site.scheme)}`
    )
      return;
    for (const entry of allowlist) {
      if (entry !== ANY_ORIGIN && normalizeOrigin(entry) === origin) return;
    }
  }
  const shown = originHeader.length > 200 ? `${originHeader.slice(0, 200)}…` : originHeader;
  throw new ConsoledError('ORIGIN_FORBIDDEN', `origin ${JSON.stringify(shown)} is not allowed`, {
    origin: shown,
  });
}

/** The names a console without auth answers to besides `console.allowedHosts`. */
const LOOPBACK_NAMES = new Set(['localhost', '127.0.0.1', '[::1]']);

/**
 * Whether a `Host` header (with any port) is exactly `localhost`, `127.0.0.1`,
 * `[::1]` or one of `allowedHosts`, as written: no `*.localhost`, no trailing dot, no
 * other spelling of 127.0.0.1 (`0x7f.1`, `2130706433`). A daemon serving the console
 * without authentication refuses other hosts, because DNS rebinding can make a
 * hostile site's name resolve to 127.0.0.1, and the browser then sends that name.
 */
export function isAllowedHost(hostHeader: string | undefined, allowedHosts: readonly string[] = []): boolean {
  if (hostHeader === undefined) return false;
  const m = /^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(?::(\d{1,5}))?$/.exec(hostHeader.trim());
  if (!m) return false;
  const name = m[1]!.toLowerCase();
  return LOOPBACK_NAMES.has(name) || allowedHosts.some((h) => h.toLowerCase() === name);
}
