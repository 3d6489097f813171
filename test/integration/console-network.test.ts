/**
 * Network-facing console attacks against the built daemon (issue 12, item 3 and the
 * Origin and Host findings): sockets that never authenticate cannot fill the
 * console's connections, their refusals are one audit episode instead of a line
 * each, forwarded headers count only from `trustedProxies`, the Origin check
 * compares the scheme and refuses other spellings of loopback, and a daemon without
 * console auth answers only to exact loopback or configured Host names.
 */
import { request } from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ConsoleViewer } from '../support/console-viewer.js';
import {
  closeAllPeers,
  type DaemonHandle,
  SocketPeer,
  startDaemon,
  stopAllDaemons,
} from '../support/daemon.js';
import { removeTmpDirs } from '../support/tmp.js';
import { waitFor } from '../support/wait.js';

type AuditLine = Record<string, unknown>;

/** The daemon's audit lines so far. */
function auditLines(d: DaemonHandle): AuditLine[] {
  const out: AuditLine[] = [];
  for (const line of d.logs().split('\n')) {
    const json = line.slice(line.indexOf('{'));
    try {
      const parsed = JSON.parse(json) as AuditLine;
      if (parsed['component'] === 'audit') out.push(parsed);
    } catch {
      // not a JSON line
    }
  }
  return out;
}

/** The status of a GET with a Host header of our choosing (fetch would not send one). */
function statusWithHost(d: DaemonHandle, path: string, host: string): Promise<number> {
  const url = new URL(d.url);
  return new Promise((resolve, reject) => {
    const req = request({ host: url.hostname, port: url.port, path, headers: { host } }, (res) => {
      res.resume();
      resolve(res.statusCode ?? 0);
    });
    req.on('error', reject);
    req.end();
  });
}

let peer: SocketPeer;
const guest = () => ({ id: 'vm', source: { type: 'tcp', host: '127.0.0.1', port: peer.port } });

beforeAll(async () => {
  peer = await SocketPeer.listen();
});

afterAll(async () => {
  await stopAllDaemons();
  await closeAllPeers();
  await removeTmpDirs();
});

describe('connections that never authenticate', () => {
  let d: DaemonHandle;
  beforeAll(async () => {
    d = await startDaemon({
      config: {
        console: {
          maxConnections: 4,
          maxPendingPerAddress: 3,
          maxPendingConnections: 6,
          authTimeoutMs: 60_000,
          refusalEpisodeMs: 500,
        },
        guests: [guest()],
      },
    });
  });

  it('use their own small budget per address; tokens in the header and the admin still get in; one audit episode', async () => {
    const held: ConsoleViewer[] = [];
    const refusals: string[] = [];
    // The attacker's forwarded headers are not believed: this daemon trusts no proxy.
    for (let i = 0; i < 40; i++) {
      try {
        held.push(
          await ConsoleViewer.open(d.url, 'vm', {
            noAuth: true,
            headers: { 'x-forwarded-for': `10.9.0.${i}` },
          }),
        );
      } catch (err) {
        const refusal = (err as { refusal?: { status: number; code: string } }).refusal;
        if (!refusal) throw err;
        refusals.push(`${refusal.status} ${refusal.code}`);
      }
    }
    expect(held.length).toBe(3);
    expect(new Set(refusals)).toEqual(new Set(['429 TOO_MANY_PENDING']));
    expect(refusals.length).toBe(37);

    // Authenticated clients are not counted against the pending budget, and the
    // admin is not counted against maxConnections at all.
    const viewers: ConsoleViewer[] = [];
    for (let i = 0; i < 4; i++) {
      const t = await d.json<{ token: string }>('POST', '/v1/guests/vm/tokens', { mode: 'ro', ttl: '5m' });
      viewers.push(await ConsoleViewer.connect(d.url, 'vm', { token: t.token, header: true }));
    }
    const admin = await ConsoleViewer.connect(d.url, 'vm', { token: d.token, header: true });
    expect(admin.welcome).toMatchObject({ mode: 'rw' });

    // 37 refusals, one audit line, then one episode line with the rest counted.
    const refusedLines = () =>
      auditLines(d).filter((l) => l['event'] === 'console.refused' && l['code'] === 'TOO_MANY_PENDING');
    const episode = await waitFor('the episode summary', () =>
      auditLines(d).find((l) => l['event'] === 'console.refused.episode' && l['code'] === 'TOO_MANY_PENDING'),
    );
    expect(refusedLines().length).toBe(1);
    expect(refusedLines()[0]).toMatchObject({ address: '127.0.0.1', guest: 'vm' });
    expect(episode).toMatchObject({ address: '127.0.0.1', repeated: 36, guests: ['vm'] });

    // A flood that names another guest in every request is one episode too.
    for (let i = 0; i < 20; i++) {
      expect(
        await ConsoleViewer.refusal(d.url, `nobody-${i}`, { token: d.token, header: true }),
      ).toMatchObject({
        code: 'GUEST_NOT_FOUND',
      });
    }
    const notFound = await waitFor('the GUEST_NOT_FOUND episode summary', () =>
      auditLines(d).find((l) => l['event'] === 'console.refused.episode' && l['code'] === 'GUEST_NOT_FOUND'),
    );
    expect(notFound).toMatchObject({ repeated: 19 });
    expect(
      auditLines(d).filter((l) => l['event'] === 'console.refused' && l['code'] === 'GUEST_NOT_FOUND').length,
    ).toBe(1);

    // When the held sockets go, their places are free again.
    for (const v of held) v.ws.terminate();
    await waitFor('a pending place to be free', async () => {
      try {
        const v = await ConsoleViewer.open(d.url, 'vm', { noAuth: true });
        held.push(v);
        return true;
      } catch {
        return false;
      }
    });
    for (const v of [...held, ...viewers, admin]) v.ws.terminate();
  });
});

