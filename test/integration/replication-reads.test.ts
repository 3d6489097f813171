/**
 * Reading a guest's log from any host: a second daemon that never held the guest
 * serves every boot's history from the stream (`scope=cluster` and `auto`) with
 * exactly the `start`/`tail`/`lines`/`boot`/`limit` semantics and offset headers of a
 * local read on the owner; `follow=1` continues across reboots; `consolectl logs
 * --redis` reads the stream with no sidecar; retention trims by offset; and `auto`
 * on the owner extends its local files with the older history the stream keeps.
 */

import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SharedLog } from '../../store/replication/shared-log.js';
import {
  CONSOLECTL_BIN,
  closeAllPeers,
  type InProcessDaemon,
  REPO_ROOT,
  readLog,
  runConsolectl,
  SocketPeer,
  startInProcessDaemon,
  stopAllDaemons,
  stopAllInProcessDaemons,
} from '../support/daemon.js';
import { type RedisHandle, startRedis, stopAllRedis } from '../support/redis-server.js';
import { readStream, replicationConfig, waitReplicated } from '../support/replication.js';
import { removeTmpDirs } from '../support/tmp.js';
import { waitFor } from '../support/wait.js';

let redis: RedisHandle;
let a: InProcessDaemon;
let b: InProcessDaemon;
let peer: SocketPeer;

function text(tag: string, count: number): string {
  let s = '';
  for (let i = 0; i < count; i++) s += `${tag} line ${String(i).padStart(5, '0')} ${'.'.repeat(30)}\r\n`;
  return s;
}

/** One boot of the guest: the chardev comes (back), the guest prints `body`. */
async function boot(n: number, body: string): Promise<void> {
  if (n > 1) {
    await peer.close(); // QEMU exits: the guest side closed the chardev ...
    await peer.open(); // ... and a new QEMU process serves it again: a new boot
  }
  await peer.waitForConnections(n);
  peer.send(Buffer.from(body, 'latin1'));
  await waitFor(`boot ${n} in A's log`, async () =>
    (await readLog(a, 'rb', { boot: 'current', scope: 'local' })).bytes.toString('latin1').endsWith(body),
  );
}

beforeAll(async () => {
  redis = await startRedis();
  a = await startInProcessDaemon({ config: replicationConfig('host-a', { url: redis.url }) });
  b = await startInProcessDaemon({ config: replicationConfig('host-b', { url: redis.url }) });
  peer = await SocketPeer.listen();
  await a.api('PUT', '/v1/guests/rb', { source: { type: 'tcp', host: '127.0.0.1', port: peer.port } });
  await boot(1, text('boot-1', 300));
  await boot(2, text('boot-2', 200));
  await boot(3, `${text('boot-3', 250)}binary \x00\x01\xff\xfe\x1b[0m end\r\nno newline at the end`);
  await waitReplicated(a, 'rb');
});

afterAll(async () => {
  await stopAllInProcessDaemons();
  await stopAllDaemons();
  await closeAllPeers();
  await stopAllRedis();
  await removeTmpDirs();
});

const QUERIES: Array<Record<string, string | number>> = [
  { start: 0 },
  {},
  { tail: 1000 },
  { tail: 10_000_000 },
  { start: -500 },
  { start: 1234, limit: 777 },
  { lines: 7 },
  { lines: 100_000 },
  { boot: 1 },
  { boot: 2, start: 0 },
  { boot: 2, lines: 3 },
  { boot: 'previous' },
  { boot: 'current', tail: 300 },
  { boot: 'all', start: 20_000, limit: 5 },
];

