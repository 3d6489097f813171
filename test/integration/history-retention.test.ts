/**
 * Retention (docs/design.md "Retention"): real daemons, real redis-server processes,
 * socket chardevs standing for QEMU. A purge deletes a detached guest's files and
 * its stream; it is refused while the guest is attached here and while another host
 * owns the stream; the stream of a guest gone for `goneAfterMs` expires by itself;
 * Redis' memory is watched.
 */
import { existsSync } from 'node:fs';
import { mkdir, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Redis } from 'ioredis';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { guestKeys, skipsKey } from '../../store/replication/redis-keys.js';
import {
  CONSOLECTL_BIN,
  closeAllPeers,
  type DaemonHandle,
  SocketPeer,
  startDaemon,
  stopAllDaemons,
} from '../support/daemon.js';
import { type RedisHandle, startRedis, stopAllRedis } from '../support/redis-server.js';
import { attachTcp, guestStatus, lines, replicationConfig, waitReplicated } from '../support/replication.js';
import { runScript } from '../support/run-script.js';
import { removeTmpDirs, tmpDir } from '../support/tmp.js';
import { waitFor } from '../support/wait.js';

afterEach(async () => {
  await stopAllDaemons();
  await closeAllPeers();
  await stopAllRedis();
});
afterAll(removeTmpDirs);

function keysOf(id: string): string[] {
  const k = guestKeys('consoled:', id);
  return [k.owner, k.log, k.boots, k.markers, skipsKey('consoled:', id)];
}

async function existing(client: Redis, id: string): Promise<number> {
  return client.exists(...keysOf(id));
}

function daemon(redis: RedisHandle, host: string, redisExtra: Record<string, unknown> = {}) {
  return startDaemon({ config: replicationConfig(host, { url: redis.url, ...redisExtra }) });
}

/** Attaches `id` on `d`, sends some lines and waits until they are in the stream. */
async function guestWithHistory(d: DaemonHandle, id: string): Promise<SocketPeer> {
  const peer = await SocketPeer.listen();
  await attachTcp(d, id, peer);
  await peer.waitForConnections(1);
  const text = lines(id, 0, 50);
  peer.send(text);
  await waitFor(`${id}'s lines in the log`, async () => (await guestStatus(d, id)).offset >= text.length);
  await waitReplicated(d, id);
  return peer;
}

async function errorCode(res: Response): Promise<string | undefined> {
  const body = (await res.json()) as { error?: { code?: string } };
  return body.error?.code;
}

