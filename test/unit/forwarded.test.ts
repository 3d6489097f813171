/**
 * Forwarded headers (sidecar/http/forwarded.ts): believed only from a trusted proxy,
 * the client is the rightmost address that is not a trusted proxy, and per-address
 * budgets count an IPv6 client by its /64. The daemon-level attacks are in
 * integration/console-network.test.ts; these are the parsing cases.
 */
import type { IncomingMessage } from 'node:http';
import { describe, expect, it } from 'vitest';
import { addressBudgetKey, TrustedProxies } from '../../sidecar/http/forwarded.js';

/** The two fields `client()` reads of a request. */
function req(peer: string, headers: Record<string, string>): IncomingMessage {
  return { socket: { remoteAddress: peer }, headers: { host: 'consoled:7070', ...headers } } as never;
}

const proxies = new TrustedProxies(['10.0.0.0/8', '::1', 'fd00::/8']);

describe('TrustedProxies.client', () => {
  it('ignores forwarded headers from a peer that is not trusted', () => {
    const c = proxies.client(
      req('192.0.2.9', {
        'x-forwarded-for': '198.51.100.1',
        'x-forwarded-proto': 'https',
        forwarded: 'for=1.2.3.4',
      }),
    );
    expect(c).toEqual({ address: '192.0.2.9', scheme: 'http:', host: 'consoled:7070', proxied: false });
  });

  it('takes the rightmost untrusted X-Forwarded-For address, and the nearest proxy scheme and host', () => {
    const c = proxies.client(
      req('::ffff:10.1.1.1', {
        'x-forwarded-for': '6.6.6.6, 198.51.100.1, 10.2.2.2',
        'x-forwarded-proto': 'http, https',
        'x-forwarded-host': 'console.example.com',
      }),
    );
    expect(c).toEqual({
      address: '198.51.100.1',
      scheme: 'https:',
      host: 'console.example.com',
      proxied: true,
    });
  });

  it('reads RFC 7239 Forwarded, quoted IPv6 with port included, and prefers it', () => {
    const c = proxies.client(
      req('::1', {
        forwarded:
          'for=6.6.6.6;proto=http, for="[2001:db8::7]:4711";proto=https;host="c.example", for=10.0.0.3',
        'x-forwarded-for': '203.0.113.1',
      }),
    );
    expect(c).toEqual({ address: '2001:db8::7', scheme: 'https:', host: 'c.example', proxied: true });
  });

  it('a trusted proxy that names no client still gives the scheme', () => {
    expect(proxies.client(req('10.0.0.1', { 'x-forwarded-proto': 'https' }))).toMatchObject({
      address: '10.0.0.1',
      scheme: 'https:',
      proxied: false,
    });
  });
});

describe('addressBudgetKey', () => {
  it('keeps IPv4 addresses, and counts IPv6 by /64', () => {
    expect(addressBudgetKey('198.51.100.1')).toBe('198.51.100.1');
    expect(addressBudgetKey('2001:db8::1')).toBe(addressBudgetKey('2001:db8:0:0:ffff::2'));
    expect(addressBudgetKey('2001:db8::1')).not.toBe(addressBudgetKey('2001:db8:0:1::1'));
  });
});
