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
 * - an `Origin` whose host:port equals the `Host` header (the page this daemon
 *   serves at `/console/{id}`): always allowed;
 * - otherwise the origin must equal an allowlist entry (scheme, host and port,
 *   compared after normalisation), or the allowlist must hold `*`.
 *
 * The same-host rule trusts the `Host` header, which DNS rebinding lets a hostile
 * page choose. That is harmless while a viewer token is required (the page cannot
 * read the token), but a daemon that runs without auth must also require a
 * loopback `Host` ({@link isLoopbackHost}).
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

/** The host:port the `Host` header names, normalised as for a URL of `scheme`; null if malformed. */
function normalizeHostHeader(hostHeader: string, scheme: string): string | null {
  const host = hostHeader.trim();
  if (host === '' || /[/?#@\\\s]/.test(host)) return null;
  try {
    return new URL(`${scheme}//${host}`).host;
  } catch {
    return null;
  }
}

/**
 * Throws ConsoledError ORIGIN_FORBIDDEN unless the WebSocket upgrade's `Origin`
 * is acceptable (see the module comment). `allowlist` entries that are not origins
 * never match; validate them once with {@link validateOriginAllowlist}.
 */
export function checkOrigin(
  originHeader: string | undefined,
  hostHeader: string | undefined,
  allowlist: readonly string[],
): void {
  if (originHeader === undefined) return;
  const origin = normalizeOrigin(originHeader);
  if (origin !== null) {
    if (allowlist.includes(ANY_ORIGIN)) return;
    if (SPECIAL_SCHEMES.has(origin.slice(0, origin.indexOf(':') + 1)) && hostHeader !== undefined) {
      const url = new URL(origin);
      if (normalizeHostHeader(hostHeader, url.protocol) === url.host) return;
    }
    for (const entry of allowlist) {
      if (entry !== ANY_ORIGIN && normalizeOrigin(entry) === origin) return;
    }
  }
  const shown = originHeader.length > 200 ? `${originHeader.slice(0, 200)}…` : originHeader;
  throw new ConsoledError('ORIGIN_FORBIDDEN', `origin ${JSON.stringify(shown)} is not allowed`, {
    origin: shown,
  });
}

/**
 * Whether a `Host` header names the loopback interface (`localhost`, a
 * `*.localhost` name, 127.0.0.0/8 or [::1]), with any port. A daemon serving the
 * console without authentication should refuse other hosts, because DNS rebinding
 * can make a hostile site's name resolve to 127.0.0.1.
 */
export function isLoopbackHost(hostHeader: string | undefined): boolean {
  if (hostHeader === undefined) return false;
  const host = normalizeHostHeader(hostHeader, 'http:');
  if (host === null) return false;
  const hostname = new URL(`http://${host}`).hostname;
  if (hostname === 'localhost' || hostname.endsWith('.localhost')) return true;
  if (hostname === '[::1]') return true;
  return /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(hostname);
}
