/**
 * Borrowed reads (docs/design.md "Borrowed reads") on the built daemon: a TCP guest floods
 * counter lines in large writes, so the daemon reads it in large bites lent for the length
 * of one call, while a viewer watches and the guest replicates to a real redis-server.
 * Every keeper copies what it keeps, so the local files (2 MiB each: rotations cut the
 * copies), the stream and the viewer's bytes must all be the guest's lines, whole and in
 * order; a keeper that held on to a lent view would show another read's bytes.
 * Then the same kind of flood, paced so that every read is a lent one, across two
 * upgrades (docs/design.md "Upgrade"): the successor adopts the socket and reads on into
 * its own shared buffer, and the log holds every line once, with no marker but the boot.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { ConsoleViewer } from '../support/console-viewer.js';
import {
  CounterFlood,
  checkCounterLog,
  closeAllPeers,
  type DaemonHandle,
  SocketPeer,
  startDaemon,
  stopAllDaemons,
} from '../support/daemon.js';
import { startRedis, stopAllRedis } from '../support/redis-server.js';
import { localLog, readStream, replicationConfig, waitReplicated } from '../support/replication.js';
import { removeTmpDirs } from '../support/tmp.js';
import { waitFor } from '../support/wait.js';

const LINES = 400_000; // 13.2 MB

interface Status {
  offset: number;
  flushedOffset: number;
  chardev: { bytesIn: number; bytesLent: number };
  drops: { lostBytes: number };
}

afterAll(async () => {
  await stopAllDaemons();
  await closeAllPeers();
  await stopAllRedis();
  await removeTmpDirs();
});

/** A guest `id` on a TCP chardev stand-in, in files of `fileMiB` MiB (16 kept); resolves once connected. */
async function attachTcpGuest(d: DaemonHandle, id: string, fileMiB: number): Promise<SocketPeer> {
  const peer = await SocketPeer.listen();
  await d.json(
    'PUT',
    `/v1/guests/${id}`,
    {
      source: { type: 'tcp', host: '127.0.0.1', port: peer.port },
      rotation: { maxFileBytes: fileMiB * 1024 * 1024, maxFiles: 16 },
    },
    201,
  );
  await peer.waitForConnections(1);
  return peer;
}

describe('borrowed reads', () => {
  it('a flood read in lent bites: the files, the stream and a viewer hold the same whole lines', async () => {
    const redis = await startRedis();
    const d = await startDaemon({
      config: replicationConfig('host-a', { url: redis.url, retentionBytes: 256 * 1024 * 1024 }),
    });
    const peer = await attachTcpGuest(d, 'flood', 2);
    const { token } = await d.json<{ token: string }>(
      'POST',
      '/v1/guests/flood/tokens',
      { mode: 'ro', ttl: '10m' },
      201,
    );
    const viewer = await ConsoleViewer.connect(d.url, 'flood', { token, mode: 'ro' });
    const flood = new CounterFlood(peer, { linesPerConnection: LINES, batchLines: 8192 });
    await waitFor('the flood to be sent', () => flood.burstsDone === 1, { timeoutMs: 60_000 });
    const status = await waitFor(
      'the log to hold every line',
      async () => {
        const s = await d.json<Status>('GET', '/v1/guests/flood');
        return s.chardev.bytesIn >= flood.sentBytes && s.flushedOffset === s.offset ? s : false;
      },
      { timeoutMs: 60_000, intervalMs: 50 },
    );
    await waitReplicated(d, 'flood');

    const full = await d.json<Status>('GET', '/v1/guests/flood');
    expect(full.drops.lostBytes).toBe(0);
    // The path under test was taken: at least a few megabytes came in lent reads.
    expect(full.chardev.bytesLent).toBeGreaterThan(4 * 1024 * 1024);

    const local = await localLog(d, 'flood');
    expect(local.start).toBe(0);
    expect(local.bytes.length).toBe(status.offset);
    const report = checkCounterLog(local.bytes);
    expect(report.lines.length).toBe(LINES);
    expect(report.jumps).toEqual([]);

    const stream = await readStream(redis.client(), 'flood');
    expect(stream.oldest).toBe(0);
    expect(stream.bytes.equals(local.bytes)).toBe(true);

    // The viewer may have skipped ahead when it fell behind; what it got sits at its offsets.
    await waitFor('the viewer to catch up', () => viewer.next === local.bytes.length, { timeoutMs: 30_000 });
    let seen = 0;
    for (const segment of viewer.segments) {
      const bytes = Buffer.concat(segment.bytes, segment.length);
      expect(bytes.equals(local.bytes.subarray(segment.offset, segment.offset + segment.length))).toBe(true);
      seen += segment.length;
    }
    expect(seen).toBeGreaterThan(0);
    expect(viewer.protocolErrors).toEqual([]);
    await viewer.close();
  });

  it('a paced flood of lent reads across two upgrades: every line once, no marker but the boot', async () => {
    const d = await startDaemon({ config: { defaults: { rateLimit: { bytesPerSec: 0, burstBytes: 1 } } } });
    const peer = await attachTcpGuest(d, 'paced', 8);
    // 100 KB every 10 ms, one socket write each: each read the daemon makes is a lent one.
    const flood = new CounterFlood(peer, { bytesPerSec: 10 * 1024 * 1024 });
    const lentSoFar = async () => (await d.json<Status>('GET', '/v1/guests/paced')).chardev.bytesLent;
    for (let i = 0; i < 2; i++) {
      await waitFor('lent reads in this process', async () => (await lentSoFar()) > 1024 * 1024, {
        timeoutMs: 30_000,
      });
      await d.upgrade();
    }
    await waitFor('lent reads in the last successor', async () => (await lentSoFar()) > 1024 * 1024, {
      timeoutMs: 30_000,
    });
    flood.stop();
    const sent = flood.sentBytes;
    await waitFor(
      'the log to hold every byte sent',
      async () => {
        const s = await d.json<Status>('GET', '/v1/guests/paced');
        return s.offset >= sent && s.flushedOffset === s.offset;
      },
      { timeoutMs: 30_000, intervalMs: 50 },
    );
    const local = await localLog(d, 'paced');
    const report = checkCounterLog(local.bytes);
    expect(report.markers.length, d.logs()).toBe(1);
    expect(report.markers[0]).toMatch(/^boot 1 /);
    expect(report.jumps).toEqual([]);
    expect(report.lines.length).toBe(flood.next);
    expect((await d.json<Status>('GET', '/v1/guests/paced')).drops.lostBytes).toBe(0);
  });
});
