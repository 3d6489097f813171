/**
 * The WebSocket console's protocol over real sockets against a real daemon (in
 * process): roles and the writer lock, keystrokes checked at the guest side (a TCP
 * peer standing for QEMU's chardev), control messages, guest disconnects, boots,
 * resize, status, metrics, detach and shutdown.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { issueViewerToken, type ViewerMode } from '../../sidecar/console/viewer-token.js';
import { ConsoleViewer, type GuestStatusJson } from '../support/console-viewer.js';
import {
  closeAllPeers,
  type InProcessDaemon,
  SocketPeer,
  startInProcessDaemon,
  stopAllInProcessDaemons,
} from '../support/daemon.js';
import { removeTmpDirs } from '../support/tmp.js';
import { sleep, waitFor } from '../support/wait.js';

const SECRET = 'console-protocol-test-secret-0123456789';
const NO_RATE_LIMIT = { bytesPerSec: 0, burstBytes: 1 };

function token(guest: string, mode: ViewerMode, name?: string): string {
  return issueViewerToken(Buffer.from(SECRET), { guest, mode, ttlMs: 600_000, ...(name ? { name } : {}) });
}

let d: InProcessDaemon;
const viewers: ConsoleViewer[] = [];

async function viewer(
  guest: string,
  mode: ViewerMode,
  name?: string,
  extra: { from?: number; mode?: ViewerMode } = {},
) {
  const v = await ConsoleViewer.connect(d.url, guest, { token: token(guest, mode, name), ...extra });
  viewers.push(v);
  return v;
}

async function attachPeer(id: string, extra: Record<string, unknown> = {}): Promise<SocketPeer> {
  const peer = await SocketPeer.listen();
  const res = await d.api('PUT', `/v1/guests/${id}`, {
    source: { type: 'tcp', host: '127.0.0.1', port: peer.port },
    rateLimit: NO_RATE_LIMIT,
    ...extra,
  });
  expect(res.status).toBe(201);
  await peer.waitForConnections(1);
  return peer;
}

async function status(id: string): Promise<GuestStatusJson> {
  const res = await d.api('GET', `/v1/guests/${id}`);
  return (await res.json()) as GuestStatusJson;
}

beforeAll(async () => {
  d = await startInProcessDaemon({
    config: {
      console: {
        tokenSecret: SECRET,
        perGuest: { locked: { allowTakeover: false } },
        // The backpressure test below types 24 MiB: far past any paste, so the rate is off here.
        keystrokeBytesPerSec: 0,
      },
      defaults: { reconnect: { initialDelayMs: 20, maxDelayMs: 200 } },
    },
  });
});

afterEach(async () => {
  await Promise.all(viewers.splice(0).map((v) => v.close()));
});

afterAll(async () => {
  await stopAllInProcessDaemons();
  await closeAllPeers();
  await removeTmpDirs();
});

describe('roles and the writer lock', () => {
  it('gives the lock to the first rw viewer, lets a rw viewer take it over, and frees it when the writer leaves', async () => {
    const peer = await attachPeer('roles');
    const alice = await viewer('roles', 'rw', 'alice');
    expect(alice.welcome).toMatchObject({
      type: 'welcome',
      guest: 'roles',
      mode: 'rw',
      writer: null,
      viewers: 1,
      canTakeover: true,
      resizable: false,
    });
    await alice.waitFor(
      'lock',
      (m) => (m['writer'] as { viewerId: string } | null)?.viewerId === alice.viewerId,
    );

    const bob = await viewer('roles', 'rw', 'bob');
    expect(bob.welcome?.['writer']).toEqual({ viewerId: alice.viewerId, name: 'alice' });
    const carol = await viewer('roles', 'ro', 'carol');
    expect(carol.welcome).toMatchObject({
      mode: 'ro',
      viewers: 3,
      writer: { viewerId: alice.viewerId, name: 'alice' },
    });
    await alice.waitFor('lock', (m) => m['viewers'] === 3);

    // Only the writer's keystrokes reach the guest: checked at the guest side.
    bob.keys('BOB-1');
    carol.keys('CAROL-1');
    alice.keys('ALICE-1');
    await waitFor('alice at the guest', () => peer.received.toString().includes('ALICE-1'));
    await bob.waitFor('error', (m) => m['code'] === 'NOT_WRITER');
    await carol.waitFor('error', (m) => m['code'] === 'NOT_WRITER');

    // Takeover: bob writes, alice watches.
    bob.control({ type: 'takeover' });
    for (const v of [alice, bob, carol])
      await v.waitFor('lock', (m) => (m['writer'] as { name: string } | null)?.name === 'bob');
    alice.keys('ALICE-2');
    bob.keys('BOB-2');
    await waitFor('bob at the guest', () => peer.received.toString().includes('BOB-2'));

    // A ro viewer can never take the lock; acquire does not take a held lock; only the writer releases.
    carol.control({ type: 'takeover' });
    await carol.waitFor('error', (m) => m['code'] === 'TOKEN_WRONG_MODE');
    alice.control({ type: 'acquire' });
    await alice.waitFor('error', (m) => m['code'] === 'LOCK_HELD');
    alice.control({ type: 'release' });
    await alice.waitFor('error', (m) => m['code'] === 'NOT_WRITER');

    bob.control({ type: 'release' });
    await carol.waitFor('lock', (m) => m['writer'] === null);
    alice.control({ type: 'acquire' });
    await carol.waitFor('lock', (m) => (m['writer'] as { name: string } | null)?.name === 'alice');

    // The writer leaves: the lock is free and everyone hears the new count.
    const before = carol.messages.length;
    await alice.close();
    await carol.waitFor('lock', (m) => m['writer'] === null && m['viewers'] === 2, before);
    await bob.waitFor('lock', (m) => m['writer'] === null && m['viewers'] === 2);
    bob.keys('BOB-3'); // nobody holds the lock: dropped
    bob.control({ type: 'acquire' });
    await bob.waitFor('lock', (m) => (m['writer'] as { name: string } | null)?.name === 'bob', before);
    bob.keys('BOB-4');
    await waitFor('BOB-4 at the guest', () => peer.received.toString().includes('BOB-4'));

    expect(peer.received.toString()).toBe('ALICE-1BOB-2BOB-4');
    const s = await status('roles');
    expect(s.console).toMatchObject({ viewers: 2, writer: { viewerId: bob.viewerId, name: 'bob' } });
    expect(s.console.droppedKeystrokeBytes).toBe('BOB-1CAROL-1ALICE-2BOB-3'.length);
  });

  it('refuses takeover where it is disabled', async () => {
    await attachPeer('locked');
    const a = await viewer('locked', 'rw', 'a');
    const b = await viewer('locked', 'rw', 'b');
    expect(b.welcome?.['canTakeover']).toBe(false);
    b.control({ type: 'takeover' });
    await b.waitFor('error', (m) => m['code'] === 'TAKEOVER_DISABLED');
    expect(b.lock.writer?.viewerId).toBe(a.viewerId);
  });

  it('a rw token may connect read-only, and then cannot write', async () => {
    const peer = await attachPeer('asro');
    const v = await viewer('asro', 'rw', 'x', { mode: 'ro' });
    expect(v.welcome?.['mode']).toBe('ro');
    expect(v.welcome?.['writer']).toBe(null);
    v.control({ type: 'acquire' });
    await v.waitFor('error', (m) => m['code'] === 'TOKEN_WRONG_MODE');
    v.keys('nope');
    await v.waitFor('error', (m) => m['code'] === 'NOT_WRITER');
    // A writer's keys, sent after, reach the guest behind anything the watcher's had.
    const w = await viewer('asro', 'rw', 'w');
    await waitFor('w to hold the writer lock', () => w.lock.writer?.viewerId === w.viewerId);
    w.keys('later');
    await waitFor('the writer’s keys at the guest', () => peer.received.toString().includes('later'));
    expect(peer.received.toString()).toBe('later');
  });

  it('answers ping, refuses unknown and malformed messages without closing', async () => {
    await attachPeer('misc');
    const v = await viewer('misc', 'rw');
    v.control({ type: 'ping' });
    await v.waitFor('pong');
    v.control({ type: 'bogus' });
    await v.waitFor('error', (m) => m['code'] === 'BAD_REQUEST');
    v.ws.send('not json');
    await v.waitFor('error', (m) => m['code'] === 'BAD_JSON');
    v.control({ type: 'resize', cols: 100, rows: 30 });
    await v.waitFor(
      'error',
      (m) => m['code'] === 'UNSUPPORTED' && /no window size/.test(String(m['message'])),
    );
    expect(v.closeInfo).toBe(null);
  });
});

describe('output', () => {
  it('sends every byte then the disconnect, then the new boot and the reconnect', async () => {
    const peer = await attachPeer('disc');
    const v = await viewer('disc', 'ro');
    const payload = Buffer.alloc(512 * 1024, 'x');
    peer.send(payload);
    peer.send('LAST-BYTES');
    // The guest side closes while output may still be queued for the viewer.
    await peer.close();
    const gone = await v.waitFor('guest', (m) => m['state'] === 'disconnected');
    // Every byte captured before the disconnect came first.
    expect(v.text.endsWith('LAST-BYTES')).toBe(true);
    const endAtDisconnect = v.next;
    expect(v.offsetAt(gone)).toBe(endAtDisconnect);
    expect(gone['reason']).toBeTypeOf('string');

    await peer.open();
    const boot = await v.waitFor('boot');
    expect(boot['boot']).toBe(2);
    // The boot message comes right before the boot marker's bytes.
    expect(v.offsetAt(boot)).toBe(boot.offset);
    const connected = await v.waitFor('guest', (m) => m['state'] === 'connected');
    expect(v.offsetAt(connected)).toBeGreaterThan(boot.offset as number);
    await v.waitForText('boot 2 started');
    expect(v.protocolErrors).toEqual([]);
  });

  it('tells viewers about a boot marked through the API', async () => {
    await attachPeer('marked');
    const v = await viewer('marked', 'ro');
    const res = await d.api('POST', '/v1/guests/marked/boots');
    const body = (await res.json()) as { boot: number; offset: number };
    const boot = await v.waitFor('boot');
    expect(boot).toEqual({ type: 'boot', boot: body.boot, offset: body.offset });
  });

  it('keeps keystrokes in order through the guest’s backpressure (pauses the writer, resumes on drain)', async () => {
    const peer = await attachPeer('bp');
    const v = await viewer('bp', 'rw');
    await v.waitFor('lock', (m) => (m['writer'] as { viewerId: string } | null)?.viewerId === v.viewerId);
    const socket = peer.current!;
    socket.pause(); // the guest stops reading: consoled's writes to it back up
    const total = 24 * 1024 * 1024;
    const frame = 4096;
    const expected = Buffer.alloc(total);
    for (let i = 0; i < total; i++) expected[i] = (i * 7 + (i >> 12)) & 0xff;
    for (let i = 0; i < total; i += frame) v.keys(expected.subarray(i, i + frame));
    // consoled stops reading this viewer once the guest's socket is full, so the
    // keystrokes pile up at the client (and in the kernel), not in consoled's memory.
    await waitFor('the writer paused for the guest', async () => {
      const writer = (await status('bp')).console.writer as { paused?: string[] } | null;
      return writer?.paused?.includes('guest');
    });
    const buffered = v.ws.bufferedAmount;
    // A sleep: "consoled reads nothing more" has no event; 300 ms is many socket reads.
    await sleep(300);
    expect(buffered).toBeGreaterThan(4 * 1024 * 1024);
    expect(v.ws.bufferedAmount).toBe(buffered);
    expect(peer.received.length).toBeLessThan(total);
    socket.resume();
    await waitFor('all keystrokes at the guest', () => peer.received.length >= total, { timeoutMs: 30_000 });
    expect(peer.received.equals(expected)).toBe(true);
    const s = await status('bp');
    expect(s.console.keystrokeBytes).toBe(total);
  });
});

describe('resize', () => {
  it('resizes an exec guest’s terminal for the writer only', async () => {
    const res = await d.api('PUT', '/v1/guests/pty1', {
      source: { type: 'exec', command: ['/bin/sh', '-i'] },
      rateLimit: NO_RATE_LIMIT,
    });
    expect(res.status).toBe(201);
    const w = await viewer('pty1', 'rw');
    const watcher = await viewer('pty1', 'rw');
    expect(w.welcome?.['resizable']).toBe(true);
    watcher.control({ type: 'resize', cols: 50, rows: 20 });
    await watcher.waitFor('error', (m) => m['code'] === 'NOT_WRITER');
    w.control({ type: 'resize', cols: 0, rows: 20 });
    await w.waitFor('error', (m) => m['code'] === 'BAD_PARAMETER');
    w.control({ type: 'resize', cols: 132, rows: 43 });
    // A sleep: the resize has no answer to wait for; if the keys overtook it, `stty size`
    // would print the old size and the wait below would fail, not pass wrongly.
    await sleep(100);
    w.keys('stty size\r');
    await w.waitForText('43 132');
  });
});

describe('status, metrics, detach and shutdown', () => {
  it('reports viewers in status and metrics, and closes viewers with GUEST_DETACHED on detach', async () => {
    await attachPeer('gone');
    const v = await viewer('gone', 'rw', 'eve');
    const s = await status('gone');
    expect(s.console).toMatchObject({
      viewers: 1,
      writer: { viewerId: v.viewerId, name: 'eve' },
      skippedBytes: 0,
    });
    const metrics = await (await d.api('GET', '/metrics')).text();
    expect(metrics).toMatch(/consoled_console_viewers\{guest="gone"\} 1/);
    expect(metrics).toMatch(/consoled_console_connections \d+/);
    const del = await d.api('DELETE', '/v1/guests/gone');
    expect(del.status).toBe(200);
    const closed = await v.closed;
    expect(closed).toEqual({ code: 4411, reason: 'GUEST_DETACHED' });
    expect(v.messages.some((m) => m.type === 'guest' && m['state'] === 'detached')).toBe(true);
  });

  it('closes viewers with 1001 SHUTTING_DOWN when the daemon stops', async () => {
    const own = await startInProcessDaemon({ config: { console: { tokenSecret: SECRET } } });
    const peer = await SocketPeer.listen();
    await own.api('PUT', '/v1/guests/s1', { source: { type: 'tcp', host: '127.0.0.1', port: peer.port } });
    const v = await ConsoleViewer.connect(own.url, 's1', { token: token('s1', 'ro') });
    const pending = await ConsoleViewer.open(own.url, 's1', { noAuth: true });
    await own.stop();
    expect(await v.closed).toEqual({ code: 1001, reason: 'SHUTTING_DOWN' });
    expect((await pending.closed).code).toBe(1001);
    expect(v.messages.at(-1)).toMatchObject({ type: 'error', code: 'SHUTTING_DOWN' });
  });
});
