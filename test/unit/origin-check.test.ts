import { describe, expect, it } from 'vitest';
import { ConsoledError } from '../../common/errors.js';
import {
  checkOrigin,
  isAllowedHost,
  normalizeOrigin,
  validateOriginAllowlist,
} from '../../sidecar/console/origin-check.js';

function allowed(
  origin: string | undefined,
  host: string | undefined,
  list: string[] = [],
  scheme: 'http:' | 'https:' = 'http:',
): boolean {
  try {
    checkOrigin(origin, { scheme, host }, list);
    return true;
  } catch (err) {
    expect(err).toBeInstanceOf(ConsoledError);
    expect((err as ConsoledError).code).toBe('ORIGIN_FORBIDDEN');
    expect((err as ConsoledError).wsCloseCode).toBe(4406);
    return false;
  }
}

describe('checkOrigin', () => {
  it('allows a missing Origin (CLI and other non-browser clients)', () => {
    expect(allowed(undefined, 'h:7070')).toBe(true);
    expect(allowed(undefined, undefined)).toBe(true);
  });

  it('allows same-site origins by default: scheme, host and port, the Host compared canonically', () => {
    expect(allowed('http://127.0.0.1:7070', '127.0.0.1:7070')).toBe(true);
    expect(allowed('http://console.example.com:7070', 'Console.Example.COM:7070')).toBe(true);
    expect(allowed('http://console.example.com', 'console.example.com:80')).toBe(true);
    expect(allowed('https://console.example.com', 'console.example.com', [], 'https:')).toBe(true);
    expect(allowed('https://console.example.com', 'console.example.com:443', [], 'https:')).toBe(true);
    expect(allowed('http://[::1]:7070', '[::1]:7070')).toBe(true);
    // Other spellings of the same address in Host are the same host.
    expect(allowed('http://127.0.0.1:7070', '0x7f.1:7070')).toBe(true);
    expect(allowed('http://127.0.0.1:7070', '2130706433:7070')).toBe(true);
  });

  it('compares the scheme: an https page does not match a plain-HTTP site, nor the other way round', () => {
    expect(allowed('https://console.example.com', 'console.example.com')).toBe(false);
    expect(allowed('https://127.0.0.1:7070', '127.0.0.1:7070')).toBe(false);
    expect(allowed('http://console.example.com', 'console.example.com', [], 'https:')).toBe(false);
  });

  it('refuses an Origin not in the canonical form a browser sends (other spellings of loopback)', () => {
    for (const origin of [
      'http://127.0.0.1.:7070',
      'http://0x7f.1:7070',
      'http://2130706433:7070',
      'http://0177.0.0.1:7070',
      'HTTP://127.0.0.1:7070',
      'http://Console.Example.COM:7070',
      'http://console.example.com:80',
      ' http://127.0.0.1:7070',
    ]) {
      expect(allowed(origin, '127.0.0.1:7070'), origin).toBe(false);
      expect(allowed(origin, 'console.example.com:7070', [origin]), `${origin} listed`).toBe(false);
    }
  });

  it('forbids other hosts and ports by default (cross-site WebSocket hijacking)', () => {
    expect(allowed('https://evil.example', 'console.example.com')).toBe(false);
    expect(allowed('http://127.0.0.1:8080', '127.0.0.1:7070')).toBe(false);
    expect(allowed('http://localhost:7070', '127.0.0.1:7070')).toBe(false);
    expect(allowed('https://console.example.com', 'console.example.com:80')).toBe(false);
    expect(allowed('http://console.example.com.evil.example', 'console.example.com')).toBe(false);
    expect(allowed('http://h:7070', undefined)).toBe(false);
    expect(allowed('http://h:7070', 'h:7070/x')).toBe(false);
    expect(allowed('http://h:7070', 'user@h:7070')).toBe(false);
  });

  it('forbids opaque and malformed origins by default', () => {
    for (const origin of [
      'null',
      '',
      'h:7070',
      'http://h:7070/path',
      'http://u:p@h:7070',
      'file://',
      'http://h:7070, http://x',
    ]) {
      expect(allowed(origin, 'h:7070'), origin).toBe(false);
    }
  });

  it('allows exact allowlist entries, after normalisation, and nothing near them', () => {
    const list = ['https://dashboard.example.com', 'http://ops.example.com:8443/'];
    expect(allowed('https://dashboard.example.com', 'console:7070', list)).toBe(true);
    expect(allowed('https://DASHBOARD.example.com:443', 'console:7070', list)).toBe(false);
    expect(allowed('http://ops.example.com:8443', 'console:7070', list)).toBe(true);
    expect(allowed('http://dashboard.example.com', 'console:7070', list)).toBe(false);
    expect(allowed('https://dashboard.example.com:8443', 'console:7070', list)).toBe(false);
    expect(allowed('https://x.dashboard.example.com', 'console:7070', list)).toBe(false);
    // Same-host stays allowed with a list, so the daemon's own /console page keeps working.
    expect(allowed('http://console:7070', 'console:7070', list)).toBe(true);
  });

  it('allows every well-formed origin with "*"', () => {
    expect(allowed('https://anything.example', 'console:7070', ['*'])).toBe(true);
    expect(allowed('null', 'console:7070', ['*'])).toBe(true);
    expect(allowed('not an origin', 'console:7070', ['*'])).toBe(false);
  });

  it('matches the opaque origin "null" and non-http origins only when listed exactly', () => {
    expect(allowed('null', 'h', ['null'])).toBe(true);
    expect(allowed('chrome-extension://abcdef', 'h', ['chrome-extension://abcdef'])).toBe(true);
    expect(allowed('chrome-extension://other', 'h', ['chrome-extension://abcdef'])).toBe(false);
  });

  it('never matches an invalid allowlist entry', () => {
    expect(allowed('https://a.example', 'h', ['https://a.example/path', 'a.example'])).toBe(false);
  });

  it('puts the origin in the error details, truncated', () => {
    try {
      checkOrigin(`https://${'x'.repeat(300)}.example`, { scheme: 'http:', host: 'h' }, []);
      expect.unreachable();
    } catch (err) {
      const details = (err as ConsoledError).details as { origin: string };
      expect(details.origin.length).toBeLessThanOrEqual(201);
    }
  });
});

