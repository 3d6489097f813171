/**
 * The expiry sweep and the memory watch on a real three-node Redis Cluster: SCAN runs
 * per master with a cursor each, so every gone guest's keys go, wherever their slot
 * is, and an owned one stays (docs/design.md "Retention").
 */
import type { Cluster } from 'ioredis';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { silentLogger } from '../../common/logger.js';
import { RedisConnection } from '../../sidecar/replication/redis-connection.js';
import { RedisMemoryWatch } from '../../sidecar/replication/redis-memory-watch.js';
import { redisConfigSchema } from '../../sidecar/replication/replication-config.js';
import { StreamExpiry } from '../../sidecar/replication/stream-expiry.js';
import { guestKeys } from '../../store/replication/redis-keys.js';
import { type RedisClusterHandle, startRedisCluster, stopAllRedis } from '../support/redis-server.js';
import { waitFor } from '../support/wait.js';

const stops: Array<() => unknown> = [];
afterEach(async () => {
  for (const stop of stops.splice(0)) await stop();
});
afterAll(stopAllRedis);

async function released(client: Cluster, id: string, goneSince: number | null): Promise<void> {
  const k = guestKeys('consoled:', id);
  await client.hset(k.owner, {
    epoch: '2',
    next: '5',
    handoff: 'released',
    releasedAt: '5',
    ...(goneSince === null ? {} : { goneSince: String(goneSince) }),
  });
  await client.xadd(k.log, '0-1', 'd', 'hello', 'h', 'h1', 'e', '2', 'b', '1', 't', '1', 'o', '0');
  await client.zadd(k.boots, 0, '1');
}

describe('retention on a Redis Cluster', () => {
  let cluster: RedisClusterHandle;

  it('expires gone guests on every master, keeps owned ones, and reads memory from every master', async () => {
    cluster = await startRedisCluster(3);
    const client = cluster.client();
    const gone = Array.from({ length: 30 }, (_, i) => `gone-${i}-${(i * 7919).toString(36)}`);
    for (const id of gone) await released(client, id, 1);
    await client.hset(guestKeys('consoled:', 'owned').owner, { epoch: '1', host: 'h1', handoff: 'none' });
    // Not a guest's owner record, though the pattern matches: left alone.
    await client.set('consoled:{not a guest}:owner', 'x');

    const config = redisConfigSchema.parse({
      cluster: { nodes: cluster.startupNodes },
      retention: { goneAfterMs: 1_000, sweepIntervalMs: 20, sweepBatch: 5 },
      memory: { checkIntervalMs: 50 },
    });
    const connection = new RedisConnection(config, 'sweeper', silentLogger());
    const expiry = new StreamExpiry(connection, config, silentLogger());
    const memory = new RedisMemoryWatch(connection, config.memory, silentLogger());
    stops.push(
      () => expiry.stop(),
      () => memory.stop(),
      () => connection.close(),
    );

    await waitFor(
      'every gone guest to expire',
      async () => {
        for (const id of gone)
          if ((await client.exists(guestKeys('consoled:', id).owner)) === 1) return false;
        return true;
      },
      { timeoutMs: 20_000 },
    );
    expect(expiry.counters.expiredStreams).toBe(gone.length);
    for (const id of gone) {
      const k = guestKeys('consoled:', id);
      expect(await client.exists(k.log, k.boots)).toBe(0);
    }
    expect(await client.exists(guestKeys('consoled:', 'owned').owner)).toBe(1);
    expect(await client.get('consoled:{not a guest}:owner')).toBe('x');

    await waitFor('a memory reading', () => memory.last !== null);
    // The test servers run without maxmemory.
    expect(memory.level).toBe('unbounded');
    expect(memory.last?.usedBytes).toBeGreaterThan(0);
  });
});