describe('reads from a host that never held the guest', () => {
  it("serve every boot with the owner's local semantics and offsets (scope cluster and auto)", async () => {
    expect(b.daemon.registry.get('rb')).toBeUndefined();
    for (const query of QUERIES) {
      const local = await readLog(a, 'rb', { ...query, scope: 'local' });
      for (const scope of ['cluster', 'auto']) {
        const remote = await readLog(b, 'rb', { ...query, scope });
        const what = `${JSON.stringify(query)} scope=${scope}`;
        expect([remote.start, remote.next], what).toEqual([local.start, local.next]);
        expect(remote.bytes.equals(local.bytes), what).toBe(true);
      }
    }
    const res = await b.api('GET', '/v1/guests/rb/log?boot=1');
    expect(res.headers.get('x-consoled-scope')).toBe('cluster');
    const boots = (await readLog(b, 'rb', { start: 0 })).bytes
      .toString('latin1')
      .match(/\[consoled\] boot \d+ started/g);
    expect(boots).toEqual([
      '[consoled] boot 1 started',
      '[consoled] boot 2 started',
      '[consoled] boot 3 started',
    ]);
  });

  it('answer 404 for an unknown guest and 416 for a boot the stream does not hold', async () => {
    expect((await b.api('GET', '/v1/guests/nobody/log?scope=cluster')).status).toBe(404);
    expect((await b.api('GET', '/v1/guests/nobody/log')).status).toBe(404);
    expect((await b.api('GET', '/v1/guests/rb/log?scope=cluster&boot=9')).status).toBe(416);
  });

  it('follow=1 from the other host continues across a reboot', async () => {
    const res = await b.api('GET', '/v1/guests/rb/log?tail=0&follow=1&scope=cluster');
    expect(res.status).toBe(200);
    const startAt = Number(res.headers.get('x-consoled-start'));
    const reader = (res.body as ReadableStream<Uint8Array>).getReader();
    let got = '';
    const reading = (async () => {
      while (!got.includes('boot-4 line 00009')) {
        const { value, done } = await reader.read();
        if (done) break;
        got += Buffer.from(value).toString('latin1');
      }
    })();
    await boot(4, text('boot-4', 10));
    await waitFor('the follower to see boot 4', () => got.includes('boot-4 line 00009'), {
      timeoutMs: 15_000,
    });
    await reader.cancel();
    await reading;
    await waitReplicated(a, 'rb');
    const local = await readLog(a, 'rb', { start: startAt, scope: 'local' });
    expect(local.bytes.toString('latin1').startsWith(got)).toBe(true);
    expect(got).toContain('[consoled] boot 4 started');
  });

  it('consolectl logs --redis reads the stream with no sidecar, with the same queries', async () => {
    const target = { url: 'http://127.0.0.1:9', token: 'unused-unused-unused' }; // no daemon is asked
    for (const [args, query] of [
      [['--boot', '2'], { boot: 2 }],
      [['--previous', '--lines', '4'], { boot: 'previous', lines: 4 }],
      [['--tail', '2000'], { tail: 2000 }],
      [['--start', '0'], { start: 0 }],
    ] as const) {
      const cli = await runConsolectl(target, ['logs', 'rb', '--redis', redis.url, ...args]);
      expect(cli.code, cli.stderr).toBe(0);
      const local = await readLog(a, 'rb', { ...query, scope: 'local' });
      expect(cli.stdout.equals(local.bytes), JSON.stringify(args)).toBe(true);
    }
    const missing = await runConsolectl(target, ['logs', 'nobody', '--redis', redis.url]);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toContain('GUEST_NOT_FOUND');
    // -f follows new output: the guest ticks until the CLI (started from the end) has seen three.
    const following = runConsolectl(target, ['logs', 'rb', '--redis', redis.url, '--tail', '0', '-f'], {
      until: (out) => (out.toString('latin1').match(/tick \d+\r\n/g) ?? []).length >= 3,
    });
    let tick = 0;
    const ticker = setInterval(() => peer.send(`tick ${tick++}\r\n`), 100);
    const result = await following.finally(() => clearInterval(ticker));
    const ticks = (result.stdout.toString('latin1').match(/tick (\d+)\r\n/g) ?? []).map((t) =>
      Number(t.slice(5, -2)),
    );
    expect(ticks.length).toBeGreaterThanOrEqual(3);
    expect(ticks).toEqual(ticks.map((_, i) => ticks[0]! + i));
    expect(CONSOLECTL_BIN.startsWith(REPO_ROOT)).toBe(true);
  });
});

