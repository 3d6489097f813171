/**
 * The host registry (store/replication/host-registry.ts) against a real Redis: what a
 * host publishes is listed, sorted by id, with when it was last seen; a host whose
 * entry outlived its TTL is left out and pruned from the index, and a removed one is
 * gone at once. The heartbeat (sidecar/replication/host-heartbeat.ts) publishes again
 * after Redis restarts empty and takes its entry out when stopped for a shutdown,
 * not for an upgrade. The registry works on a Redis Cluster too: its keys share one
 * hash tag (docs/design.md "Redis schema").
 */
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { silentLogger } from '../../common/logger.js';
import { HostHeartbeat } from '../../sidecar/replication/host-heartbeat.js';
import { RedisConnection } from '../../sidecar/replication/redis-connection.js';
import { redisConfigSchema } from '../../sidecar/replication/replication-config.js';
import { type HostAnnouncement, HostRegistry } from '../../store/replication/host-registry.js';
import { hostRegistryKeys } from '../../store/replication/redis-keys.js';
import { type RedisHandle, startRedis, startRedisCluster, stopAllRedis } from '../support/redis-server.js';
import { sleep, waitFor } from '../support/wait.js';

const PREFIX = 'consoled:';

const stops: Array<() => unknown> = [];
afterEach(async () => {
  for (const stop of stops.splice(0).reverse()) await stop();
});
afterAll(stopAllRedis);

function announcement(hostId: string, pid = 1000): HostAnnouncement {
  return {
    hostId,
    apiUrl: `https://${hostId}.example:7070`,
    consoleUrl: `https://console.example/${hostId}`,
    version: '1.2.3',
    pid,
    startedAt: Date.UTC(2026, 0, 1),
  };
}

describe('HostRegistry', () => {
  let redis: RedisHandle;

  it('lists what hosts published, sorted by id, with when each was last seen', async () => {
    redis = await startRedis();
    const client = redis.client();
    const registry = new HostRegistry(client, PREFIX);
    expect(await registry.list()).toEqual([]);
    const before = Date.now();
    await registry.publish(announcement('host-b', 22), 30_000);
    await registry.publish(announcement('host-a', 11), 30_000);
    const hosts = await registry.list();
    expect(hosts.map((h) => h.hostId)).toEqual(['host-a', 'host-b']);
    expect(hosts[0]).toMatchObject({ ...announcement('host-a', 11) });
    expect(hosts[0]!.lastSeenAgoMs).toBeGreaterThanOrEqual(0);
    expect(hosts[0]!.lastSeenAgoMs).toBeLessThan(5_000);
    expect(hosts[0]!.lastSeen).toBeGreaterThanOrEqual(before - 50);

    // The keys docs/design.md "Redis schema" names: a hash with a TTL and the index.
    const keys = hostRegistryKeys(PREFIX);
    expect(keys.index).toBe('consoled:{_hosts}:index');
    expect(keys.host('host-a')).toBe('consoled:{_hosts}:host:host-a');
    expect(await client.hget(keys.host('host-a'), 'apiUrl')).toBe('https://host-a.example:7070');
    const ttl = await client.pttl(keys.host('host-a'));
    expect(ttl).toBeGreaterThan(20_000);
    expect(ttl).toBeLessThanOrEqual(30_000);
    // Scored by publish time: host-b first.
    expect(await client.zrange(keys.index, '0', '-1')).toEqual(['host-b', 'host-a']);

    // Publishing again replaces the entry (an upgrade's successor: same id, new pid).
    await registry.publish(announcement('host-a', 12), 30_000);
    expect((await registry.list())[0]!.pid).toBe(12);
  });

  /** A client of the same server, emptied, and a registry on it. */
  async function emptyRegistry() {
    const client = redis.client();
    await client.flushall();
    return { client, registry: new HostRegistry(client, PREFIX) };
  }

  it('leaves out and prunes a host whose entry outlived its TTL', async () => {
    const { client, registry } = await emptyRegistry();
    await registry.publish(announcement('short'), 200);
    await registry.publish(announcement('long'), 30_000);
    expect((await registry.list()).map((h) => h.hostId)).toEqual(['long', 'short']);
    await waitFor(
      'the short entry to expire',
      async () => (await client.exists(hostRegistryKeys(PREFIX).host('short'))) === 0,
    );
    expect((await registry.list()).map((h) => h.hostId)).toEqual(['long']);
    expect(await client.zrange(hostRegistryKeys(PREFIX).index, '0', '-1')).toEqual(['long']);
    // A host that comes back is listed again.
    await registry.publish(announcement('short'), 30_000);
    expect((await registry.list()).map((h) => h.hostId)).toEqual(['long', 'short']);
  });

  it('measures lastSeenAgoMs by the remaining TTL, not the publisher clock', async () => {
    const { client, registry } = await emptyRegistry();
    await registry.publish(announcement('skewed'), 30_000);
    // A publisher whose clock is an hour ahead: its own lastSeen is in the future.
    await client.hset(hostRegistryKeys(PREFIX).host('skewed'), 'lastSeen', String(Date.now() + 3_600_000));
    await client.pexpire(hostRegistryKeys(PREFIX).host('skewed'), 29_000);
    const [host] = await registry.list();
    expect(host!.lastSeenAgoMs).toBeGreaterThanOrEqual(1_000);
    expect(host!.lastSeenAgoMs).toBeLessThan(5_000);
  });

  it('removes a host at once', async () => {
    const { client, registry } = await emptyRegistry();
    await registry.publish(announcement('a'), 30_000);
    await registry.publish(announcement('b'), 30_000);
    await registry.remove('a');
    expect((await registry.list()).map((h) => h.hostId)).toEqual(['b']);
    expect(await client.exists(hostRegistryKeys(PREFIX).host('a'))).toBe(0);
    expect(await client.zrange(hostRegistryKeys(PREFIX).index, '0', '-1')).toEqual(['b']);
  });
});

