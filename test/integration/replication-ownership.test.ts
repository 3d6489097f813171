/**
 * Ownership never goes backwards (docs/design.md "Ownership"): two or three daemons
 * standing for hosts, one real Redis, socket chardevs standing for QEMU. A restarted
 * or re-attached source does not take back a stream it handed off; a host that
 * cannot read its state follows; a DELETE releases the stream at its final offset (or
 * finishes a pending handoff) so that a cold migration can claim it; a host reports
 * `owner` only while Redis agrees.
 */
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Redis } from 'ioredis';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { SharedLog } from '../../store/replication/shared-log.js';
import {
  closeAllPeers,
  type DaemonHandle,
  type InProcessDaemon,
  SocketPeer,
  startDaemon,
  stopAllDaemons,
  stopAllInProcessDaemons,
} from '../support/daemon.js';
import { type RedisHandle, startRedis, stopAllRedis } from '../support/redis-server.js';
import {
  attachTcp,
  guestStatus,
  lines,
  localLog,
  readStream,
  replicationConfig,
  waitReplicated,
} from '../support/replication.js';
import { removeTmpDirs } from '../support/tmp.js';
import { sleep, waitFor } from '../support/wait.js';

type Api = Pick<InProcessDaemon, 'api'> | Pick<DaemonHandle, 'api'>;

let redis: RedisHandle;
let client: Redis;

afterEach(async () => {
  await stopAllInProcessDaemons();
  await stopAllDaemons();
  await closeAllPeers();
  await stopAllRedis();
});
afterAll(removeTmpDirs);

async function waitRole(d: Api, id: string, role: string, timeoutMs = 15_000) {
  return waitFor(
    `${id} to be ${role}`,
    async () => {
      const s = await guestStatus(d, id);
      return s.replication?.role === role ? s : false;
    },
    { timeoutMs },
  );
}

function daemon(host: string, handoff: Record<string, unknown> = {}): Promise<DaemonHandle> {
  return startDaemon({
    config: replicationConfig(
      host,
      { url: redis.url },
      { handoff: { completionTimeoutMs: 3_000, pollIntervalMs: 300, drainTimeoutMs: 1_000, ...handoff } },
    ),
  });
}

/**
 * Host a owns guest `id` with ten `src` lines published; b is attached with
 * `incoming: true` and knows a owns it; no guest byte has reached b yet.
 */
async function incomingUnderWay(id: string, sourceHandoff: Record<string, unknown> = {}) {
  const a = await daemon('host-a', sourceHandoff);
  const b = await daemon('host-b');
  const srcPeer = await SocketPeer.listen();
  const dstPeer = await SocketPeer.listen();
  await attachTcp(a, id, srcPeer);
  await srcPeer.waitForConnections(1);
  srcPeer.send(lines('src', 0, 10));
  await waitReplicated(a, id);
  await attachTcp(b, id, dstPeer, true);
  await dstPeer.waitForConnections(1);
  await waitFor(
    'b to know the owner',
    async () => (await guestStatus(b, id)).replication?.owner === 'host-a',
  );
  return { a, b, srcPeer, dstPeer };
}

/** Host a owns guest `id`, then hands it to b through a live handoff; the source chardev closes. */
async function migrated(id: string) {
  const { a, b, srcPeer, dstPeer } = await incomingUnderWay(id);
  dstPeer.send(lines('dst', 0, 5));
  await waitRole(b, id, 'owner');
  await waitRole(a, id, 'handed-off');
  await waitReplicated(b, id);
  return { a, b, srcPeer, dstPeer };
}