describe('history purge', () => {
  it('deletes the files and the stream of a detached guest, and audits it', async () => {
    const redis = await startRedis();
    const client = redis.client();
    const d = await daemon(redis, 'host-a');
    await guestWithHistory(d, 'gone-1');
    await d.json('DELETE', '/v1/guests/gone-1');
    const dir = join(d.stateDir, 'guests', 'gone-1');
    expect(existsSync(join(dir, 'console.log'))).toBe(true);
    // Released: the record names no host, so the stream may go.
    expect(await client.hget(keysOf('gone-1')[0]!, 'host')).toBeNull();
    expect(await existing(client, 'gone-1')).toBeGreaterThanOrEqual(3);

    const result = await d.json<{
      local: { removed: boolean; files: number; bytes: number };
      cluster: { removed: boolean; deletedKeys: number };
    }>('DELETE', '/v1/guests/gone-1/history?scope=all');
    expect(result.local.removed).toBe(true);
    expect(result.local.bytes).toBeGreaterThan(0);
    expect(result.cluster.removed).toBe(true);
    expect(existsSync(dir)).toBe(false);
    expect(await existing(client, 'gone-1')).toBe(0);
    await waitFor('the audit line', () =>
      /"component":"audit".*"event":"history.purge".*"guest":"gone-1"/.test(d.logs()),
    );

    // Nothing left: a second purge removes nothing and says so.
    const again = await d.json<{ local: { removed: boolean }; cluster: { removed: boolean } }>(
      'DELETE',
      '/v1/guests/gone-1/history?scope=all',
    );
    expect(again.local.removed).toBe(false);
    expect(again.cluster.removed).toBe(false);
    // The log is gone from both scopes.
    expect((await d.api('GET', '/v1/guests/gone-1/log?scope=local')).status).toBe(404);
    expect((await d.api('GET', '/v1/guests/gone-1/log?scope=cluster')).status).toBe(404);
  });

  it('purges one scope only when asked, and wants a scope', async () => {
    const redis = await startRedis();
    const client = redis.client();
    const d = await daemon(redis, 'host-a');
    await guestWithHistory(d, 'scoped');
    await d.json('DELETE', '/v1/guests/scoped');
    const dir = join(d.stateDir, 'guests', 'scoped');

    const noScope = await d.api('DELETE', '/v1/guests/scoped/history');
    expect(noScope.status).toBe(400);
    expect(await errorCode(noScope)).toBe('BAD_PARAMETER');

    await d.json('DELETE', '/v1/guests/scoped/history?scope=cluster');
    expect(await existing(client, 'scoped')).toBe(0);
    expect(existsSync(join(dir, 'console.log'))).toBe(true);
    await d.json('DELETE', '/v1/guests/scoped/history?scope=local');
    expect(existsSync(dir)).toBe(false);
  });

  it('is refused while the guest is attached here, and keeps everything', async () => {
    const redis = await startRedis();
    const client = redis.client();
    const d = await daemon(redis, 'host-a');
    await guestWithHistory(d, 'live');
    for (const scope of ['local', 'cluster', 'all']) {
      const res = await d.api('DELETE', `/v1/guests/live/history?scope=${scope}`);
      expect(res.status).toBe(409);
      expect(await errorCode(res)).toBe('GUEST_ATTACHED');
    }
    expect(existsSync(join(d.stateDir, 'guests', 'live', 'console.log'))).toBe(true);
    expect(await existing(client, 'live')).toBeGreaterThanOrEqual(3);
    await waitFor('the audit line', () =>
      /"event":"history.purge-refused".*"code":"GUEST_ATTACHED"/.test(d.logs()),
    );
  });

  it("is refused for the stream while another host owns it; this host's files may go", async () => {
    const redis = await startRedis();
    const client = redis.client();
    const a = await daemon(redis, 'host-a');
    const b = await daemon(redis, 'host-b');
    await guestWithHistory(a, 'owned');
    // b once held the guest's files (an earlier stay), detached.
    const stale = join(b.stateDir, 'guests', 'owned');
    await mkdir(stale, { mode: 0o750 });
    await writeFile(join(stale, 'console.log'), 'old stay\r\n');

    const refused = await b.api('DELETE', '/v1/guests/owned/history?scope=all');
    expect(refused.status).toBe(409);
    const body = (await refused.json()) as { error: { code: string; details: { host: string } } };
    expect(body.error.code).toBe('STREAM_OWNED');
    expect(body.error.details.host).toBe('host-a');
    // Nothing was deleted: not the stream, not b's files.
    expect(await existing(client, 'owned')).toBeGreaterThanOrEqual(3);
    expect(existsSync(stale)).toBe(true);

    const local = await b.json<{ local: { removed: boolean } }>(
      'DELETE',
      '/v1/guests/owned/history?scope=local',
    );
    expect(local.local.removed).toBe(true);
    expect(existsSync(stale)).toBe(false);
    // a still appends.
    expect(
      (await a.json<{ replication: { role: string } }>('GET', '/v1/guests/owned')).replication.role,
    ).toBe('owner');
  });

  it('refuses a guest directory that is a symbolic link, and leaves its target alone', async () => {
    const d = await startDaemon();
    const target = tmpDir('elsewhere');
    await writeFile(join(target, 'precious'), 'keep me');
    await symlink(target, join(d.stateDir, 'guests', 'linked'));
    const res = await d.api('DELETE', '/v1/guests/linked/history?scope=local');
    expect(res.status).toBe(500);
    expect(await errorCode(res)).toBe('UNSAFE_PATH');
    expect(existsSync(join(target, 'precious'))).toBe(true);
  });

  it('consolectl purge: --cluster, then --local, then both; refused while attached', async () => {
    const redis = await startRedis();
    const client = redis.client();
    const d = await daemon(redis, 'host-a');
    const peer = await guestWithHistory(d, 'cli-1');
    const ctl = (...args: string[]) =>
      runScript(CONSOLECTL_BIN, ['--url', d.url, '--token', d.token, 'purge', 'cli-1', ...args]);

    const attached = await ctl();
    expect(attached.code).not.toBe(0);
    expect(attached.stderr).toContain('GUEST_ATTACHED');
    await d.json('DELETE', '/v1/guests/cli-1');
    expect((await ctl('--local', '--cluster')).code).not.toBe(0);

    const cluster = await ctl('--cluster');
    expect(cluster.code).toBe(0);
    expect(cluster.stdout).toMatch(/^cli-1: cluster: \d+ Redis keys deleted\n$/);
    expect(await existing(client, 'cli-1')).toBe(0);
    const local = await ctl('--local', '--json');
    expect(JSON.parse(local.stdout)).toMatchObject({
      scope: 'local',
      local: { removed: true },
      cluster: null,
    });
    const both = await ctl();
    expect(both.stdout).toBe('cli-1: local: nothing here; cluster: no stream\n');
    await peer.close();
  });

  it('refuses the cluster scope without Redis', async () => {
    const d = await startDaemon();
    const res = await d.api('DELETE', '/v1/guests/x/history?scope=cluster');
    expect(res.status).toBe(503);
    expect(await errorCode(res)).toBe('REPLICATION_UNAVAILABLE');
  });
});

