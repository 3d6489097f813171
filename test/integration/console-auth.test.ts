/**
 * Console auth and safety against a real daemon over real sockets: every kind of
 * bad credential is refused with its own code (close reason, or HTTP status and
 * body before the upgrade), a foreign Origin is refused, oversized frames close the
 * connection, limits and timeouts hold, tokens come from the admin API, the log
 * download takes a viewer token, and the daemon survives all of it. The audit log
 * records attaches, detaches, lock changes and writer bytes with the token id.
 */
import { statSync } from 'node:fs';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { validateConfig } from '../../sidecar/config.js';
import { issueViewerToken, type ViewerMode } from '../../sidecar/console/viewer-token.js';
import { Daemon } from '../../sidecar/daemon.js';
import { ConsoleViewer } from '../support/console-viewer.js';
import {
  closeAllPeers,
  type InProcessDaemon,
  readLog,
  SocketPeer,
  startInProcessDaemon,
  stopAllInProcessDaemons,
} from '../support/daemon.js';
import { removeTmpDirs, tmpDir } from '../support/tmp.js';
import { waitFor } from '../support/wait.js';

const SECRET = 'console-auth-test-secret-0123456789abcdef';
const secret = Buffer.from(SECRET);

function token(
  guest: string,
  mode: ViewerMode,
  extra: { ttlMs?: number; now?: number; singleUse?: boolean; name?: string } = {},
): string {
  return issueViewerToken(secret, { guest, mode, ttlMs: extra.ttlMs ?? 600_000, ...extra });
}

let d: InProcessDaemon;
let peer: SocketPeer;

beforeAll(async () => {
  d = await startInProcessDaemon({
    config: {
      console: {
        tokenSecret: SECRET,
        authTimeoutMs: 300,
        maxKeystrokeFrameBytes: 1024,
        allowedOrigins: ['https://ops.example.com'],
        perGuest: { small: { maxViewers: 2 } },
        maxTokenTtlMs: 3_600_000,
      },
    },
  });
  peer = await SocketPeer.listen();
  for (const id of ['g1', 'g2', 'small']) {
    await d.api('PUT', `/v1/guests/${id}`, { source: { type: 'tcp', host: '127.0.0.1', port: peer.port } });
  }
  await peer.waitForConnections(3);
});

afterAll(async () => {
  await stopAllInProcessDaemons();
  await closeAllPeers();
  await removeTmpDirs();
});

/**
 * Keys from a new writer on g1 reach the guest. Whatever a connection before it sent
 * toward g1 left consoled first, on the same socket: once these arrive, earlier keys
 * that did not are not coming.
 */
async function laterKeysArrive(marker: string): Promise<void> {
  const w = await ConsoleViewer.connect(d.url, 'g1', { token: token('g1', 'rw') });
  await waitFor('the new viewer to hold the writer lock', () => w.lock.writer?.viewerId === w.viewerId);
  w.keys(marker);
  await waitFor(`${marker} at the guest`, () => peer.received.toString('latin1').includes(marker));
  await w.close();
}

async function expectAlive(): Promise<void> {
  expect((await fetch(`${d.url}/healthz`)).status).toBe(200);
  const v = await ConsoleViewer.connect(d.url, 'g1', { token: token('g1', 'ro') });
  await v.close();
}

