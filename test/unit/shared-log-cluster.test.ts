import type { Cluster } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ConsoledError } from '../../common/errors.js';
import { SharedLog } from '../../store/replication/shared-log.js';
import { type RedisClusterHandle, startRedisCluster, stopAllRedis } from '../support/redis-server.js';

let cluster: RedisClusterHandle;
let client: Cluster;
let shared: SharedLog;

beforeAll(async () => {
  cluster = await startRedisCluster(3);
  client = cluster.client();
  shared = new SharedLog(client, { followBlockMs: 200 });
});
afterAll(stopAllRedis);

function bytesOf(guest: string, start: number, end: number): Buffer {
  const out = Buffer.alloc(end - start);
  for (let i = start; i < end; i++) out[i - start] = (i + guest.length * 17) % 256;
  return out;
}

describe('Redis Cluster', () => {
  it('spreads guests over the three primaries; scripts and reads work per guest', async () => {
    const guests = Array.from({ length: 48 }, (_, i) => `vm-${i}-${(i * 7919).toString(36)}`);
    await Promise.all(
      guests.map(async (guest, i) => {
        const { epoch } = await shared.claim(guest, { host: 'h1', expectedEpoch: 'any' });
        let next = 0;
        for (let boot = 1; boot <= 2; boot++) {
          for (const size of [40 + i, 3, 200]) {
            const reply = await shared.append(
              guest,
              {
                epoch,
                host: 'h1',
                offset: next,
                bytes: bytesOf(guest, next, next + size),
                boot,
                timestampMs: 1,
              },
              300,
            );
            next = reply.next;
          }
        }
        const status = await shared.owner(guest);
        expect(status).toMatchObject({ epoch: 1, host: 'h1', next, boot: 2 });
        const read = await shared.readRange(guest, 0);
        expect(read.start).toBe(status.oldestOffset);
        expect(read.next).toBe(next);
        expect(read.bytes.equals(bytesOf(guest, read.start, next))).toBe(true);
        expect((await shared.tail(guest, 10)).bytes.equals(bytesOf(guest, next - 10, next))).toBe(true);
        const current = await shared.bootRange(guest, 'current');
        expect(current).toEqual({ boot: 2, start: next - (243 + i), end: next });
        // Fencing holds per guest in the cluster too.
        await shared.claim(guest, { host: 'h2', expectedEpoch: 1 });
        const fenced = await shared
          .append(
            guest,
            { epoch: 1, host: 'h1', offset: next, bytes: Buffer.from('x'), boot: 2, timestampMs: 1 },
            0,
          )
          .catch((err: unknown) => err);
        expect(fenced instanceof ConsoledError && fenced.code).toBe('FENCED');
      }),
    );

    // Every primary holds some guests: all of one guest's keys live on one node.
    const perNode = await Promise.all(
      cluster.nodes.map(async (node) => {
        const direct = node.client();
        try {
          return (await direct.keys('consoled:*')).sort();
        } finally {
          direct.disconnect();
        }
      }),
    );
    for (const keys of perNode) expect(keys.length).toBeGreaterThan(0);
    expect(perNode.flat()).toHaveLength(guests.length * 3);
    for (const keys of perNode) {
      for (const key of keys) {
        const tag = key.slice(key.indexOf('{'), key.indexOf('}') + 1);
        expect(keys.filter((k) => k.includes(tag))).toHaveLength(3);
      }
    }
  });

  it('follow works through a duplicated Cluster connection', async () => {
    const guest = 'cluster-follow';
    const { epoch } = await shared.claim(guest, { host: 'h1', expectedEpoch: 'any' });
    const abort = new AbortController();
    const received: Buffer[] = [];
    const seen: { start: number; next: number }[] = [];
    const done = (async () => {
      for await (const chunk of shared.follow(guest, 0, abort.signal)) {
        seen.push({ start: chunk.start, next: chunk.next });
        received.push(chunk.bytes);
        if (chunk.next >= 30) abort.abort();
      }
    })();
    for (let offset = 0; offset < 30; offset += 10) {
      await new Promise((resolve) => setTimeout(resolve, 20));
      await shared.append(
        guest,
        { epoch, host: 'h1', offset, bytes: bytesOf(guest, offset, offset + 10), boot: 1, timestampMs: 1 },
        0,
      );
    }
    await done;
    // No jump: each chunk starts where the previous one ended.
    for (let i = 1; i < seen.length; i++)
      expect(seen[i]!.start, JSON.stringify(seen)).toBe(seen[i - 1]!.next);
    expect(Buffer.concat(received).equals(bytesOf(guest, 0, 30))).toBe(true);
  });
});