describe('a restarted or re-attached source', () => {
  it('does not take back a stream it handed off, across a restart and an API re-attach to a live chardev', async () => {
    redis = await startRedis();
    client = redis.client();
    const { a, b, dstPeer } = await migrated('g1');
    const owner = await new SharedLog(client).owner('g1');
    expect(owner).toMatchObject({ host: 'host-b', epoch: 2 });
    // A stale chardev on a that is still alive and printing.
    const stale = await SocketPeer.listen();
    await a.restart();
    const afterRestart = await waitRole(a, 'g1', 'handed-off');
    expect(afterRestart.replication).toMatchObject({ epoch: 1, knownEpoch: 2, knownOwner: 'host-b' });
    const put = await a.api('PUT', '/v1/guests/g1', {
      source: { type: 'tcp', host: '127.0.0.1', port: stale.port },
    });
    expect(put.status).toBe(200);
    await stale.waitForConnections(1);
    stale.send(lines('stale', 0, 5));
    const follower = await waitRole(a, 'g1', 'follower');
    expect(follower.replication).toMatchObject({ owner: 'host-b', ownerEpoch: 2 });
    await a.restart();
    await stale.waitForConnections(2);
    stale.send(lines('stale', 5, 5));
    await waitRole(a, 'g1', 'follower');
    // b still owns and publishes; nothing of a's stale chardev reaches the stream.
    dstPeer.send(lines('dst', 5, 5));
    await waitReplicated(b, 'g1');
    const stream = await readStream(client, 'g1');
    const text = stream.bytes.toString('latin1');
    expect(text).not.toContain('stale');
    expect(text.match(/dst \d+\r\n/g)).toHaveLength(10);
    expect(
      new Set(stream.entries.filter((e) => e.offset >= stream.entries.at(-1)!.offset).map((e) => e.host)),
    ).toEqual(new Set(['host-b']));
    expect(await new SharedLog(client).owner('g1')).toMatchObject({ host: 'host-b', epoch: 2 });
    expect(a.logs().match(/claimed the guest's stream/g) ?? []).toHaveLength(1); // its first attach only
    // The metrics say the same as the status: a follows, knowing epoch 2; b owns and writes.
    const metricsOf = async (d: typeof a) => (await (await d.api('GET', '/metrics')).text()).split('\n');
    const aMetrics = await metricsOf(a);
    expect(aMetrics).toContain('consoled_replication_role{guest="g1",role="follower"} 1');
    expect(aMetrics).toContain('consoled_replication_known_epoch{guest="g1"} 2');
    expect(aMetrics).toContain('consoled_replication_owner{guest="g1"} 0');
    const bMetrics = await metricsOf(b);
    expect(bMetrics).toContain('consoled_replication_role{guest="g1",role="owner"} 1');
    expect(bMetrics).toContain('consoled_replication_owner{guest="g1"} 1');
  });

  it('after Redis comes back empty, the handed-off source still follows; the owner reclaims above every known epoch', async () => {
    redis = await startRedis();
    client = redis.client();
    const { a, b, dstPeer } = await migrated('g2');
    await b.stop();
    await redis.restart(); // no persistence: it comes back empty
    client = redis.client();
    const res = await a.api('PUT', '/v1/guests/g2', {
      source: { type: 'tcp', host: '127.0.0.1', port: (await SocketPeer.listen()).port },
    });
    expect(res.status).toBe(200);
    const follower = await waitRole(a, 'g2', 'follower');
    expect(follower.replication?.followReason).toMatch(/knows epoch 2/);
    expect((await new SharedLog(client).owner('g2')).epoch).toBe(0);
    await b.start();
    await dstPeer.waitForConnections(2);
    dstPeer.send(lines('dst', 5, 5));
    const owned = await waitReplicated(b, 'g2');
    expect(owned.replication?.epoch).toBe(3);
    expect(await new SharedLog(client).owner('g2')).toMatchObject({ host: 'host-b', epoch: 3 });
    expect((await guestStatus(a, 'g2')).replication?.role).toBe('follower');
  });
});

describe('a source restarting across its handoff', () => {
  it('marks the output nobody read while it was down, before its handoff marker (found by the fault test, seed 4028)', async () => {
    redis = await startRedis();
    client = redis.client();
    const { a, b, srcPeer, dstPeer } = await incomingUnderWay('g10');
    await a.stop();
    // The guest prints src 10..14 while nobody reads its chardev (dropped, as QEMU drops
    // them), then moves to b, and the source chardev closes.
    await srcPeer.close();
    dstPeer.send(lines('src', 15, 5));
    await a.start();
    await waitRole(b, 'g10', 'owner');
    await waitReplicated(b, 'g10');
    const text = (await readStream(client, 'g10')).bytes.toString('latin1');
    expect(text).toMatch(
      /src 9\r\n\r\n\[consoled\] capture gap: an unknown number of bytes lost \(not-connected\)\r\n\r\n\[consoled\] handoff to host-b at [^\r]*\r\n\r\n\[consoled\] handoff from host-a at [^\r]*\r\nsrc 15\r\n/,
    );
  });
});

describe('state that cannot be read', () => {
  it('makes a restarted host a follower, never a fresh owner', async () => {
    redis = await startRedis();
    client = redis.client();
    const a = await daemon('host-a');
    const peer = await SocketPeer.listen();
    await attachTcp(a, 'g3', peer);
    await peer.waitForConnections(1);
    peer.send(lines('x', 0, 5));
    await waitReplicated(a, 'g3');
    await a.stop();
    await writeFile(join(a.stateDir, 'guests', 'g3', 'replication.json'), '{"version": 99, "garbage": true');
    // Redis loses the owner too: nothing but this host's own files could tell it owned the stream.
    await client.del('consoled:{g3}:owner');
    await a.start();
    const s = await waitRole(a, 'g3', 'follower');
    expect(s.replication?.followReason).toMatch(/does not claim on its own/);
    peer.send(lines('x', 5, 5));
    // The window starts once the bytes a fresh owner would claim on are in the local log.
    await waitFor('the new lines in the local log', async () =>
      (await localLog(a, 'g3')).bytes.toString('latin1').includes('x 9\r\n'),
    );
    // A sleep: a host that does not claim has no event to wait for.
    await sleep(500);
    expect((await new SharedLog(client).owner('g3')).host).toBeNull();
  });
});

describe('DELETE on the owner', () => {
  it('releases the stream at its final offset; a cold migration claims it and continues there', async () => {
    redis = await startRedis();
    client = redis.client();
    const a = await daemon('host-a');
    const c = await daemon('host-c');
    const peer = await SocketPeer.listen();
    await attachTcp(a, 'g4', peer);
    await peer.waitForConnections(1);
    peer.send(lines('a', 0, 10));
    await waitReplicated(a, 'g4');
    const del = await a.api('DELETE', '/v1/guests/g4');
    expect(del.status).toBe(200);
    const released = await new SharedLog(client).owner('g4');
    expect(released).toMatchObject({ host: null, handoff: 'released', epoch: 1 });
    const stream = await readStream(client, 'g4');
    expect(stream.bytes.toString('latin1')).toMatch(
      /a 9\r\n\r\n\[consoled\] released by host-a at [^\r]*\r\n$/,
    );
    expect(released.next).toBe(stream.next);
    // The guest starts on c (evacuate, rebuild, cold migration): c claims it with epoch 2.
    const peerC = await SocketPeer.listen();
    await attachTcp(c, 'g4', peerC);
    await peerC.waitForConnections(1);
    peerC.send(lines('c', 0, 5));
    const s = await waitReplicated(c, 'g4');
    expect(s.replication).toMatchObject({ role: 'owner', epoch: 2 });
    const after = await readStream(client, 'g4');
    expect(after.bytes.subarray(0, stream.bytes.length).equals(stream.bytes)).toBe(true);
    expect(after.bytes.toString('latin1').match(/c \d+\r\n/g)).toHaveLength(5);
    // c's local log equals the stream from where c took over.
    const local = await localLog(c, 'g4');
    expect(local.start).toBe(stream.next);
    expect(after.bytes.subarray(local.start).equals(local.bytes)).toBe(true);
  });

  it('with a live handoff pending, waits for it instead of releasing: the destination completes cleanly', async () => {
    redis = await startRedis();
    client = redis.client();
    // The paused source still prints: a's drain lasts until its drain timeout, and the
    // DELETE lands meanwhile, with the handoff asked for and not yet sealed. (A drain
    // ends after drainQuietMs without a byte: 300 ms, so that a busy machine's late
    // timer in this process does not end it.)
    const { a, b, srcPeer, dstPeer } = await incomingUnderWay('g5', { drainQuietMs: 300 });
    let n = 10;
    const busy = setInterval(() => srcPeer.current && srcPeer.send(lines('src', n++, 1)), 10);
    dstPeer.send(lines('dst', 0, 5));
    await waitFor(
      'the request',
      async () => (await new SharedLog(client).owner('g5')).handoff === 'pending',
      {
        intervalMs: 5,
      },
    );
    const del = a.api('DELETE', '/v1/guests/g5');
    await sleep(100);
    clearInterval(busy);
    expect((await del).status).toBe(200);
    const s = await waitRole(b, 'g5', 'owner');
    expect(s.replication?.handoff.phase).toBe('completed');
    await waitReplicated(b, 'g5');
    const text = (await readStream(client, 'g5')).bytes.toString('latin1');
    expect(text).toMatch(/handoff to host-b/);
    expect(text).not.toMatch(/handoff-timeout|released by/);
  });

  it('landing just before the destination first byte: the stream is released, and the destination continues it without a gap', async () => {
    redis = await startRedis();
    client = redis.client();
    const { a, b, dstPeer } = await incomingUnderWay('g6');
    expect((await a.api('DELETE', '/v1/guests/g6')).status).toBe(200);
    dstPeer.send(lines('dst', 0, 5));
    const s = await waitRole(b, 'g6', 'owner');
    expect(s.replication).toMatchObject({ epoch: 2, handoff: { phase: 'completed' } });
    await waitReplicated(b, 'g6');
    const text = (await readStream(client, 'g6')).bytes.toString('latin1');
    expect(text).toMatch(
      /src 9\r\n\r\n\[consoled\] released by host-a at [^\r]*\r\n\r\n\[consoled\] handoff from host-a at [^\r]*\r\ndst 0\r\n/,
    );
    expect(text).not.toMatch(/capture gap/);
  });
});

describe('confirmed ownership', () => {
  it('a host says unverified while Redis is unreachable, and owner only once Redis confirms it', async () => {
    redis = await startRedis();
    client = redis.client();
    const a = await daemon('host-a');
    const peer = await SocketPeer.listen();
    await attachTcp(a, 'g7', peer);
    await peer.waitForConnections(1);
    peer.send(lines('x', 0, 5));
    await waitReplicated(a, 'g7');
    await redis.stop();
    await a.restart();
    const s = await waitRole(a, 'g7', 'unverified');
    expect(s.replication?.redis).not.toBe('ready');
    peer.send(lines('x', 5, 5)); // captured locally meanwhile
    await redis.start();
    await waitReplicated(a, 'g7');
    const text = (await readStream(client, 'g7')).bytes.toString('latin1');
    expect(text.match(/x \d+\r\n/g)).toHaveLength(10);
  });

  it('an owner another host fenced says so at the first status request, not at its next poll', async () => {
    redis = await startRedis();
    client = redis.client();
    const a = await daemon('host-a', { pollIntervalMs: 60_000 });
    const peer = await SocketPeer.listen();
    await attachTcp(a, 'g8', peer);
    await peer.waitForConnections(1);
    peer.send(lines('x', 0, 5));
    await waitReplicated(a, 'g8');
    await new SharedLog(client).claim('g8', { host: 'host-x', expectedEpoch: 1 });
    const s = await guestStatus(a, 'g8');
    expect(s.replication?.role).not.toBe('owner');
    await waitRole(a, 'g8', 'fenced');
  });
});
