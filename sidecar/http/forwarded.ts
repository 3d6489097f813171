/**
 * Who a request really comes from. Behind a reverse proxy every client has the
 * proxy's address, so the proxy's forwarded headers name the client: RFC 7239
 * `Forwarded` (preferred when present) or `X-Forwarded-For`, `-Proto`, `-Host`.
 * Anyone can send those headers, so they are believed only from a peer listed in
 * `trustedProxies`, and the client is the nearest address in the chain that is not
 * itself a trusted proxy (walking right to left: the entries to its left were
 * written by the client and can be anything).
 *
 * The result feeds the console's per-address budgets, the audit log's `remote`,
 * and the Origin check's scheme and host.
 */
import type { IncomingMessage } from 'node:http';
import { BlockList, isIP } from 'node:net';

export interface ClientInfo {
  /** The client's address: the peer's, or the one a trusted proxy forwarded. */
  readonly address: string;
  /** The scheme the client used: `https:` on the TLS listener, or when a trusted proxy says so. */
  readonly scheme: 'http:' | 'https:';
  /** The host the client asked for: the `Host` header, or the host a trusted proxy forwarded. */
  readonly host: string | undefined;
  /** Whether the peer is a trusted proxy whose headers were used. */
  readonly proxied: boolean;
}

/** `::ffff:10.0.0.1` (an IPv4 client on a dual-stack socket) is `10.0.0.1`. */
function plainAddress(address: string): string {
  return address.startsWith('::ffff:') && isIP(address.slice(7)) === 4 ? address.slice(7) : address;
}

function unquote(value: string): string {
  const v = value.trim();
  return v.length >= 2 && v.startsWith('"') && v.endsWith('"') ? v.slice(1, -1).replace(/\\(.)/g, '$1') : v;
}

/** A `for=` node (RFC 7239 section 6): `192.0.2.1`, `192.0.2.1:80`, `[2001:db8::1]:80`, `unknown`, `_hidden`. */
function nodeAddress(node: string): string {
  const v = unquote(node);
  const bracketed = /^\[([^\]]+)\](?::\d+)?$/.exec(v);
  if (bracketed) return bracketed[1]!;
  const v4 = /^(\d{1,3}(?:\.\d{1,3}){3})(?::\d+)?$/.exec(v);
  return v4 ? v4[1]! : v;
}

function headerList(value: string | string[] | undefined): string[] {
  if (value === undefined) return [];
  const joined = Array.isArray(value) ? value.join(',') : value;
  return joined
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s.length > 0);
}

interface Hop {
  readonly address: string;
  readonly proto: string | undefined;
  readonly host: string | undefined;
}

function forwardedHops(header: string | string[] | undefined): Hop[] {
  return headerList(header).map((element) => {
    const pairs = new Map<string, string>();
    for (const pair of element.split(';')) {
      const eq = pair.indexOf('=');
      if (eq > 0) pairs.set(pair.slice(0, eq).trim().toLowerCase(), unquote(pair.slice(eq + 1)));
    }
    const forNode = pairs.get('for');
    return {
      address: forNode === undefined ? 'unknown' : nodeAddress(forNode),
      proto: pairs.get('proto'),
      host: pairs.get('host'),
    };
  });
}

/** Longest client address kept: a forwarded one is text a proxy passed on. */
const MAX_ADDRESS_CHARS = 64;

/**
 * The key a per-address budget counts a client under: its address, or for IPv6 its
 * /64 (one subscriber's network: a client with a /64 has billions of addresses).
 */
export function addressBudgetKey(address: string): string {
  if (isIP(address) !== 6) return address;
  const [head = '', tail] = address.toLowerCase().split('::') as [string, string | undefined];
  const left = head === '' ? [] : head.split(':');
  const right = tail === undefined || tail === '' ? [] : tail.split(':');
  const groups =
    tail === undefined ? left : [...left, ...Array(8 - left.length - right.length).fill('0'), ...right];
  return `${groups
    .slice(0, 4)
    .map((g) => g.replace(/^0+(?=.)/, ''))
    .join(':')}::/64`;
}

function last(values: string[]): string | undefined {
  return values[values.length - 1];
}

/** The set of trusted proxies (`trustedProxies`), and the client behind them. */
export class TrustedProxies {
  private readonly list = new BlockList();
  readonly size: number;

  /** `entries` are validated by the config schema (addresses or CIDR blocks). */
  constructor(entries: readonly string[]) {
    for (const entry of entries) {
      const [address = '', prefix] = entry.split('/');
      const type = isIP(address) === 6 ? 'ipv6' : 'ipv4';
      if (prefix === undefined) this.list.addAddress(address, type);
      else this.list.addSubnet(address, Number(prefix), type);
    }
    this.size = entries.length;
  }

  /** Whether `address` (as a socket reports it) is a trusted proxy. */
  trusts(address: string | undefined): boolean {
    if (address === undefined || this.size === 0) return false;
    const plain = plainAddress(address);
    const family = isIP(plain);
    if (family === 0) return false;
    return this.list.check(plain, family === 6 ? 'ipv6' : 'ipv4');
  }

  /** The client of `req`: see the module comment. */
  client(req: IncomingMessage): ClientInfo {
    const peer = plainAddress(req.socket.remoteAddress ?? 'unknown');
    const encrypted = (req.socket as { encrypted?: boolean }).encrypted === true; // the TLS listener
    const direct: ClientInfo = {
      address: peer,
      scheme: encrypted ? 'https:' : 'http:',
      host: req.headers.host,
      proxied: false,
    };
    if (!this.trusts(peer)) return direct;
    const hops: Hop[] =
      req.headers.forwarded !== undefined
        ? forwardedHops(req.headers.forwarded)
        : headerList(req.headers['x-forwarded-for']).map((a) => ({
            address: nodeAddress(a),
            proto: last(headerList(req.headers['x-forwarded-proto'])),
            host: last(headerList(req.headers['x-forwarded-host'])),
          }));
    if (hops.length === 0) {
      // A trusted proxy that names no client still tells the scheme and host.
      const proto = last(headerList(req.headers['x-forwarded-proto']));
      const host = last(headerList(req.headers['x-forwarded-host']));
      return { ...direct, scheme: proto === 'https' ? 'https:' : 'http:', host: host ?? direct.host };
    }
    let chosen = hops[0]!;
    for (let i = hops.length - 1; i >= 0; i--) {
      chosen = hops[i]!;
      if (!this.trusts(chosen.address)) break;
    }
    return {
      address: chosen.address.slice(0, MAX_ADDRESS_CHARS),
      scheme: chosen.proto?.toLowerCase() === 'https' ? 'https:' : 'http:',
      host: chosen.host ?? direct.host,
      proxied: true,
    };
  }
}
