/**
 * Replication through Redis Cluster (three primaries started by the test with
 * `--cluster-enabled yes` and `redis-cli --cluster create`): many guests of one
 * daemon spread over the slots, every stream equal to its local log, every guest's
 * keys in one slot, and reads from a second daemon configured with the cluster too.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { guestKeys } from '../../store/replication/redis-keys.js';
import {
  closeAllPeers,
  readLog,
  SocketPeer,
  startInProcessDaemon,
  stopAllInProcessDaemons,
} from '../support/daemon.js';
import { startRedisCluster, stopAllRedis } from '../support/redis-server.js';
import {
  guestStatus,
  localLog,
  readStream,
  replicationConfig,
  waitReplicated,
} from '../support/replication.js';
import { removeTmpDirs } from '../support/tmp.js';

afterAll(async () => {
  await stopAllInProcessDaemons();
  await closeAllPeers();
  await stopAllRedis();
  await removeTmpDirs();
});

const GUESTS = 40;

describe('Redis Cluster', () => {
  it('replicates many guests over three primaries; reads work from another host', async () => {
    const cluster = await startRedisCluster(3);
    const redis = { cluster: { nodes: cluster.startupNodes } };
    const a = await startInProcessDaemon({ config: replicationConfig('host-a', redis) });
    const b = await startInProcessDaemon({ config: replicationConfig('host-b', redis) });
    const ids = Array.from({ length: GUESTS }, (_, i) => `vm-${String(i).padStart(3, '0')}`);
    const peers = await Promise.all(ids.map(() => SocketPeer.listen()));
    for (const [i, id] of ids.entries()) {
      const res = await a.api('PUT', `/v1/guests/${id}`, {
        source: { type: 'tcp', host: '127.0.0.1', port: peers[i]!.port },
      });
      expect(res.status).toBe(201);
    }
    await Promise.all(peers.map((p) => p.waitForConnections(1)));
    for (let round = 0; round < 5; round++) {
      for (const [i, id] of ids.entries()) peers[i]!.send(`${id} round ${round} ${'='.repeat(i)}\r\n`);
    }
    const client = cluster.client();
    for (const id of ids) {
      await waitReplicated(a, id);
      const stream = await readStream(client, id);
      const local = await localLog(a, id);
      expect(stream.oldest).toBe(0);
      expect(stream.bytes.equals(local.bytes)).toBe(true);
      const remote = await readLog(b, id, { start: 0, scope: 'cluster' });
      expect(remote.bytes.equals(local.bytes)).toBe(true);
      expect((await guestStatus(a, id)).replication).toMatchObject({ role: 'owner', epoch: 1 });
    }
    // Each guest's keys live on one primary; together the guests use all three.
    const perNode = await Promise.all(
      cluster.nodes.map(async (node) => {
        const c = node.client();
        let held = 0;
        for (const id of ids) {
          const keys = guestKeys('consoled:', id);
          const found = await Promise.all(
            [keys.log, keys.owner, keys.boots].map(async (k) => {
              try {
                return (await c.exists(k)) === 1;
              } catch {
                return false; // MOVED: another node's slot
              }
            }),
          );
          if (found.every(Boolean)) held++;
          else expect(found.some(Boolean)).toBe(false);
        }
        return held;
      }),
    );
    expect(perNode.reduce((x, y) => x + y, 0)).toBe(GUESTS);
    for (const held of perNode) expect(held).toBeGreaterThan(0);
  }, 90_000);
});
