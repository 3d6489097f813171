/**
 * Where replication is configured, a spent single-use token is recorded in Redis
 * too (`SET NX` with the token's remaining lifetime, under the key prefix): a host
 * that shares the token secret refuses it, and so does a host that lost its state
 * directory. The attack: replay a spent token on another host, and on a rebuilt one.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ConsoleViewer } from '../support/console-viewer.js';
import { closeAllPeers, SocketPeer, startDaemon, stopAllDaemons } from '../support/daemon.js';
import { type RedisHandle, startRedis, stopAllRedis } from '../support/redis-server.js';
import { replicationConfig } from '../support/replication.js';
import { removeTmpDirs } from '../support/tmp.js';

const SECRET = 'a-shared-console-token-secret-0123456789';

let redis: RedisHandle;
let peer: SocketPeer;

beforeAll(async () => {
  redis = await startRedis();
  peer = await SocketPeer.listen();
});

afterAll(async () => {
  await stopAllDaemons();
  await stopAllRedis();
  await closeAllPeers();
  await removeTmpDirs();
});

describe('spent single-use tokens in Redis', () => {
  it('are refused on another host with the same secret, and on a host with a new state directory', async () => {
    const config = (host: string) =>
      replicationConfig(
        host,
        { url: redis.url, keyPrefix: 'sec-test:' },
        {
          console: { tokenSecret: SECRET },
          guests: [{ id: 'vm', source: { type: 'tcp', host: '127.0.0.1', port: peer.port } }],
        },
      );
    const a = await startDaemon({ config: config('host-a') });
    const b = await startDaemon({ config: config('host-b') });
    const t = await a.json<{ token: string; id: string }>('POST', '/v1/guests/vm/tokens', {
      mode: 'ro',
      ttl: '10m',
      singleUse: true,
    });
    const v = await ConsoleViewer.connect(a.url, 'vm', { token: t.token });
    await v.close();
    expect(await ConsoleViewer.refusal(b.url, 'vm', { token: t.token })).toMatchObject({
      kind: 'close',
      reason: 'TOKEN_REUSED',
    });
    const client = redis.client();
    const keys = await client.keys('sec-test:*used-token*');
    expect(keys).toEqual([`sec-test:{vm}:used-token:${t.id}`]);
    const ttl = await client.pttl(keys[0]!);
    expect(ttl).toBeGreaterThan(0);
    expect(ttl).toBeLessThanOrEqual(601_000); // exp is rounded up to a whole second
    client.disconnect();

    // host-a rebuilt: a fresh state directory, the same secret.
    await a.stop();
    const rebuilt = await startDaemon({ config: config('host-a') });
    expect(await ConsoleViewer.refusal(rebuilt.url, 'vm', { token: t.token, header: true })).toMatchObject({
      kind: 'http',
      status: 401,
      code: 'TOKEN_REUSED',
    });
  });
});
