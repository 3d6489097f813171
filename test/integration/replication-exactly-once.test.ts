/**
 * Exactly once (docs/design.md, invariants 2 and 3) on real daemons and real redis-server
 * processes: after a flood, a Redis killed mid-flood (without and with persistence),
 * a daemon SIGKILLed mid-flood, and a replica promoted after losing the primary's
 * tail, the stream holds the local log byte for byte at the same offsets: no byte
 * missing, none duplicated, every entry starting where the previous one ended.
 */
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { readBackBuffers } from '../../store/replication/read-back-buffers.js';
import type { Replicator } from '../../store/replication/replicator.js';
import {
  CounterFlood,
  checkCounterLog,
  closeAllPeers,
  type InProcessDaemon,
  SocketPeer,
  startDaemon,
  startInProcessDaemon,
  stopAllDaemons,
  stopAllInProcessDaemons,
} from '../support/daemon.js';
import { startRedis, stopAllRedis } from '../support/redis-server.js';
import {
  guestStatus,
  localLog,
  PacedCounter,
  readStream,
  replicationConfig,
  waitReplicated,
} from '../support/replication.js';
import { TcpProxy } from '../support/tcp-proxy.js';
import { removeTmpDirs } from '../support/tmp.js';
import { sleep, waitFor } from '../support/wait.js';

/** Local files big enough to keep every byte of a test, so the whole log can be compared. */
const ROTATION = { maxFileBytes: 8 * 1024 * 1024, maxFiles: 8 };
const RETENTION = 256 * 1024 * 1024;

const proxies: TcpProxy[] = [];

afterEach(async () => {
  await stopAllInProcessDaemons();
  await stopAllDaemons();
  await closeAllPeers();
  for (const p of proxies.splice(0)) await p.close();
  await stopAllRedis();
});
afterAll(removeTmpDirs);

function replicatorOf(d: InProcessDaemon, id: string): Replicator {
  const found = d.daemon.replication?.replicators().find(([gid]) => gid === id);
  if (!found) throw new Error(`no replicator for ${id}`);
  return found[1];
}

async function attach(d: Pick<InProcessDaemon, 'api'>, id: string, peer: SocketPeer): Promise<void> {
  const res = await d.api('PUT', `/v1/guests/${id}`, {
    source: { type: 'tcp', host: '127.0.0.1', port: peer.port },
    rotation: ROTATION,
  });
  expect(res.status).toBe(201);
}

/**
 * Waits until the guest's log stops growing for `quietMs`: what the guest wrote last may
 * still wait in the socket for a read-coalescing window (up to 100 ms) after it stopped.
 */
async function waitLogQuiet(d: Pick<InProcessDaemon, 'api'>, id: string, quietMs = 400): Promise<void> {
  let last = -1;
  let since = performance.now();
  await waitFor(
    `the log of ${id} to stop growing`,
    async () => {
      const { offset } = await guestStatus(d, id);
      if (offset !== last) {
        last = offset;
        since = performance.now();
      }
      return performance.now() - since >= quietMs;
    },
    { intervalMs: 50 },
  );
}

/** The stream equals the local log: same first offset, same bytes, continuous entries. */
async function expectStreamEqualsLocal(
  d: Pick<InProcessDaemon, 'api'>,
  client: Parameters<typeof readStream>[0],
  id: string,
): Promise<Buffer> {
  await waitLogQuiet(d, id);
  const status = await waitReplicated(d, id);
  const local = await localLog(d, id);
  const stream = await readStream(client, id);
  expect(local.start).toBe(0);
  expect(stream.oldest).toBe(0);
  expect(stream.next).toBe(status.flushedOffset);
  expect(stream.bytes.length).toBe(local.bytes.length);
  expect(stream.bytes.equals(local.bytes)).toBe(true);
  return stream.bytes;
}