describe('refused credentials, each with its own code', () => {
  it('in the first frame: close code and the error code as the reason', async () => {
    const cases: Array<[string, Parameters<typeof ConsoleViewer.refusal>[2], number, string]> = [
      ['missing', {}, 4401, 'UNAUTHORIZED'],
      ['forged', { token: `${token('g1', 'rw').slice(0, -4)}AAAA` }, 4401, 'TOKEN_INVALID'],
      [
        'signed with another secret',
        { token: issueViewerToken(Buffer.from('x'.repeat(32)), { guest: 'g1', mode: 'rw', ttlMs: 60_000 }) },
        4401,
        'TOKEN_INVALID',
      ],
      ['garbage', { token: 'not-a-token' }, 4401, 'TOKEN_INVALID'],
      [
        'expired',
        { token: token('g1', 'rw', { ttlMs: 1000, now: Date.now() - 60_000 }) },
        4402,
        'TOKEN_EXPIRED',
      ],
      ['wrong guest', { token: token('g2', 'rw') }, 4403, 'TOKEN_WRONG_GUEST'],
      ['wrong mode', { token: token('g1', 'ro'), mode: 'rw' }, 4404, 'TOKEN_WRONG_MODE'],
    ];
    for (const [label, options, closeCode, reason] of cases) {
      const r = await ConsoleViewer.refusal(d.url, 'g1', options);
      expect(r, label).toEqual({ kind: 'close', closeCode, reason, error: reason });
    }
    await expectAlive();
  });

  it('refuses a single-use token the second time', async () => {
    const once = token('g1', 'rw', { singleUse: true });
    const first = await ConsoleViewer.connect(d.url, 'g1', { token: once });
    // Its successor comes right after welcome, for the next reconnect.
    const next = await first.waitFor('token');
    expect(next['token']).toBeTypeOf('string');
    expect(await ConsoleViewer.refusal(d.url, 'g1', { token: once })).toEqual({
      kind: 'close',
      closeCode: 4405,
      reason: 'TOKEN_REUSED',
      error: 'TOKEN_REUSED',
    });
    await first.close();
    const second = await ConsoleViewer.connect(d.url, 'g1', { token: next['token'] as string });
    expect(second.welcome?.['mode']).toBe('rw');
    await second.close();
    expect((await ConsoleViewer.refusal(d.url, 'g1', { token: next['token'] as string })).kind).toBe('close');
  });

  it('closes with AUTH_TIMEOUT when no auth frame comes, and UNAUTHORIZED when the first frame is something else', async () => {
    expect(await ConsoleViewer.refusal(d.url, 'g1', { noAuth: true })).toMatchObject({
      kind: 'close',
      closeCode: 4408,
      reason: 'AUTH_TIMEOUT',
    });
    const v = await ConsoleViewer.open(d.url, 'g1', { noAuth: true });
    v.keys('keys before auth');
    expect(await v.closed).toEqual({ code: 4401, reason: 'UNAUTHORIZED' });
    await laterKeysArrive('LATER-KEYS-1');
    expect(peer.received.toString()).not.toContain('keys before auth');
  });

  it('in the Authorization header: refused before the upgrade with the HTTP status and the error JSON', async () => {
    const cases: Array<[string, string, number, string]> = [
      ['forged', `${token('g1', 'rw').slice(0, -4)}AAAA`, 401, 'TOKEN_INVALID'],
      ['expired', token('g1', 'rw', { ttlMs: 1000, now: Date.now() - 60_000 }), 401, 'TOKEN_EXPIRED'],
      ['wrong guest', token('g2', 'rw'), 403, 'TOKEN_WRONG_GUEST'],
    ];
    for (const [label, t, status, code] of cases) {
      expect(await ConsoleViewer.refusal(d.url, 'g1', { token: t, header: true }), label).toEqual({
        kind: 'http',
        status,
        code,
      });
    }
    expect(
      await ConsoleViewer.refusal(d.url, 'g1', { token: token('g1', 'ro'), header: true, mode: 'rw' }),
    ).toEqual({
      kind: 'http',
      status: 403,
      code: 'TOKEN_WRONG_MODE',
    });
    const ok = await ConsoleViewer.connect(d.url, 'g1', { token: token('g1', 'rw'), header: true });
    expect(ok.welcome?.['mode']).toBe('rw');
    await ok.close();
    // The admin token works too (rw).
    const admin = await ConsoleViewer.connect(d.url, 'g1', { token: d.token, header: true });
    expect(admin.welcome).toMatchObject({ mode: 'rw', name: 'admin' });
    await admin.close();
  });
});

