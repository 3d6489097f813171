/**
 * The console across hosts (docs/design.md "Console across hosts"), with three
 * daemons standing for three hosts (a, b, c), one real Redis and socket chardevs:
 * a host that does not run the guest proxies its console to the owner (tokens checked
 * at both, single-use spent at the owner, the host credential checked and not
 * replayable), and viewers ride through a live migration from a to b, whether they
 * are proxied by c (the link follows the guest) or connected to a directly (moved,
 * GUEST_MOVED, reconnect with from=offset, proxied by a; `consolectl console` as well):
 * every byte of the stream
 * exactly once, in order, the writer keeping its lock, keystrokes reaching the guest
 * on b. And a proxied viewer across an upgrade of the owner and of the proxying host,
 * and across a SIGKILL and restart of the owner.
 */
import { spawn } from 'node:child_process';
import type { Redis } from 'ioredis';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { HostCredential } from '../../sidecar/console/host-credential.js';
import { ConsoleViewer } from '../support/console-viewer.js';
import {
  CONSOLECTL_BIN,
  closeAllPeers,
  type DaemonHandle,
  type InProcessDaemon,
  REPO_ROOT,
  SocketPeer,
  startDaemon,
  startInProcessDaemon,
  stopAllDaemons,
  stopAllInProcessDaemons,
} from '../support/daemon.js';
import { type RedisHandle, startRedis, stopAllRedis } from '../support/redis-server.js';
import { attachTcp, guestStatus, lines, readStream, replicationConfig } from '../support/replication.js';
import { removeTmpDirs } from '../support/tmp.js';
import { waitFor } from '../support/wait.js';

/** The viewer-token secret the three hosts share (README "Console across hosts"). */
const SHARED_SECRET = 'a-cluster-wide-console-secret-of-enough-length';

let redis: RedisHandle;
let client: Redis;

afterEach(async () => {
  await stopAllInProcessDaemons();
  await stopAllDaemons();
  await closeAllPeers();
  await stopAllRedis();
});
afterAll(removeTmpDirs);

/** A host of the cluster: the test's Redis (quick heartbeats, so hosts find each other at once), the shared secret. */
function hostConfig(id: string) {
  return replicationConfig(
    id,
    { url: redis.url, hosts: { heartbeatMs: 200, ttlMs: 5000 } },
    { console: { tokenSecret: SHARED_SECRET } },
  );
}

async function cluster(): Promise<{ a: InProcessDaemon; b: InProcessDaemon; c: InProcessDaemon }> {
  redis = await startRedis();
  client = redis.client();
  const host = (id: string) => startInProcessDaemon({ config: hostConfig(id) });
  const [a, b, c] = await Promise.all([host('host-a'), host('host-b'), host('host-c')]);
  // Every host is in the registry before anyone proxies.
  await waitFor('three hosts in the registry', async () => {
    const res = await c.api('GET', '/v1/hosts');
    const body = (await res.json()) as { hosts: unknown[] };
    return body.hosts.length === 3;
  });
  return { a, b, c };
}

async function token(
  d: Pick<InProcessDaemon, 'api'>,
  guest: string,
  body: { mode: 'ro' | 'rw'; ttl?: string; name?: string; singleUse?: boolean },
): Promise<string> {
  const res = await d.api('POST', `/v1/guests/${guest}/tokens`, { ttl: '10m', ...body });
  const json = (await res.json()) as { token: string };
  if (res.status !== 201 && res.status !== 200)
    throw new Error(`token: ${res.status} ${JSON.stringify(json)}`);
  return json.token;
}

/** A guest on `d` printing `before`, replicated. */
async function guestOn(d: Pick<InProcessDaemon, 'api'>, id: string, before: string): Promise<SocketPeer> {
  const peer = await SocketPeer.listen();
  await attachTcp(d, id, peer);
  await peer.waitForConnections(1);
  peer.send(before);
  await waitFor('the guest to replicate', async () =>
    (await readStream(client, id)).bytes.toString('latin1').endsWith(before),
  );
  return peer;
}

