/**
 * Where replication is configured, a viewer token's state is shared through Redis with
 * every host that shares `console.tokenSecret` (README "Tokens"):
 * - a spent single-use token is recorded too (`SET NX` with the token's remaining
 *   lifetime, under the key prefix): a host that shares the token secret refuses it,
 *   and so does a host that lost its state directory. The attack: replay a spent token
 *   on another host, and on a rebuilt one.
 * - a revoked token (`<prefix>{_tokens}:revoked:<jti>`, PX until it is no longer needed,
 *   and a notice on `<prefix>tokens:revoked`, on which every host ends its matching
 *   sessions; every host checks the key at each new connection). The attack: keep
 *   watching, or reconnect, on another host after the token was revoked.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ConsoleViewer } from '../support/console-viewer.js';
import { closeAllPeers, SocketPeer, startDaemon, stopAllDaemons } from '../support/daemon.js';
import { type RedisHandle, startRedis, stopAllRedis } from '../support/redis-server.js';
import { replicationConfig } from '../support/replication.js';
import { removeTmpDirs } from '../support/tmp.js';
import { waitFor } from '../support/wait.js';

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

/** A host of the cluster: the shared Redis (under `keyPrefix`) and token secret, and guest `vm`. */
function config(host: string, keyPrefix: string): Record<string, unknown> {
  return replicationConfig(
    host,
    { url: redis.url, keyPrefix },
    {
      console: { tokenSecret: SECRET },
      guests: [{ id: 'vm', source: { type: 'tcp', host: '127.0.0.1', port: peer.port } }],
    },
  );
}

describe('spent single-use tokens in Redis', () => {
  it('are refused on another host with the same secret, and on a host with a new state directory', async () => {
    const a = await startDaemon({ config: config('host-a', 'sec-test:') });
    const b = await startDaemon({ config: config('host-b', 'sec-test:') });
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
    const rebuilt = await startDaemon({ config: config('host-a', 'sec-test:') });
    expect(await ConsoleViewer.refusal(rebuilt.url, 'vm', { token: t.token, header: true })).toMatchObject({
      kind: 'http',
      status: 401,
      code: 'TOKEN_REUSED',
    });
  });
});

describe('revocations through Redis', () => {
  const PREFIX = 'revoke-test:';

  it('ends the session on another host at once, and every host refuses the token afterwards', async () => {
    const a = await startDaemon({ config: config('host-a', PREFIX) });
    const b = await startDaemon({ config: config('host-b', PREFIX) });
    const t = await a.json<{ token: string; id: string }>('POST', '/v1/guests/vm/tokens', {
      mode: 'ro',
      ttl: '10m',
      renewableFor: '1h',
    });
    const onB = await ConsoleViewer.connect(b.url, 'vm', { token: t.token });
    const client = redis.client();
    // Both hosts listen on the channel (they subscribe once connected to Redis).
    await waitFor('both hosts to subscribe', async () => {
      const [, count] = (await client.pubsub('NUMSUB', `${PREFIX}tokens:revoked`)) as [string, number];
      return count === 2;
    });

    const answer = await a.json<{ revoked: string; until: string; endedSessions: number; shared: boolean }>(
      'DELETE',
      `/v1/tokens/${t.id}`,
    );
    expect(answer).toMatchObject({ revoked: t.id, endedSessions: 0, shared: true });
    expect(await onB.closed).toEqual({ code: 4407, reason: 'TOKEN_REVOKED' });
    expect(await ConsoleViewer.refusal(b.url, 'vm', { token: t.token })).toMatchObject({
      kind: 'close',
      reason: 'TOKEN_REVOKED',
    });
    await waitFor(
      'host-b to log the revocation it heard',
      () => b.logs().includes('"event":"console.revoke"') && b.logs().includes('"by":"host-a"'),
    );

    const key = `${PREFIX}{_tokens}:revoked:${t.id}`;
    expect(await client.get(key)).toBe(String(Date.parse(answer.until)));
    const ttl = await client.pttl(key);
    expect(ttl).toBeGreaterThan(23 * 3_600_000);
    client.disconnect();

    // A host that was not there to hear the notice: the key refuses it, before the upgrade too.
    const c = await startDaemon({ config: config('host-c', PREFIX) });
    expect(await ConsoleViewer.refusedBothWays(c.url, 'vm', t.token)).toMatchObject({
      frame: { kind: 'close', closeCode: 4407, reason: 'TOKEN_REVOKED' },
      header: { kind: 'http', status: 401, code: 'TOKEN_REVOKED' },
    });
    // Another token is not affected anywhere.
    const other = await a.json<{ token: string }>('POST', '/v1/guests/vm/tokens', { mode: 'ro', ttl: '10m' });
    for (const host of [a, b, c]) {
      const v = await ConsoleViewer.connect(host.url, 'vm', { token: other.token });
      await v.close();
    }
  });
});