describe('retention and auto on the owner', () => {
  it('the stream trims by offset; readers see the clamp in X-Consoled-Start', async () => {
    const r2 = await startRedis();
    const c = await startInProcessDaemon({
      config: replicationConfig('host-c', { url: r2.url, retentionBytes: 64 * 1024 }),
    });
    const d = await startInProcessDaemon({ config: replicationConfig('host-d', { url: r2.url }) });
    const p = await SocketPeer.listen();
    await c.api('PUT', '/v1/guests/trim', { source: { type: 'tcp', host: '127.0.0.1', port: p.port } });
    await p.waitForConnections(1);
    p.send(text('t', 5000)); // ~250 KB
    await waitReplicated(c, 'trim');
    const stream = await readStream(r2.client(), 'trim');
    expect(stream.oldest).toBeGreaterThan(0);
    expect(stream.bytes.length).toBeGreaterThanOrEqual(64 * 1024);
    expect(stream.bytes.length).toBeLessThan(64 * 1024 + 70 * 1024);
    const remote = await readLog(d, 'trim', { start: 0 });
    expect(remote.start).toBe(stream.oldest);
    const local = await readLog(c, 'trim', { start: remote.start, scope: 'local' });
    expect(remote.bytes.equals(local.bytes)).toBe(true);
  });

  it('auto on the owner serves the older history only the stream still holds', async () => {
    const r3 = await startRedis();
    const e = await startInProcessDaemon({ config: replicationConfig('host-e', { url: r3.url }) });
    const p = await SocketPeer.listen();
    await e.api('PUT', '/v1/guests/short', {
      source: { type: 'tcp', host: '127.0.0.1', port: p.port },
      rotation: { maxFileBytes: 4096, maxFiles: 2 },
    });
    await p.waitForConnections(1);
    const body = text('s', 2000);
    // Paced, so the replicator keeps up with files this small (a burst would rotate
    // bytes away before they are sent: see the next test).
    for (let i = 0; i < body.length; i += 2048) {
      p.send(body.slice(i, i + 2048));
      await waitReplicated(e, 'short');
    }
    await waitReplicated(e, 'short');
    const local = await readLog(e, 'short', { start: 0, scope: 'local' });
    expect(local.start).toBeGreaterThan(50_000);
    const auto = await readLog(e, 'short', { start: 0 });
    expect(auto.start).toBe(0);
    expect(auto.next).toBe(local.next);
    expect(auto.bytes.subarray(auto.bytes.length - local.bytes.length).equals(local.bytes)).toBe(true);
    expect(auto.bytes.toString('latin1')).toContain(body);
    const lines = await readLog(e, 'short', { lines: 1500 });
    expect(lines.bytes.toString('latin1').split('\r\n')).toHaveLength(1501);
  });

  it('bytes rotated away before they were sent are skipped: counted, reported, visible in the offsets', async () => {
    const r4 = await startRedis();
    const f = await startInProcessDaemon({ config: replicationConfig('host-f', { url: r4.url }) });
    const g = await startInProcessDaemon({ config: replicationConfig('host-g', { url: r4.url }) });
    const p = await SocketPeer.listen();
    await f.api('PUT', '/v1/guests/burst', {
      source: { type: 'tcp', host: '127.0.0.1', port: p.port },
      rotation: { maxFileBytes: 4096, maxFiles: 2 },
    });
    await p.waitForConnections(1);
    p.send('first\r\n');
    await waitReplicated(f, 'burst');
    // A burst of 200 KB through 8 KiB of local files: far faster than any append.
    p.send(text('burst', 4000));
    const status = await waitReplicated(f, 'burst');
    expect(status.replication!.skippedBytes).toBeGreaterThan(0);
    const stream = await readStream(r4.client(), 'burst', { allowJumps: true });
    const covered = stream.entries.reduce((n, e2) => n + e2.length, 0);
    expect(covered + status.replication!.skippedBytes).toBe(status.flushedOffset);
    // Every hole starts with a gap marker (in the stream only: no local log holds it),
    // listed in the marker index.
    const listed = await new SharedLog(r4.client()).markers('burst');
    let holes = 0;
    for (let i = 1; i < stream.entries.length; i++) {
      const before = stream.entries[i - 1]!;
      if (stream.entries[i]!.offset === before.offset + before.length) continue;
      holes++;
      const at = stream.entries.slice(0, i - 1).reduce((n, e2) => n + e2.length, 0);
      expect(stream.bytes.subarray(at, at + before.length).toString('latin1')).toMatch(
        /^\r\n\[consoled\] capture gap: \d+ bytes lost \(skipped\)\r\n$/,
      );
      expect(listed).toContainEqual({ offset: before.offset, length: before.length, kind: 'gap' });
    }
    expect(holes).toBeGreaterThan(0);
    // Reads never cross the hole: from the other host they start after it.
    const remote = await readLog(g, 'burst', { start: 0 });
    expect(remote.start).toBeGreaterThan(8);
    // The local files may have rotated past the newest skip: compare what both hold.
    const local = await readLog(f, 'burst', { start: remote.start, scope: 'local' });
    expect(local.next).toBe(remote.next);
    expect(local.start).toBeGreaterThanOrEqual(remote.start);
    expect(remote.bytes.subarray(local.start - remote.start).equals(local.bytes)).toBe(true);
    const metrics = await (await g.api('GET', '/metrics')).text();
    expect(metrics).toContain('consoled_redis_connection_state{state="ready"} 1');
    const fm = await (await f.api('GET', '/metrics')).text();
    expect(fm).toMatch(
      new RegExp(
        `consoled_replication_skipped_bytes_total\\{guest="burst"\\} ${status.replication!.skippedBytes}`,
      ),
    );
  });
});