describe('stream expiry', () => {
  it('deletes the stream of a guest gone for goneAfterMs, and keeps an owned one and one that came back', async () => {
    const redis = await startRedis();
    const client = redis.client();
    const d = await daemon(redis, 'host-a', { retention: { goneAfterMs: 1_000, sweepIntervalMs: 50 } });
    await guestWithHistory(d, 'staying');
    const returning = await guestWithHistory(d, 'returning');
    await d.json('DELETE', '/v1/guests/returning');
    expect(await client.hget(keysOf('returning')[0]!, 'goneSince')).not.toBeNull();
    await attachTcp(d, 'returning', returning);
    await waitFor('the returning guest to own its stream again', async () => {
      return (await guestStatus(d, 'returning')).replication?.role === 'owner';
    });
    // The claim stopped the clock.
    expect(await client.hget(keysOf('returning')[0]!, 'goneSince')).toBeNull();
    await guestWithHistory(d, 'leaving');
    await d.json('DELETE', '/v1/guests/leaving');
    const goneSince = Number(await client.hget(keysOf('leaving')[0]!, 'goneSince'));
    expect(goneSince).toBeGreaterThan(0);

    await waitFor('the gone guest stream to expire', async () => (await existing(client, 'leaving')) === 0, {
      timeoutMs: 15_000,
    });
    // Not before goneAfterMs, by the server's clock (the one the scripts use).
    const [seconds, micros] = await client.time();
    expect(Number(seconds) * 1000 + Math.floor(Number(micros) / 1000) - goneSince).toBeGreaterThanOrEqual(
      1_000,
    );
    await waitFor('the expiry log line', () =>
      /"guest":"leaving".*stream of a gone guest expired/.test(d.logs()),
    );
    // The owned guests are kept, however long they have been there; the returning one
    // was released before `leaving` and would have gone first had the claim not stopped its clock.
    expect(await existing(client, 'staying')).toBeGreaterThanOrEqual(3);
    expect(await existing(client, 'returning')).toBeGreaterThanOrEqual(3);
    const metrics = await (await d.api('GET', '/metrics')).text();
    expect(metrics).toMatch(/^consoled_redis_streams_expired_total 1$/m);
  });

  it('gives a record released without goneSince (an older build) a clock, then expires it', async () => {
    const redis = await startRedis();
    const client = redis.client();
    const [owner, log] = keysOf('legacy');
    await client.hset(owner!, { epoch: '3', next: '10', handoff: 'released', releasedAt: '10' });
    await client.xadd(log!, '0-1', 'd', '0123456789', 'h', 'old', 'e', '3', 'b', '1', 't', '1', 'o', '0');
    const d = await daemon(redis, 'host-a', { retention: { goneAfterMs: 1_000, sweepIntervalMs: 50 } });
    await waitFor('the clock to start', async () => (await client.hget(owner!, 'goneSince')) !== null);
    await waitFor('the legacy stream to expire', async () => (await existing(client, 'legacy')) === 0, {
      timeoutMs: 15_000,
    });
    await waitFor('the expiry log line', () =>
      /"guest":"legacy".*stream of a gone guest expired/.test(d.logs()),
    );
  });
});