/** What the viewer got, checked against the stream: contiguous, byte for byte. */
async function expectExactlyTheStream(viewer: ConsoleViewer, id: string): Promise<void> {
  expect(viewer.protocolErrors).toEqual([]);
  expect(viewer.segments.length).toBe(1); // no skip, no jump: one contiguous run
  const seg = viewer.segments[0]!;
  const end = seg.offset + seg.length;
  // What it had at this moment: output may still arrive while the stream is read.
  const output = viewer.output.subarray(0, seg.length);
  // Throws on a gap or an overlap in the stream; waits for the owner to publish up to `end`.
  const stream = await waitFor('the stream to reach the viewer', async () => {
    const read = await readStream(client, id);
    return (read.next ?? 0) >= end ? read : undefined;
  });
  const start = stream.oldest ?? 0;
  const expected = stream.bytes.subarray(seg.offset - start, end - start);
  expect(expected.length).toBe(output.length);
  expect(output.equals(expected)).toBe(true);
}

describe('console across hosts', () => {
  it('a host that does not run the guest proxies its console: bytes, keystrokes, tokens checked at both ends', async () => {
    const { a, c } = await cluster();
    const peer = await guestOn(a, 'px', lines('line', 0, 50));

    // A rw viewer through c: the owner's welcome, the log byte for byte, keystrokes to the guest.
    const rw = await ConsoleViewer.connect(c.url, 'px', {
      token: await token(a, 'px', { mode: 'rw', name: 'alice' }),
      from: 0,
    });
    expect(rw.welcome).toMatchObject({ guest: 'px', offset: 0 });
    await rw.waitFor('lock', (m) => (m['writer'] as { name?: string } | null)?.name === 'alice');
    peer.send(lines('line', 50, 50));
    await rw.waitForText('line 99\r\n');
    await expectExactlyTheStream(rw, 'px');
    rw.keys('typed through c\r');
    await waitFor('the keystrokes at the guest', () =>
      peer.received.toString('latin1').includes('typed through c\r'),
    );
    // The owner counts the proxied viewer as its own.
    const status = (await (await a.api('GET', '/v1/guests/px')).json()) as { console: { viewers: number } };
    expect(status.console.viewers).toBe(1);

    // Checked at the edge: a wrong guest or mode never reaches the owner.
    const wrongMode = await ConsoleViewer.refusal(c.url, 'px', {
      token: await token(a, 'px', { mode: 'ro' }),
      mode: 'rw',
      header: true,
    });
    expect(wrongMode).toMatchObject({ kind: 'http', code: 'TOKEN_WRONG_MODE' });
    const unknown = await ConsoleViewer.refusal(c.url, 'nowhere', {
      token: await token(a, 'nowhere', { mode: 'ro' }),
      header: true,
    });
    expect(unknown).toMatchObject({ kind: 'http', code: 'GUEST_NOT_FOUND' });

    // A single-use token is spent at the owner, once, whichever host it is presented to.
    const once = await token(a, 'px', { mode: 'ro', singleUse: true });
    const first = await ConsoleViewer.connect(c.url, 'px', { token: once });
    expect(first.messages.some((m) => m.type === 'token')).toBe(true); // its successor, from the owner
    const again = await ConsoleViewer.refusal(a.url, 'px', { token: once });
    expect(again).toMatchObject({ kind: 'close', reason: 'TOKEN_REUSED' });
    await first.close();
    await rw.close();
    // Two connections went through c to a (the refused ones never left c).
    const metrics = async (d: InProcessDaemon) => (await d.api('GET', '/metrics')).text();
    expect(await metrics(c)).toMatch(/^consoled_console_proxied_total 2$/m);
    expect(await metrics(a)).toMatch(/^consoled_console_proxied_in_total 2$/m);
  });

  it('the owner believes a proxied request only with a valid, fresh, unreplayed host credential', async () => {
    const { a } = await cluster();
    await guestOn(a, 'cred', lines('line', 0, 5));
    const rwToken = await token(a, 'cred', { mode: 'ro' });
    const path = '/v1/guests/cred/console';
    const signer = new HostCredential(Buffer.from(SHARED_SECRET), 'host-c');

    const good = signer.sign(path, '203.0.113.7');
    const viewer = await ConsoleViewer.connect(a.url, 'cred', {
      token: rwToken,
      header: true,
      headers: good,
    });
    expect(viewer.welcome).toMatchObject({ guest: 'cred' });
    await viewer.close();
    // The same credential again is a replay.
    const replay = await ConsoleViewer.refusal(a.url, 'cred', {
      token: rwToken,
      header: true,
      headers: good,
    });
    expect(replay).toMatchObject({ kind: 'http', status: 401, code: 'HOST_AUTH_FAILED' });
    // Another secret, another client address than signed, an old one: refused.
    const forged = new HostCredential(Buffer.from('some-other-secret-of-enough-length!!'), 'host-c').sign(
      path,
      '',
    );
    for (const headers of [
      forged,
      { ...signer.sign(path, '203.0.113.7'), 'x-consoled-client': '198.51.100.1' },
      signer.sign(path, '', Date.now() - 120_000),
      { 'x-consoled-host': 'v1.host-c.1.2.3' },
    ]) {
      const refusal = await ConsoleViewer.refusal(a.url, 'cred', { token: rwToken, header: true, headers });
      expect(refusal).toMatchObject({ kind: 'http', status: 401, code: 'HOST_AUTH_FAILED' });
    }
    // One hop only: a proxied request for a guest not served here is not proxied on.
    const notHere = await ConsoleViewer.refusal(a.url, 'elsewhere', {
      token: rwToken,
      header: true,
      headers: signer.sign('/v1/guests/elsewhere/console', ''),
    });
    expect(notHere).toMatchObject({ kind: 'http', code: 'GUEST_NOT_FOUND' });
  });

  it('viewers ride through a live migration: every byte once, the writer keeps its lock, keys reach the new host', async () => {
    const { a, b, c } = await cluster();
    const id = 'mover';
    const src = await guestOn(a, id, lines('src', 0, 100));
    const dst = await SocketPeer.listen();
    await attachTcp(b, id, dst, true);
    await dst.waitForConnections(1);
    await waitFor('b to wait for the handoff', async () => {
      const s = await guestStatus(b, id);
      return s.replication?.handoff.phase === 'waiting' && s.replication.owner !== null;
    });

    // The writer through c, a watcher through c, and a watcher directly on a.
    const writer = await ConsoleViewer.connect(c.url, id, {
      token: await token(a, id, { mode: 'rw', name: 'alice', singleUse: true }),
      from: 0,
    });
    await writer.waitFor('lock', (m) => (m['writer'] as { name?: string } | null)?.name === 'alice');
    const watcherC = await ConsoleViewer.connect(c.url, id, {
      token: await token(c, id, { mode: 'ro' }),
      from: 0,
    });
    const roToken = await token(a, id, { mode: 'ro' });
    let direct = await ConsoleViewer.connect(a.url, id, { token: roToken, from: 0 });
    // consolectl console on a, minting its own single-use token with a's admin token.
    const cli = spawn(
      process.execPath,
      [CONSOLECTL_BIN, '--url', a.url, '--token', a.token, 'console', id, '--mode', 'ro'],
      {
        cwd: REPO_ROOT,
        stdio: ['pipe', 'pipe', 'pipe'],
      },
    );
    let cliOut = '';
    let cliErr = '';
    cli.stdout.on('data', (chunk: Buffer) => {
      cliOut += chunk.toString('latin1');
    });
    cli.stderr.on('data', (chunk: Buffer) => {
      cliErr += chunk.toString('utf8');
    });
    await waitFor('consolectl to show the guest', () => cliOut.includes('src 99\r\n'));
    // A viewer of the destination while the guest is arriving: its empty log, then the renumbering.
    const onDest = await ConsoleViewer.connect(b.url, id, { token: roToken });
    expect(onDest.welcome).toMatchObject({ offset: 0 });
    // Resuming there is refused until b owns the stream.
    const early = await ConsoleViewer.refusal(b.url, id, { token: roToken, header: true, from: 100 });
    expect(early).toMatchObject({ kind: 'http', status: 503, code: 'GUEST_ARRIVING' });

    src.send(lines('src', 100, 100));
    await writer.waitForText('src 199\r\n');
    // The guest runs on b now: its first byte there starts the handoff.
    dst.send(lines('dst', 0, 50));
    const moved = await writer.waitFor('moved', () => true, 0, 20_000);
    expect(moved).toMatchObject({ host: 'host-b', proxied: true });
    await writer.waitForText('dst 49\r\n', 20_000);
    expect(writer.messages.filter((m) => m.type === 'welcome')).toHaveLength(2);

    // The direct viewer is told where the guest went, closed, and resumes on a (proxied to b).
    const directMoved = await direct.waitFor('moved', () => true, 0, 20_000);
    expect(directMoved).toMatchObject({ host: 'host-b', offset: moved['offset'] });
    expect(directMoved['proxied']).toBeUndefined();
    expect(await direct.closed).toMatchObject({ code: 4413, reason: 'GUEST_MOVED' });
    expect(direct.next).toBe(moved['offset']); // every byte before the seam, none after
    const directBefore = direct;
    direct = await ConsoleViewer.connect(a.url, id, {
      token: roToken,
      from: directMoved['offset'] as number,
    });
    expect(direct.welcome).toMatchObject({ offset: moved['offset'] });

    dst.send(lines('dst', 50, 50));
    await Promise.all([writer, watcherC, direct, onDest].map((v) => v.waitForText('dst 99\r\n', 20_000)));
    // consolectl followed the guest too (closed GUEST_MOVED, resumed on a, proxied to b).
    await waitFor('consolectl to show the guest on b', () => cliOut.includes('dst 99\r\n'), {
      timeoutMs: 20_000,
    });
    expect(cliOut.match(/(?:src|dst) \d+\r\n/g)).toEqual(
      [...lines('src', 0, 200).split('\r\n'), ...lines('dst', 0, 100).split('\r\n')]
        .filter((l) => l !== '')
        .map((l) => `${l}\r\n`),
    );
    expect(cliErr).toContain('the guest moved to host host-b');
    cli.kill();
    const renumbered = onDest.messages.find((m) => m.type === 'renumbered');
    expect(renumbered).toMatchObject({ from: 0, to: moved['offset'] });
    expect(onDest.messages.filter((m) => m.type === 'skipped')).toEqual([]);
    await expectExactlyTheStream(onDest, id);
    await expectExactlyTheStream(writer, id);
    await expectExactlyTheStream(watcherC, id);
    await expectExactlyTheStream(directBefore, id);
    await expectExactlyTheStream(direct, id);
    const all = writer.text;
    expect(all.indexOf('[consoled] handoff to host-b')).toBeGreaterThan(all.indexOf('src 199\r\n'));
    expect(all.indexOf('[consoled] handoff from host-a')).toBeGreaterThan(all.indexOf('handoff to host-b'));
    expect(all.match(/(?:src|dst) \d+\r\n/g)).toHaveLength(300);

    // The writer still writes: its lock was kept for its name across the seam.
    await waitFor('the writer to hold the lock on b', () => writer.lock.writer?.viewerId === writer.viewerId);
    expect(writer.lock.writer).toMatchObject({ name: 'alice' });
    writer.keys('after the move\r');
    await waitFor('the keystrokes at the guest on b', () =>
      dst.received.toString('latin1').includes('after the move\r'),
    );
    expect(src.received.toString('latin1')).not.toContain('after the move');
  });

  it('a proxied viewer rides through an upgrade of the owner and of the proxying host, losing nothing', async () => {
    redis = await startRedis();
    client = redis.client();
    const a: DaemonHandle = await startDaemon({ config: hostConfig('host-a') });
    const c: DaemonHandle = await startDaemon({ config: hostConfig('host-c') });
    await waitFor('both hosts in the registry', async () => {
      const body = (await (await c.api('GET', '/v1/hosts')).json()) as { hosts: unknown[] };
      return body.hosts.length === 2;
    });
    const id = 'steady';
    const peer = await guestOn(a, id, lines('line', 0, 20));
    const rwToken = await token(a, id, { mode: 'rw', name: 'alice' });
    let viewer = await ConsoleViewer.connect(c.url, id, { token: rwToken, from: 0 });
    await viewer.waitFor('lock', (m) => (m['writer'] as { name?: string } | null)?.name === 'alice');
    let n = 20;
    const printing = setInterval(() => {
      peer.send(lines('line', n, 5));
      n += 5;
    }, 20);
    try {
      // The owner upgrades: the proxy follows it (1012), the viewer's connection stays.
      await a.upgrade();
      await viewer.waitForText(`line ${n + 10}\r\n`, 20_000);
      expect(viewer.messages.filter((m) => m.type === 'welcome')).toHaveLength(2);
      expect(viewer.closeInfo).toBeNull();
      await waitFor(
        'the writer to hold the lock again',
        () => viewer.lock.writer?.viewerId === viewer.viewerId,
      );
      // The proxying host upgrades: its viewers are closed 1012 and resume on its successor.
      const before = viewer;
      await c.upgrade();
      expect(await before.closed).toMatchObject({ code: 1012, reason: 'UPGRADING' });
      viewer = await ConsoleViewer.connect(c.url, id, { token: rwToken, from: before.next });
      await viewer.waitForText(`line ${n + 10}\r\n`, 20_000);
      clearInterval(printing);
      await expectExactlyTheStream(before, id);
      await expectExactlyTheStream(viewer, id);
      expect(viewer.segments[0]!.offset).toBe(before.next);
      viewer.keys('still typing\r');
      await waitFor('the keystrokes at the guest', () =>
        peer.received.toString('latin1').includes('still typing\r'),
      );
    } finally {
      clearInterval(printing);
    }
  });

  it('a proxied viewer waits through a SIGKILL and restart of the owner, and goes on where it was', async () => {
    redis = await startRedis();
    client = redis.client();
    const a: DaemonHandle = await startDaemon({ config: hostConfig('host-a') });
    const c = await startInProcessDaemon({ config: hostConfig('host-c') });
    const id = 'crashy';
    const peer = await guestOn(a, id, lines('line', 0, 50));
    const viewer = await ConsoleViewer.connect(c.url, id, {
      token: await token(a, id, { mode: 'ro' }),
      from: 0,
    });
    await viewer.waitForText('line 49\r\n');
    await a.kill();
    await viewer.waitFor('guest', (m) => m['state'] === 'disconnected');
    expect(viewer.closeInfo).toBeNull();
    await a.start(); // a new port: the registry says where
    await peer.waitForConnections(2);
    peer.send(lines('line', 50, 50));
    await viewer.waitForText('line 99\r\n', 20_000);
    expect(viewer.closeInfo).toBeNull();
    expect(viewer.messages.filter((m) => m.type === 'welcome')).toHaveLength(2);
    await expectExactlyTheStream(viewer, id);
  });

  it('sessions through a proxying host end with their tokens: expiry, in-band renewal, revocation on any host', async () => {
    const { a, b, c } = await cluster();
    const id = 'timed';
    await guestOn(a, id, lines('line', 0, 10));
    const issue = async (body: Record<string, unknown>) => {
      const res = await a.api('POST', `/v1/guests/${id}/tokens`, { mode: 'ro', ...body });
      return (await res.json()) as { token: string; id: string };
    };
    // Expiry: the owner closes it 4402, and the proxy passes the close on.
    const short = await ConsoleViewer.connect(c.url, id, { token: (await issue({ ttl: '2s' })).token });
    // Renewal in band through the proxy: the owner answers, the session outlives the first token.
    const renewable = await ConsoleViewer.connect(c.url, id, {
      token: (await issue({ ttl: '2s', renewableFor: '1m' })).token,
    });
    // A renewal lives the token's lifetime from now: renew once half of it has passed.
    await new Promise((r) => setTimeout(r, 1200));
    renewable.control({ type: 'renew' });
    const renewed = await renewable.waitFor('token', (m) => m['renewed'] === true);
    expect(typeof renewed['token']).toBe('string');
    expect(await short.closed).toMatchObject({ code: 4402, reason: 'TOKEN_EXPIRED' });
    // Past the first token's expiry (the short one was issued first, with the same
    // lifetime), the renewed session is still open: its token now lives at least 1 s longer.
    await new Promise((r) => setTimeout(r, 300));
    expect(renewable.closeInfo).toBeNull();
    renewable.control({ type: 'renew' }); // and renewed again before that runs out
    // Revocation on b, which neither runs the guest nor proxies it: the owner ends the
    // proxied session, and c refuses the token from then on.
    const doomed = await issue({ ttl: '10m' });
    const victim = await ConsoleViewer.connect(c.url, id, { token: doomed.token });
    const revoked = await b.api('DELETE', `/v1/tokens/${doomed.id}`);
    expect(revoked.status).toBe(200);
    expect(await revoked.json()).toMatchObject({ revoked: doomed.id, shared: true });
    expect(await victim.closed).toMatchObject({ code: 4407, reason: 'TOKEN_REVOKED' });
    await waitFor('c to know of the revocation', async () => {
      const refusal = await ConsoleViewer.refusal(c.url, id, { token: doomed.token, header: true });
      return refusal.kind === 'http' && refusal.code === 'TOKEN_REVOKED';
    });
    // Only the revoked token's session ended (the renewed one may have expired by now on a slow host).
    expect(renewable.closeInfo?.reason).not.toBe('TOKEN_REVOKED');
    await renewable.close();
  });
});
