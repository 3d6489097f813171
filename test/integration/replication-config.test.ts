/**
 * The `redis` and `handoff` config sections: one connection kind, fields named in
 * errors, defaults; replication off without a `redis` section; a Sentinel-backed
 * daemon that follows a failover Sentinel makes; a password-protected Redis.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { ConsoledError } from '../../common/errors.js';
import { validateConfig } from '../../sidecar/config.js';
import {
  closeAllPeers,
  readLog,
  SocketPeer,
  startInProcessDaemon,
  stopAllInProcessDaemons,
} from '../support/daemon.js';
import { startRedis, startSentinel, stopAllRedis } from '../support/redis-server.js';
import { localLog, readStream, replicationConfig, waitReplicated } from '../support/replication.js';
import { removeTmpDirs } from '../support/tmp.js';
import { sleep, waitFor } from '../support/wait.js';

afterAll(async () => {
  await stopAllInProcessDaemons();
  await closeAllPeers();
  await stopAllRedis();
  await removeTmpDirs();
});

function problems(raw: unknown): string[] {
  try {
    validateConfig(raw);
  } catch (err) {
    expect(err).toBeInstanceOf(ConsoledError);
    expect((err as ConsoledError).code).toBe('BAD_CONFIG');
    return ((err as ConsoledError).details?.['problems'] as string[]) ?? [];
  }
  return [];
}

describe('config', () => {
  it('replication is off without a redis section; handoff has defaults', () => {
    const config = validateConfig({ stateDir: '/tmp/x' });
    expect(config.redis).toBeUndefined();
    expect(config.handoff).toMatchObject({ completionTimeoutMs: 10_000, timeoutAction: 'force_complete' });
  });

  it('fills the documented defaults', () => {
    const config = validateConfig({ stateDir: '/tmp/x', redis: { url: 'redis://r:6379' } });
    expect(config.redis).toMatchObject({
      keyPrefix: 'consoled:',
      retentionBytes: 16 * 1024 * 1024,
      segmentMaxBytes: 64 * 1024,
      segmentMaxAgeMs: 80,
    });
  });

  it('needs exactly one of url, sentinels or cluster, and names the field', () => {
    expect(problems({ redis: {} }).join()).toMatch(/exactly one of url, sentinels/);
    expect(
      problems({ redis: { url: 'redis://a', cluster: { nodes: [{ host: 'b', port: 1 }] } } }).join(),
    ).toMatch(/exactly one/);
    expect(problems({ redis: { sentinels: [{ host: 'a', port: 26379 }] } }).join()).toMatch(
      /redis\.name: sentinels need the master name/,
    );
    expect(problems({ redis: { url: 'http://a' } }).join()).toMatch(/redis\.url/);
    expect(problems({ redis: { url: 'redis://a', keyPrefix: 'x{y}:' } }).join()).toMatch(/redis\.keyPrefix/);
    expect(problems({ redis: { url: 'redis://a', password: 'p', passwordFile: '/p' } }).join()).toMatch(
      /redis\.passwordFile/,
    );
    expect(problems({ redis: { url: 'redis://a', segmentMaxBytes: 10 } }).join()).toMatch(
      /redis\.segmentMaxBytes/,
    );
    expect(problems({ handoff: { timeoutAction: 'wait' } }).join()).toMatch(/handoff\.timeoutAction/);
    expect(problems({ redis: { url: 'redis://a', bogus: 1 } }).join()).toMatch(/bogus/);
  });

  it('replicates through a password-protected Redis', async () => {
    const redis = await startRedis({ args: ['--requirepass', 'secret-pass'] });
    const d = await startInProcessDaemon({
      config: replicationConfig('host-a', { url: `redis://:secret-pass@127.0.0.1:${redis.port}` }),
    });
    const peer = await SocketPeer.listen();
    await d.api('PUT', '/v1/guests/pw', { source: { type: 'tcp', host: '127.0.0.1', port: peer.port } });
    await peer.waitForConnections(1);
    peer.send('behind a password\r\n');
    await waitReplicated(d, 'pw');
    const stream = await readStream(redis.client({ password: 'secret-pass' }), 'pw');
    expect(stream.bytes.toString()).toContain('behind a password');
  });

  it('follows a Sentinel failover: the promoted replica gets every byte, continuously', async () => {
    const primary = await startRedis();
    const replica = await startRedis({ replicaOf: { host: '127.0.0.1', port: primary.port } });
    const sentinel = await startSentinel(primary);
    const d = await startInProcessDaemon({
      config: replicationConfig('host-a', {
        sentinels: [{ host: '127.0.0.1', port: sentinel.port }],
        name: sentinel.masterName,
      }),
    });
    const peer = await SocketPeer.listen();
    await d.api('PUT', '/v1/guests/sen', { source: { type: 'tcp', host: '127.0.0.1', port: peer.port } });
    await peer.waitForConnections(1);
    let n = 0;
    const ticker = setInterval(() => peer.send(`line ${n++}\r\n`), 20);
    try {
      await waitReplicated(d, 'sen');
      await sleep(300);
      await primary.kill();
      // Sentinel notices (1 s), promotes the replica; the daemon's client follows it.
      await waitFor(
        'the replica to be promoted',
        async () => /role:master/.test(await replica.client().info('replication')),
        { timeoutMs: 30_000, intervalMs: 200 },
      );
      await sleep(500);
    } finally {
      clearInterval(ticker);
    }
    await waitReplicated(d, 'sen', 30_000);
    const stream = await readStream(replica.client(), 'sen');
    const local = await localLog(d, 'sen');
    expect(stream.bytes.equals(local.bytes)).toBe(true);
    expect(stream.bytes.toString().match(/line \d+\r\n/g)).toHaveLength(n);
    expect((await readLog(d, 'sen', { start: 0, scope: 'cluster' })).bytes.equals(local.bytes)).toBe(true);
  }, 60_000);
});