describe('detached guest directory retention', () => {
  it('removes the directory of a guest detached for detachedAfterMs, and keeps attached ones and links', async () => {
    const d = await startDaemon({
      config: { store: { retention: { detachedAfterMs: 1_000, sweepIntervalMs: 50 } } },
    });
    const guests = join(d.stateDir, 'guests');
    const leaving = await SocketPeer.listen();
    const staying = await SocketPeer.listen();
    await attachTcp(d, 'leaving', leaving);
    await attachTcp(d, 'staying', staying);
    await leaving.waitForConnections(1);
    leaving.send(lines('leaving', 0, 20));
    await waitFor('the lines in the log', async () => (await guestStatus(d, 'leaving')).flushedOffset > 200);
    await d.json('DELETE', '/v1/guests/leaving');
    const detachedAt = Date.now();
    // A link in guests/ is no guest directory of ours: never followed, never removed.
    const target = tmpDir('elsewhere');
    await writeFile(join(target, 'precious'), 'keep me');
    await symlink(target, join(guests, 'linked'));
    // What a crash left renamed aside goes too.
    await mkdir(join(guests, '.removing-old-0000'), { mode: 0o750 });

    await waitFor('the detached directory to go', () => !existsSync(join(guests, 'leaving')), {
      timeoutMs: 15_000,
    });
    expect(Date.now() - detachedAt).toBeGreaterThanOrEqual(900);
    await waitFor('the leftover to go', () => !existsSync(join(guests, '.removing-old-0000')));
    expect(existsSync(join(guests, 'staying'))).toBe(true);
    expect(existsSync(join(target, 'precious'))).toBe(true);
    expect(existsSync(join(guests, 'linked'))).toBe(true);
    await waitFor('the log line', () => /"guest":"leaving".*detached guest directory expired/.test(d.logs()));
  });
});

describe('redis memory watch', () => {
  function gauge(text: string, name: string): number | null {
    const match = new RegExp(`^${name} (\\S+)$`, 'm').exec(text);
    return match ? Number(match[1]) : null;
  }

  it('reports used and max memory and warns once near the limit', async () => {
    const redis = await startRedis({ args: ['--maxmemory', '8mb', '--maxmemory-policy', 'noeviction'] });
    const client = redis.client();
    const d = await daemon(redis, 'host-a', { memory: { checkIntervalMs: 50, warnFraction: 0.8 } });
    const first = await waitFor('the memory gauges', async () => {
      const text = await (await d.api('GET', '/metrics')).text();
      return gauge(text, 'consoled_redis_maxmemory_bytes') !== null ? text : false;
    });
    expect(gauge(first, 'consoled_redis_maxmemory_bytes')).toBe(8 * 1024 * 1024);
    expect(gauge(first, 'consoled_redis_memory_high')).toBe(0);
    expect(d.logs()).not.toContain('redis memory is near maxmemory');

    // Fill Redis up to the warning fraction (and not past maxmemory: writes would fail).
    const chunk = 'x'.repeat(256 * 1024);
    for (let i = 0; ; i++) {
      const info = await client.info('memory');
      const used = Number(/^used_memory:(\d+)/m.exec(info)![1]);
      if (used > 0.85 * 8 * 1024 * 1024) break;
      await client.set(`filler:${i}`, chunk);
    }
    const text = await waitFor('the memory warning', async () => {
      const t = await (await d.api('GET', '/metrics')).text();
      return gauge(t, 'consoled_redis_memory_high') === 1 ? t : false;
    });
    expect(gauge(text, 'consoled_redis_used_memory_bytes')).toBeGreaterThan(0.8 * 8 * 1024 * 1024);
    await waitFor('the warning line', () => d.logs().includes('redis memory is near maxmemory'));
    await client.flushall();
    await waitFor('the episode to end', () =>
      d.logs().includes('redis memory is below the warning fraction again'),
    );
    // One warning per episode, however many checks (every 50 ms) saw it.
    expect(d.logs().split('redis memory is near maxmemory').length - 1).toBe(1);
  });

  it('warns once when Redis has no maxmemory', async () => {
    const redis = await startRedis({ args: ['--maxmemory', '0'] });
    const d = await daemon(redis, 'host-a', { memory: { checkIntervalMs: 50 } });
    await waitFor('the unbounded warning', () => d.logs().includes('redis has no maxmemory'));
    const text = await (await d.api('GET', '/metrics')).text();
    expect(gauge(text, 'consoled_redis_maxmemory_bytes')).toBe(0);
    expect(d.logs().split('redis has no maxmemory').length - 1).toBe(1);
  });
});
