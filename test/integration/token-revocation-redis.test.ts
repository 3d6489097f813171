/**
 * Where replication is configured, a revocation holds on every host that shares the
 * Redis and `console.tokenSecret` (README "Tokens"): the revoking host sets
 * `<prefix>{_tokens}:revoked:<jti>` (PX until it is no longer needed) and publishes a
 * notice on `<prefix>tokens:revoked`, on which every host ends its matching sessions;
 * a host checks the key at every new connection. The attack: keep watching, or
 * reconnect, on another host after the token was revoked.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ConsoleViewer } from '../support/console-viewer.js';
import { closeAllPeers, SocketPeer, startDaemon, stopAllDaemons } from '../support/daemon.js';
import { type RedisHandle, startRedis, stopAllRedis } from '../support/redis-server.js';
import { replicationConfig } from '../support/replication.js';
import { removeTmpDirs } from '../support/tmp.js';
import { waitFor } from '../support/wait.js';

const SECRET = 'a-shared-console-token-secret-for-revocations';
const PREFIX = 'revoke-test:';

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

describe('revocation through Redis', () => {
  it('ends the session on another host at once, and every host refuses the token afterwards', async () => {
    const config = (host: string) =>
      replicationConfig(
        host,
        { url: redis.url, keyPrefix: PREFIX },
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
    const c = await startDaemon({ config: config('host-c') });
    expect(await ConsoleViewer.refusal(c.url, 'vm', { token: t.token })).toMatchObject({
      kind: 'close',
      closeCode: 4407,
      reason: 'TOKEN_REVOKED',
    });
    expect(await ConsoleViewer.refusal(c.url, 'vm', { token: t.token, header: true })).toMatchObject({
      kind: 'http',
      status: 401,
      code: 'TOKEN_REVOKED',
    });
    // Another token is not affected anywhere.
    const other = await a.json<{ token: string }>('POST', '/v1/guests/vm/tokens', { mode: 'ro', ttl: '10m' });
    for (const host of [a, b, c]) {
      const v = await ConsoleViewer.connect(host.url, 'vm', { token: other.token });
      await v.close();
    }
  });
});