describe('origin, limits, frames, timeouts', () => {
  it('refuses a foreign Origin before the upgrade, and admits the same host and the allowlist', async () => {
    const port = new URL(d.url).port;
    expect(
      await ConsoleViewer.refusal(d.url, 'g1', { token: token('g1', 'rw'), origin: 'https://evil.example' }),
    ).toEqual({
      kind: 'http',
      status: 403,
      code: 'ORIGIN_FORBIDDEN',
    });
    expect(
      await ConsoleViewer.refusal(d.url, 'g1', {
        token: token('g1', 'rw'),
        origin: `http://localhost:${port}`,
      }),
    ).toMatchObject({
      kind: 'http',
      code: 'ORIGIN_FORBIDDEN',
    });
    for (const origin of [`http://127.0.0.1:${port}`, 'https://ops.example.com']) {
      const v = await ConsoleViewer.connect(d.url, 'g1', { token: token('g1', 'rw'), origin });
      await v.close();
    }
  });

  it('refuses unknown guests, bad ids and bad parameters before the upgrade', async () => {
    expect(await ConsoleViewer.refusal(d.url, 'nope', { token: token('nope', 'rw') })).toEqual({
      kind: 'http',
      status: 404,
      code: 'GUEST_NOT_FOUND',
    });
    expect(await ConsoleViewer.refusal(d.url, '-bad', {})).toEqual({
      kind: 'http',
      status: 400,
      code: 'BAD_GUEST_ID',
    });
    expect(await ConsoleViewer.refusal(d.url, 'g1', { token: token('g1', 'rw'), from: -1 })).toEqual({
      kind: 'http',
      status: 400,
      code: 'BAD_PARAMETER',
    });
    expect(
      await ConsoleViewer.refusal(d.url, 'g1', { token: token('g1', 'rw'), mode: 'xx' as ViewerMode }),
    ).toEqual({
      kind: 'http',
      status: 400,
      code: 'BAD_PARAMETER',
    });
  });

  it('closes the connection on an oversized frame (1009), and keeps the daemon up', async () => {
    const v = await ConsoleViewer.connect(d.url, 'g1', { token: token('g1', 'rw') });
    v.keys(Buffer.alloc(2048, 0x61)); // over maxKeystrokeFrameBytes
    expect(await v.closed).toEqual({ code: 1009, reason: 'PAYLOAD_TOO_LARGE' });
    const w = await ConsoleViewer.connect(d.url, 'g1', { token: token('g1', 'rw') });
    w.keys(Buffer.alloc(64 * 1024, 0x62)); // over maxPayload: ws itself closes
    expect((await w.closed).code).toBe(1009);
    await laterKeysArrive('LATER-KEYS-2');
    expect(peer.received.includes(0x61)).toBe(false);
    expect(peer.received.includes(0x62)).toBe(false);
    await expectAlive();
  });

  it('limits viewers per guest', async () => {
    const a = await ConsoleViewer.connect(d.url, 'small', { token: token('small', 'ro') });
    const b = await ConsoleViewer.connect(d.url, 'small', { token: token('small', 'ro') });
    expect(await ConsoleViewer.refusal(d.url, 'small', { token: token('small', 'ro') })).toEqual({
      kind: 'close',
      closeCode: 1013,
      reason: 'TOO_MANY_VIEWERS',
      error: 'TOO_MANY_VIEWERS',
    });
    await a.close();
    await waitFor('the count to drop', async () => {
      const s = (await (await d.api('GET', '/v1/guests/small')).json()) as { console: { viewers: number } };
      return s.console.viewers === 1;
    });
    const c = await ConsoleViewer.connect(d.url, 'small', { token: token('small', 'ro') });
    await b.close();
    await c.close();
  });
});

describe('a daemon with tight connection limits and timeouts', () => {
  it('refuses past maxConnections, closes idle and unresponsive connections', async () => {
    const own = await startInProcessDaemon({
      config: {
        console: { tokenSecret: SECRET, maxConnections: 2, idleTimeoutMs: 300, keepaliveIntervalMs: 200 },
      },
    });
    const p = await SocketPeer.listen();
    await own.api('PUT', '/v1/guests/t1', { source: { type: 'tcp', host: '127.0.0.1', port: p.port } });
    const a = await ConsoleViewer.connect(own.url, 't1', { token: token('t1', 'ro') });
    const b = await ConsoleViewer.connect(own.url, 't1', { token: token('t1', 'ro') });
    // Counted once authenticated: the token in the first frame is refused after the upgrade.
    expect(await ConsoleViewer.refusal(own.url, 't1', { token: token('t1', 'ro') })).toEqual({
      kind: 'close',
      closeCode: 1013,
      reason: 'TOO_MANY_CONNECTIONS',
      error: 'TOO_MANY_CONNECTIONS',
    });
    // The admin token is never refused by maxConnections.
    const admin = await ConsoleViewer.connect(own.url, 't1', { token: own.token });
    await admin.close();
    // a stays quiet: the idle timeout closes it. b pings: it stays.
    const keepBusy = setInterval(() => b.control({ type: 'ping' }), 100);
    expect(await a.closed).toEqual({ code: 4409, reason: 'IDLE_TIMEOUT' });
    // A peer that stops reading stops answering pings: dropped.
    b.ws.pause();
    const closed = await b.closed;
    clearInterval(keepBusy);
    expect(closed.code).toBe(1006);
    const metrics = await (await own.api('GET', '/metrics')).text();
    expect(metrics).toMatch(/consoled_console_idle_timeouts_total 1/);
    expect(metrics).toMatch(/consoled_console_keepalive_timeouts_total 1/);
    expect(metrics).toMatch(/consoled_console_refused_total\{code="TOO_MANY_CONNECTIONS"\} 1/);
    await own.stop();
  });
});