describe('validateOriginAllowlist', () => {
  it('normalises entries', () => {
    expect(validateOriginAllowlist(['*', 'HTTPS://A.example:443/', 'http://b.example:8080', 'null'])).toEqual(
      ['*', 'https://a.example', 'http://b.example:8080', 'null'],
    );
  });

  it('fails naming the bad entry', () => {
    for (const bad of ['https://a.example/path', 'a.example', 'https://*.example.com', '', 'http://a?x=1']) {
      try {
        validateOriginAllowlist(['https://ok.example', bad]);
        expect.unreachable(bad);
      } catch (err) {
        expect((err as ConsoledError).code).toBe('BAD_CONFIG');
        expect((err as ConsoledError).message).toContain('[1]');
      }
    }
  });
});

describe('normalizeOrigin', () => {
  it('drops default ports and lower-cases', () => {
    expect(normalizeOrigin('HTTP://Example.COM:80')).toBe('http://example.com');
    expect(normalizeOrigin('https://example.com:8443')).toBe('https://example.com:8443');
    expect(normalizeOrigin('https://bücher.example')).toBe('https://xn--bcher-kva.example');
  });
});

describe('isAllowedHost', () => {
  it('admits exactly localhost, 127.0.0.1 and [::1], with any port, and configured hosts', () => {
    for (const h of [
      'localhost',
      'localhost:7070',
      'LOCALHOST',
      '127.0.0.1',
      '127.0.0.1:7070',
      '[::1]:7070',
    ]) {
      expect(isAllowedHost(h), h).toBe(true);
    }
    expect(isAllowedHost('console.lab:7070', ['console.lab'])).toBe(true);
    expect(isAllowedHost('Console.Lab', ['console.lab'])).toBe(true);
  });

  it('refuses everything else: rebinding-style names, other spellings of loopback', () => {
    for (const h of [
      undefined,
      '',
      'example.com',
      'evil.localhost',
      'demo.localhost:1',
      'localhost.',
      '127.0.0.1.',
      '127.0.0.1.:7070',
      '0x7f.1',
      '0x7f000001:7070',
      '2130706433',
      '0177.0.0.1',
      '127.1.2.3:7070',
      '127.0.0.1.evil.example',
      'localhost.evil.example',
      '10.0.0.1',
      '[::2]',
      '[0:0:0:0:0:0:0:1]',
      'localhost/x',
      'localhost:7070:1',
    ]) {
      expect(isAllowedHost(h), String(h)).toBe(false);
    }
    expect(isAllowedHost('sub.console.lab', ['console.lab'])).toBe(false);
  });
});