describe('exactly once', () => {
  it('a flood: the stream equals the local log byte for byte', async () => {
    const redis = await startRedis();
    const d = await startInProcessDaemon({
      config: replicationConfig('host-a', { url: redis.url, retentionBytes: RETENTION }),
    });
    const peer = await SocketPeer.listen();
    const flood = new CounterFlood(peer, { linesPerConnection: 200_000 }); // 6.6 MB as fast as it goes
    await attach(d, 'flood', peer);
    await waitFor('the flood to be written', () => flood.burstsDone === 1, { timeoutMs: 30_000 });
    const bytes = await expectStreamEqualsLocal(d, redis.client(), 'flood');
    const report = checkCounterLog(bytes);
    expect(report.lines.length).toBe(200_000);
    expect(report.jumps).toEqual([]);
    // Segments are bounded and never span a boot.
    const { entries } = await readStream(redis.client(), 'flood');
    expect(Math.max(...entries.map((e) => e.length))).toBeLessThanOrEqual(64 * 1024);
    expect(new Set(entries.map((e) => e.boot))).toEqual(new Set([1]));
  }, 60_000);

  for (const persistence of ['none', 'aof'] as const) {
    it(`Redis killed mid-flood and started again (persistence ${persistence}): nothing missing, nothing twice`, async () => {
      const redis = await startRedis({ persistence });
      const d = await startInProcessDaemon({
        config: replicationConfig('host-a', { url: redis.url, retentionBytes: RETENTION }),
      });
      const peer = await SocketPeer.listen();
      await attach(d, 'outage', peer);
      await peer.waitForConnections(1);
      const writer = new PacedCounter(peer, 2 * 1024 * 1024);
      await waitFor('some bytes in the stream', () => replicatorOf(d, 'outage').cursor > 256 * 1024);
      const readBacksBefore = { ...readBackBuffers.counters };
      await redis.kill();
      const cursorAtKill = replicatorOf(d, 'outage').cursor;
      await sleep(1_200); // the guest keeps writing; the local log is the backlog
      await redis.restart();
      await sleep(500);
      writer.stop();
      const bytes = await expectStreamEqualsLocal(d, redis.client(), 'outage');
      expect(bytes.length).toBeGreaterThan(cursorAtKill + 1024 * 1024);
      const report = checkCounterLog(bytes);
      expect(report.jumps).toEqual([]);
      expect(report.lines.length).toBe(writer.next);
      const counters = replicatorOf(d, 'outage').counters;
      // Without persistence the restarted Redis is empty: the whole retained history is sent again.
      if (persistence === 'none') expect(counters.redisDataLosses).toBeGreaterThanOrEqual(1);
      else expect(counters.redisDataLosses).toBe(0);
      // The backlog was read back from the local log into reused buffers (the stream's
      // equality above is what says reuse never overwrote a segment still being sent),
      // and every one was given back once the stream caught up.
      const taken = readBackBuffers.counters.taken - readBacksBefore.taken;
      const allocated = readBackBuffers.counters.allocated - readBacksBefore.allocated;
      expect(taken).toBeGreaterThan(allocated);
      // A prefetch dropped at the end is given back once its file read is done.
      await waitFor('every read-back buffer given back', () => readBackBuffers.counts.held === 0, {
        timeoutMs: 5_000,
      });
    }, 60_000);
  }

  it('the daemon SIGKILLed mid-flood and restarted: the stream still equals the local log', async () => {
    const redis = await startRedis();
    const peer = await SocketPeer.listen();
    const d = await startDaemon({
      config: replicationConfig('host-a', { url: redis.url, retentionBytes: RETENTION }),
    });
    await attach(d, 'killed', peer);
    await peer.waitForConnections(1);
    const writer = new PacedCounter(peer, 4 * 1024 * 1024);
    const client = redis.client();
    await waitFor(
      'a few MB in the stream',
      async () => ((await readStream(client, 'killed')).next ?? 0) > 1024 * 1024,
    );
    await d.kill();
    await sleep(200);
    await d.start();
    await peer.waitForConnections(2);
    await sleep(500);
    writer.stop();
    const bytes = await expectStreamEqualsLocal(d, client, 'killed');
    const report = checkCounterLog(bytes);
    // Lines sent while no daemon read the chardev are gone; the reattach marker shows where.
    for (const jump of report.jumps) expect(jump.marker).toMatch(/reattached at /);
    expect(report.markers.filter((m) => m.includes('reattached'))).toHaveLength(1);
  }, 60_000);

  it('a replica promoted with REPLICAOF NO ONE after missing the tail: the tail is sent again', async () => {
    const primary = await startRedis();
    const replica = await startRedis({ replicaOf: { host: '127.0.0.1', port: primary.port } });
    const proxy = await TcpProxy.start({ host: '127.0.0.1', port: primary.port });
    proxies.push(proxy);
    const d = await startInProcessDaemon({
      config: replicationConfig('host-a', { url: proxy.url, retentionBytes: RETENTION }),
    });
    const peer = await SocketPeer.listen();
    await attach(d, 'failover', peer);
    await peer.waitForConnections(1);
    const writer = new PacedCounter(peer, 2 * 1024 * 1024);
    await waitFor('bytes in the stream', () => replicatorOf(d, 'failover').cursor > 256 * 1024);
    // The replica stops following: everything the primary acknowledges from now on is a
    // tail the replica never gets, as when a primary dies before replicating its last writes.
    await replica.client().replicaof('NO', 'ONE');
    const cursorAtSplit = replicatorOf(d, 'failover').cursor;
    await waitFor(
      'the primary to get more',
      () => replicatorOf(d, 'failover').cursor > cursorAtSplit + 256 * 1024,
    );
    await primary.kill();
    proxy.switchTo({ host: '127.0.0.1', port: replica.port });
    await sleep(500);
    writer.stop();
    const bytes = await expectStreamEqualsLocal(d, replica.client(), 'failover');
    expect(checkCounterLog(bytes).jumps).toEqual([]);
    // The replica lacked a tail (or, when it lagged far behind, everything of this guest):
    // the replicator noticed and sent it again.
    const { lostTails, redisDataLosses } = replicatorOf(d, 'failover').counters;
    expect(lostTails + redisDataLosses).toBeGreaterThanOrEqual(1);
  }, 60_000);
});