describe('tokens from the admin API, and the log download', () => {
  it('issues tokens that work on the console, bounded by maxTokenTtlMs', async () => {
    const res = await d.api('POST', '/v1/guests/g1/tokens', { mode: 'rw', ttl: '10m', name: 'ops' });
    expect(res.status).toBe(201);
    const body = (await res.json()) as { token: string; id: string; expiresAt: string };
    expect(Date.parse(body.expiresAt) - Date.now()).toBeGreaterThan(9 * 60_000);
    const v = await ConsoleViewer.connect(d.url, 'g1', { token: body.token });
    expect(v.welcome).toMatchObject({ mode: 'rw', name: 'ops' });
    await v.close();

    const tooLong = await d.api('POST', '/v1/guests/g1/tokens', { mode: 'rw', ttl: '2h' });
    expect(tooLong.status).toBe(400);
    expect(((await tooLong.json()) as { error: { code: string } }).error.code).toBe('BAD_PARAMETER');
    const badBody = await d.api('POST', '/v1/guests/g1/tokens', { mode: 'xx', ttl: '1m' });
    expect(badBody.status).toBe(400);
    const anon = await fetch(`${d.url}/v1/guests/g1/tokens`, {
      method: 'POST',
      body: '{"mode":"rw","ttl":"1m"}',
    });
    expect(anon.status).toBe(401);
  });

  it('serves /console/{id}/log to a viewer token for that guest, with the same bytes as the admin API', async () => {
    // One peer serves every guest here; its latest connection is one guest's chardev.
    peer.current?.write('some output for the download\r\n');
    await waitFor('the output in a log', async () => {
      for (const id of ['g1', 'g2', 'small']) {
        const text = await (await d.api('GET', `/v1/guests/${id}/log?start=0`)).text();
        if (text.includes('some output for the download')) return true;
      }
      return false;
    });
    const t = token('g1', 'ro');
    const viaToken = await fetch(`${d.url}/console/g1/log?start=0`, {
      headers: { authorization: `Bearer ${t}` },
    });
    expect(viaToken.status).toBe(200);
    const bytes = Buffer.from(await viaToken.arrayBuffer());
    const viaAdmin = await readLog(d, 'g1', { start: 0 });
    expect(bytes.equals(viaAdmin.bytes)).toBe(true);
    expect(viaToken.headers.get('x-consoled-next')).toBe(String(viaAdmin.next));

    const refused = async (headers: Record<string, string>) => {
      const r = await fetch(`${d.url}/console/g1/log`, { headers });
      return [r.status, ((await r.json()) as { error: { code: string } }).error.code];
    };
    expect(await refused({})).toEqual([401, 'UNAUTHORIZED']);
    expect(await refused({ authorization: `Bearer ${token('g2', 'rw')}` })).toEqual([
      403,
      'TOKEN_WRONG_GUEST',
    ]);
    expect(
      await refused({
        authorization: `Bearer ${token('g1', 'ro', { ttlMs: 1000, now: Date.now() - 60_000 })}`,
      }),
    ).toEqual([401, 'TOKEN_EXPIRED']);
    // An unspent single-use token reads without being spent; a spent one is refused.
    const once = token('g1', 'ro', { singleUse: true });
    expect(
      (await fetch(`${d.url}/console/g1/log`, { headers: { authorization: `Bearer ${once}` } })).status,
    ).toBe(200);
    const v = await ConsoleViewer.connect(d.url, 'g1', { token: once });
    await v.close();
    expect(await refused({ authorization: `Bearer ${once}` })).toEqual([401, 'TOKEN_REUSED']);
  });

  it('serves the page with its CSP, and its assets', async () => {
    const page = await fetch(`${d.url}/console/g1`);
    expect(page.status).toBe(200);
    expect(page.headers.get('content-security-policy')).toContain("default-src 'none'");
    expect(await page.text()).toContain('data-guest="g1"');
    for (const asset of ['xterm.js', 'xterm.css', 'addon-fit.js', 'console.js', 'console.css']) {
      expect((await fetch(`${d.url}/console/assets/${asset}`)).status, asset).toBe(200);
    }
    expect((await fetch(`${d.url}/console/assets/nope.js`)).status).toBe(404);
    expect((await fetch(`${d.url}/console/-bad`)).status).toBe(400);
  });
});