describe('HostHeartbeat', () => {
  it('publishes again after Redis restarts empty, and leaves the registry on a shutdown', async () => {
    const redis = await startRedis();
    const config = redisConfigSchema.parse({
      url: redis.url,
      reconnect: { initialDelayMs: 20, maxDelayMs: 100 },
      hosts: { heartbeatMs: 60_000, ttlMs: 120_000 },
    });
    const connection = new RedisConnection(config, 'hb', silentLogger());
    stops.push(() => connection.close());
    const registry = new HostRegistry(connection.client, PREFIX);
    const heartbeat = new HostHeartbeat(connection, registry, config.hosts, silentLogger());
    stops.push(() => heartbeat.stop({ remove: false }));
    heartbeat.start(announcement('hb'));
    const listed = async () => (await registry.list().catch(() => [])).map((h) => h.hostId);
    await waitFor('the first beat', async () => (await listed()).includes('hb'));
    const client = redis.client();

    // Restarted with no persistence: empty. The next beat is a minute away; the reconnect publishes.
    await redis.restart();
    await waitFor(
      'the entry to be published again after the reconnect',
      async () => (await listed()).includes('hb'),
      {
        timeoutMs: 10_000,
      },
    );
    expect(await client.pttl(hostRegistryKeys(PREFIX).host('hb'))).toBeGreaterThan(100_000);

    // Listing while Redis is away: REPLICATION_UNAVAILABLE.
    await redis.stop();
    await waitFor('the connection to notice', () => !connection.ready);
    await expect(heartbeat.list()).rejects.toMatchObject({ code: 'REPLICATION_UNAVAILABLE' });
    await redis.start();
    await waitFor('the entry again', async () => (await listed()).includes('hb'), { timeoutMs: 10_000 });

    await heartbeat.stop({ remove: true });
    expect(await listed()).toEqual([]);
  });

  it('keeps the entry when stopped for an upgrade, and stays quiet while paused', async () => {
    const redis = await startRedis();
    const config = redisConfigSchema.parse({ url: redis.url, hosts: { heartbeatMs: 50, ttlMs: 30_000 } });
    const connection = new RedisConnection(config, 'up', silentLogger());
    stops.push(() => connection.close());
    const registry = new HostRegistry(connection.client, PREFIX);
    const heartbeat = new HostHeartbeat(connection, registry, config.hosts, silentLogger());
    heartbeat.start(announcement('up', 1));
    await waitFor('the first beat', () => heartbeat.counters.beats > 0);
    heartbeat.pause();
    // The successor's entry, while this one is paused.
    await registry.publish(announcement('up', 2), 30_000);
    const beats = heartbeat.counters.beats;
    // Nothing to wait for: 400 ms are eight beat intervals, in which a paused heartbeat must not publish.
    await sleep(400);
    expect(heartbeat.counters.beats).toBe(beats);
    expect((await registry.list())[0]!.pid).toBe(2);
    await heartbeat.stop({ remove: false });
    expect((await registry.list()).map((h) => [h.hostId, h.pid])).toEqual([['up', 2]]);
  });
});

describe('HostRegistry on a Redis Cluster', () => {
  it('publishes, lists, prunes and removes with every key in one slot', async () => {
    const cluster = await startRedisCluster(3);
    const client = cluster.client();
    const registry = new HostRegistry(client, PREFIX);
    for (const id of ['c1', 'c2', 'c3']) await registry.publish(announcement(id), id === 'c2' ? 150 : 30_000);
    expect((await registry.list()).length).toBeGreaterThanOrEqual(2);
    await waitFor(
      'c2 to expire',
      async () => (await client.exists(hostRegistryKeys(PREFIX).host('c2'))) === 0,
    );
    expect((await registry.list()).map((h) => h.hostId)).toEqual(['c1', 'c3']);
    await registry.remove('c1');
    expect((await registry.list()).map((h) => h.hostId)).toEqual(['c3']);
    expect(await client.zrange(hostRegistryKeys(PREFIX).index, '0', '-1')).toEqual(['c3']);
    await cluster.destroy();
  });
});
