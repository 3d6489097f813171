import { afterAll, describe, expect, it } from 'vitest';
import { type Segment, SharedLog } from '../../store/replication/shared-log.js';
import { startRedis, startSentinel, stopAllRedis } from '../support/redis-server.js';
import { waitFor } from '../support/wait.js';

afterAll(stopAllRedis);

function bytesAt(start: number, end: number): Buffer {
  const out = Buffer.alloc(end - start);
  for (let i = start; i < end; i++) out[i - start] = (i * 7) % 256;
  return out;
}

function segment(offset: number, size: number, epoch = 1): Segment {
  return { epoch, host: 'h1', offset, bytes: bytesAt(offset, offset + size), boot: 1, timestampMs: 1 };
}

async function appendRun(shared: SharedLog, guest: string, count: number, size: number): Promise<number> {
  let next = (await shared.lastOffset(guest)) ?? 0;
  for (let i = 0; i < count; i++) next = (await shared.append(guest, segment(next, size), 0)).next;
  return next;
}

describe('durability of the shared stream', () => {
  it('AOF: a SIGKILLed Redis restarts with every acknowledged append', async () => {
    const server = await startRedis({ persistence: 'aof' });
    const client = server.client();
    const shared = new SharedLog(client);
    await shared.claim('vm-aof', { host: 'h1', expectedEpoch: 'any' });
    const end = await appendRun(shared, 'vm-aof', 50, 100);

    await server.kill();
    await server.restart();
    await waitFor('the client to reconnect', async () => (await client.ping()) === 'PONG');

    expect(await shared.owner('vm-aof')).toMatchObject({ epoch: 1, host: 'h1', next: end, entries: 50 });
    expect((await shared.readRange('vm-aof', 0, end, end)).bytes.equals(bytesAt(0, end))).toBe(true);
    // The scripts are reloaded on the new connection (NOSCRIPT falls back to EVAL).
    expect((await shared.append('vm-aof', segment(end, 10), 0)).next).toBe(end + 10);
  });

  it('a replica promoted with REPLICAOF NO ONE has the entries WAIT confirmed', async () => {
    const primary = await startRedis();
    const replica = await startRedis({ replicaOf: { host: '127.0.0.1', port: primary.port } });
    const primaryClient = primary.client();
    const shared = new SharedLog(primaryClient);
    await shared.claim('vm-failover', { host: 'h1', expectedEpoch: 'any' });
    const end = await appendRun(shared, 'vm-failover', 20, 64);
    // WAIT answers as soon as the replica acknowledges; the bound is for a busy machine.
    expect(await primaryClient.wait(1, 10_000)).toBe(1);

    await primary.kill();
    const promotedClient = replica.client();
    await promotedClient.replicaof('NO', 'ONE');
    const promoted = new SharedLog(promotedClient);
    expect(await promoted.owner('vm-failover')).toMatchObject({ epoch: 1, next: end, entries: 20 });
    expect((await promoted.readRange('vm-failover', 0)).bytes.equals(bytesAt(0, end))).toBe(true);
    // The owner continues on the promoted server; a re-send of the last segment is recognised.
    expect((await promoted.append('vm-failover', segment(end - 64, 64), 0)).status).toBe('duplicate');
    expect((await promoted.append('vm-failover', segment(end, 64), 0)).next).toBe(end + 64);
  });

  it('works through a Sentinel-backed client', async () => {
    const primary = await startRedis();
    const sentinel = await startSentinel(primary);
    const shared = new SharedLog(sentinel.masterClient());
    await shared.claim('vm-sentinel', { host: 'h1', expectedEpoch: 'any' });
    const end = await appendRun(shared, 'vm-sentinel', 5, 30);
    expect((await shared.tail('vm-sentinel', 40)).bytes.equals(bytesAt(end - 40, end))).toBe(true);
    const direct = new SharedLog(primary.client());
    expect(await direct.lastOffset('vm-sentinel')).toBe(end);
  });
});