describe('the audit log', () => {
  it('records attach, lock changes, writer bytes and detach with the token id', async () => {
    const lines: Array<Record<string, unknown>> = [];
    const sink = new Writable({
      write(chunk: Buffer, _enc, cb) {
        for (const line of chunk.toString('utf8').split('\n'))
          if (line) lines.push(JSON.parse(line) as Record<string, unknown>);
        cb();
      },
    });
    const stateDir = tmpDir('audit');
    const config = validateConfig({
      stateDir,
      listen: { host: '127.0.0.1', port: 0 },
      adminToken: 'a'.repeat(32),
      console: { tokenSecret: SECRET },
    });
    const daemon = await Daemon.start(config, pino({ level: 'info' }, sink));
    const p = await SocketPeer.listen();
    await fetch(`${daemon.url}/v1/guests/au`, {
      method: 'PUT',
      headers: { authorization: `Bearer ${'a'.repeat(32)}`, 'content-type': 'application/json' },
      body: JSON.stringify({ source: { type: 'tcp', host: '127.0.0.1', port: p.port } }),
    });
    await p.waitForConnections(1);
    const t = token('au', 'rw', { name: 'auditor' });
    const jti = JSON.parse(Buffer.from(t.split('.')[0]!, 'base64url').toString()).jti as string;
    const v = await ConsoleViewer.connect(daemon.url, 'au', { token: t });
    v.keys('hello');
    await waitFor('keys at the guest', () => p.received.toString() === 'hello');
    v.control({ type: 'release' });
    await v.waitFor('lock', (m) => m['writer'] === null);
    await ConsoleViewer.refusal(daemon.url, 'au', { token: 'forged.token' });
    await v.close();
    await waitFor('the detach line', () => lines.some((l) => l['event'] === 'console.detach'));
    await daemon.stop();
    const audit = lines.filter((l) => l['component'] === 'audit');
    const events = audit.map((l) => l['event']);
    expect(events).toEqual([
      'console.attach',
      'console.lock',
      'console.write',
      'console.lock',
      'console.refused',
      'console.detach',
    ]);
    expect(audit[0]).toMatchObject({ guest: 'au', jti, name: 'auditor', mode: 'rw' });
    expect(audit[2]).toMatchObject({ jti, bytes: 5, frames: 1 });
    expect(audit[3]).toMatchObject({ cause: 'release', from: { jti } });
    expect(audit[4]).toMatchObject({ code: 'TOKEN_INVALID' });
    expect(audit[5]).toMatchObject({ jti, bytesSent: expect.any(Number), keystrokeBytes: 5 });
  });
});

describe('the generated secret and the demo URL', () => {
  it('generates <stateDir>/console-secret once (0600), keeps tokens valid across a restart, and hints a working page URL', async () => {
    const stateDir = tmpDir('secret');
    const first = await startInProcessDaemon({ stateDir });
    const p = await SocketPeer.listen();
    await first.api('PUT', '/v1/guests/sec', { source: { type: 'tcp', host: '127.0.0.1', port: p.port } });
    const path = join(stateDir, 'console-secret');
    expect(statSync(path).mode & 0o777).toBe(0o600);
    const { token: t } = (await (
      await first.api('POST', '/v1/guests/sec/tokens', { mode: 'ro', ttl: '5m' })
    ).json()) as { token: string };
    const hints = first.daemon.demoHints().join('\n');
    const hinted = new RegExp(`${first.url}/console/sec#token=(\\S+)`).exec(hints)?.[1];
    expect(hinted).toBeDefined();
    await first.stop();

    const second = await startInProcessDaemon({ stateDir });
    const v = await ConsoleViewer.connect(second.url, 'sec', { token: t });
    expect(v.welcome?.['mode']).toBe('ro');
    await v.close();
    const w = await ConsoleViewer.connect(second.url, 'sec', { token: hinted! });
    expect(w.welcome?.['mode']).toBe('rw');
    await w.close();
    await second.stop();
  });
});

describe('console.requireAuth: false', () => {
  it('admits anonymous viewers, and only with a loopback Host', async () => {
    const own = await startInProcessDaemon({ config: { console: { requireAuth: false } } });
    const p = await SocketPeer.listen();
    await own.api('PUT', '/v1/guests/anon', { source: { type: 'tcp', host: '127.0.0.1', port: p.port } });
    const v = await ConsoleViewer.connect(own.url, 'anon', {});
    expect(v.welcome).toMatchObject({ mode: 'rw', name: 'anonymous' });
    await v.close();
    const port = new URL(own.url).port;
    expect(await ConsoleViewer.refusal(own.url, 'anon', { host: `consoled.example:${port}` })).toEqual({
      kind: 'http',
      status: 403,
      code: 'FORBIDDEN',
    });
    expect((await fetch(`${own.url}/console/anon/log`)).status).toBe(200);
    await own.stop();
  });
});