describe('trustedProxies', () => {
  let d: DaemonHandle;
  beforeAll(async () => {
    d = await startDaemon({
      config: {
        trustedProxies: ['127.0.0.0/8'],
        console: { maxPendingPerAddress: 2, maxPendingConnections: 3, authTimeoutMs: 60_000 },
        guests: [guest()],
      },
    });
  });

  it('budgets per forwarded client address, the rightmost untrusted one; the audit log names it', async () => {
    const open = (xff: string) =>
      ConsoleViewer.open(d.url, 'vm', { noAuth: true, headers: { 'x-forwarded-for': xff } }).then(
        (v) => v,
        (err: { refusal?: { code: string } }) => err.refusal?.code ?? 'error',
      );
    // The client put 203.0.113.x in front; the proxy appended the real address.
    const a1 = await open('203.0.113.1, 198.51.100.1');
    const a2 = await open('203.0.113.2, 198.51.100.1');
    expect(await open('203.0.113.3, 198.51.100.1')).toBe('TOO_MANY_PENDING');
    // RFC 7239 Forwarded is understood too.
    const b1 = await ConsoleViewer.open(d.url, 'vm', {
      noAuth: true,
      headers: { forwarded: 'for="198.51.100.2:4711";proto=http' },
    });
    expect(await open('198.51.100.3')).toBe('TOO_MANY_PENDING'); // the total
    const refused = await waitFor('both refusals in the audit log', () => {
      const lines = auditLines(d).filter((l) => l['event'] === 'console.refused');
      return lines.length >= 2 && lines;
    });
    expect(refused.map((l) => l['address']).sort()).toEqual(['198.51.100.1', '198.51.100.3']);
    expect(refused[0]!['remote']).toBe('198.51.100.1');
    for (const v of [a1, a2, b1]) if (typeof v !== 'string') v.ws.terminate();
    await waitFor('the pending places to be released', async () =>
      /consoled_console_pending_connections 0\n/.test(await (await d.api('GET', '/metrics')).text()),
    );
  });

  it('believes the forwarded scheme and host for the Origin check, only from a trusted proxy', async () => {
    const t = await d.json<{ token: string }>('POST', '/v1/guests/vm/tokens', { mode: 'ro', ttl: '5m' });
    const proxied = {
      'x-forwarded-for': '198.51.100.7',
      'x-forwarded-proto': 'https',
      'x-forwarded-host': 'console.example.com',
    };
    const v = await ConsoleViewer.connect(d.url, 'vm', {
      token: t.token,
      origin: 'https://console.example.com',
      headers: proxied,
    });
    await v.close();
    const originRefused = async (url: string, token: string, origin: string) =>
      expect(await ConsoleViewer.refusal(url, 'vm', { token, origin, headers: proxied })).toMatchObject({
        kind: 'http',
        status: 403,
        code: 'ORIGIN_FORBIDDEN',
      });
    // The page was served over https by the proxy: an http Origin is another site.
    await originRefused(d.url, t.token, 'http://console.example.com');

    // The same headers from a peer that is not trusted are ignored.
    const direct = await startDaemon({ config: { guests: [guest()] } });
    const dt = await direct.json<{ token: string }>('POST', '/v1/guests/vm/tokens', {
      mode: 'ro',
      ttl: '5m',
    });
    await originRefused(direct.url, dt.token, 'https://console.example.com');
    await direct.stop();
  });
});

describe('the Origin check and the Host check', () => {
  let d: DaemonHandle;
  let port: string;
  beforeAll(async () => {
    d = await startDaemon({ config: { guests: [guest()] } });
    port = new URL(d.url).port;
  });

  it('compares the scheme, and refuses Origins that spell loopback another way', async () => {
    const t = await d.json<{ token: string }>('POST', '/v1/guests/vm/tokens', { mode: 'ro', ttl: '5m' });
    const ok = await ConsoleViewer.connect(d.url, 'vm', {
      token: t.token,
      origin: `http://127.0.0.1:${port}`,
    });
    await ok.close();
    for (const origin of [
      `https://127.0.0.1:${port}`,
      `http://127.0.0.1.:${port}`,
      `http://0x7f.1:${port}`,
      `http://2130706433:${port}`,
    ]) {
      expect(await ConsoleViewer.refusal(d.url, 'vm', { token: t.token, origin }), origin).toMatchObject({
        kind: 'http',
        status: 403,
        code: 'ORIGIN_FORBIDDEN',
      });
    }
  });

  it('without console auth, admits only exact loopback Host names (DNS rebinding)', async () => {
    const open = await startDaemon({
      config: { console: { requireAuth: false, allowedHosts: ['console.lab'] }, guests: [guest()] },
    });
    const p = new URL(open.url).port;
    for (const host of [`localhost:${p}`, `127.0.0.1:${p}`, `console.lab:${p}`]) {
      const v = await ConsoleViewer.connect(open.url, 'vm', { host });
      expect(v.welcome, host).toMatchObject({ name: 'anonymous' });
      await v.close();
      expect(await statusWithHost(open, '/console/vm/log', host), host).toBe(200);
    }
    for (const host of [
      `evil.localhost:${p}`,
      `localhost.:${p}`,
      `127.0.0.1.:${p}`,
      `0x7f.1:${p}`,
      `2130706433:${p}`,
      `attacker.example:${p}`,
    ]) {
      expect(await ConsoleViewer.refusal(open.url, 'vm', { host }), host).toMatchObject({
        kind: 'http',
        status: 403,
        code: 'FORBIDDEN',
      });
      expect(await statusWithHost(open, '/console/vm/log', host), host).toBe(403);
    }
    await open.stop();
  });
});
