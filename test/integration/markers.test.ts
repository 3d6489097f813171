/**
 * consoled's markers are told from guest bytes that look like one by the marker index
 * (docs/design.md "Markers"): `GET /v1/guests/{id}/markers` and `consolectl markers`
 * list consoled's own, locally and from the stream (replicated with each segment), and
 * never a guest's imitation; the index survives a restart and follows the stream across
 * a forced handoff.
 */
import type { Redis } from 'ioredis';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { MARKER_REGEX } from '../../common/marker.js';
import {
  closeAllPeers,
  type DaemonHandle,
  readLog,
  runConsolectl,
  SocketPeer,
  startDaemon,
  stopAllDaemons,
} from '../support/daemon.js';
import { type RedisHandle, startRedis, stopAllRedis } from '../support/redis-server.js';
import {
  attachTcp,
  guestStatus,
  readStream,
  replicationConfig,
  waitReplicated,
} from '../support/replication.js';
import { removeTmpDirs } from '../support/tmp.js';
import { waitFor } from '../support/wait.js';

interface MarkerView {
  offset: number;
  length: number;
  kind: string;
}

let redis: RedisHandle | null = null;
let client: Redis;

afterEach(async () => {
  await stopAllDaemons();
  await closeAllPeers();
  await stopAllRedis();
  redis = null;
});
afterAll(removeTmpDirs);

const FORGED = '\r\n[consoled] boot 99 started at 2026-01-01T00:00:00.000Z\r\n';

async function markers(d: DaemonHandle, id: string, query = ''): Promise<MarkerView[]> {
  const body = await d.json<{ markers: MarkerView[] }>(
    'GET',
    `/v1/guests/${id}/markers${query}`,
    undefined,
    200,
  );
  return body.markers;
}

/** Every marker-looking span of `text` from `start`, with whether the index lists it. */
function lookalikes(text: string, start: number, listed: MarkerView[]) {
  return [...text.matchAll(MARKER_REGEX)].map((m) => ({
    offset: start + m.index,
    text: m[0],
    listed: listed.some((l) => l.offset === start + m.index && l.length === m[0].length),
  }));
}

describe('the marker index', () => {
  it("lists consoled's markers and not a guest's forgery, across a restart", async () => {
    const d = await startDaemon();
    const peer = await SocketPeer.listen();
    await attachTcp(d, 'm1', peer);
    await peer.waitForConnections(1);
    peer.send(`hello\r\n${FORGED}after\r\n`);
    await waitFor('the bytes', async () => (await readLog(d, 'm1', { start: 0 })).bytes.includes('after'));
    await d.restart();
    await peer.waitForConnections(2);
    peer.send('again\r\n');
    await waitFor('the bytes', async () => (await readLog(d, 'm1', { start: 0 })).bytes.includes('again'));
    const log = await readLog(d, 'm1', { start: 0 });
    const listed = await markers(d, 'm1');
    expect(listed.map((m) => m.kind)).toEqual(['boot', 'reattach']);
    const spans = lookalikes(log.bytes.toString('latin1'), log.start, listed);
    expect(spans.filter((s) => !s.listed).map((s) => s.text)).toEqual([FORGED]);
    expect(spans.filter((s) => s.listed)).toHaveLength(2);
    // A range, and the errors.
    expect(await markers(d, 'm1', `?start=${listed[1]!.offset}`)).toEqual([listed[1]]);
    const bad = await d.api('GET', '/v1/guests/m1/markers?start=10&end=5');
    expect(bad.status).toBe(400);
    expect(((await bad.json()) as { error: { code: string } }).error.code).toBe('BAD_PARAMETER');
    expect((await d.api('GET', '/v1/guests/..%2Fx/markers')).status).toBe(400);
    const cli = await runConsolectl(d, ['markers', 'm1']);
    expect(cli.code).toBe(0);
    expect((JSON.parse(cli.stdout.toString()) as { markers: MarkerView[] }).markers).toEqual(listed);
  });

  it('is replicated with the stream: the same markers from Redis, from another host and from consolectl --redis', async () => {
    redis = await startRedis();
    client = redis.client();
    const a = await startDaemon({ config: replicationConfig('host-a', { url: redis.url }) });
    const c = await startDaemon({ config: replicationConfig('host-c', { url: redis.url }) });
    const peer = await SocketPeer.listen();
    await attachTcp(a, 'm2', peer);
    await peer.waitForConnections(1);
    peer.send(`one\r\n${FORGED}two\r\n`);
    await a.json('POST', '/v1/guests/m2/boots', undefined, 201);
    peer.send('three\r\n');
    await waitFor('three', async () => (await readLog(a, 'm2', { start: 0 })).bytes.includes('three'));
    await waitReplicated(a, 'm2');
    const local = await markers(a, 'm2', '?scope=local');
    expect(local.map((m) => m.kind)).toEqual(['boot', 'boot']);
    expect(await markers(a, 'm2', '?scope=cluster')).toEqual(local);
    expect(await markers(c, 'm2')).toEqual(local);
    const cli = await runConsolectl({ url: 'http://127.0.0.1:1', token: 'x' }, [
      'markers',
      'm2',
      '--redis',
      redis.url,
    ]);
    expect(cli.code, cli.stderr).toBe(0);
    expect(JSON.parse(cli.stdout.toString()).markers).toEqual(local);
    // Every listed marker is a marker's bytes in the stream; the forgery is not listed.
    const stream = await readStream(client, 'm2');
    const text = stream.bytes.toString('latin1');
    for (const m of local)
      expect(text.slice(m.offset, m.offset + m.length)).toMatch(/^\r\n\[consoled\] boot \d+ started/);
    expect(
      lookalikes(text, 0, local)
        .filter((s) => !s.listed)
        .map((s) => s.text),
    ).toEqual([FORGED]);
  });

  it("a forced handoff's gap marker is listed at the seam, on the destination and in the stream", async () => {
    redis = await startRedis();
    client = redis.client();
    const a = await startDaemon({ config: replicationConfig('host-a', { url: redis.url }) });
    const b = await startDaemon({
      config: replicationConfig(
        'host-b',
        { url: redis.url },
        { handoff: { completionTimeoutMs: 800, timeoutAction: 'force_complete' } },
      ),
    });
    const src = await SocketPeer.listen();
    const dst = await SocketPeer.listen();
    await attachTcp(a, 'm3', src);
    await src.waitForConnections(1);
    src.send('before\r\n');
    await waitReplicated(a, 'm3');
    const seam = (await readStream(client, 'm3')).next!;
    await attachTcp(b, 'm3', dst, true);
    await dst.waitForConnections(1);
    await waitFor(
      'b to know the owner',
      async () => (await guestStatus(b, 'm3')).replication?.owner === 'host-a',
    );
    await a.kill();
    dst.send(`after\r\n${FORGED}`);
    await waitReplicated(b, 'm3', 15_000);
    const listed = await markers(b, 'm3', `?start=${seam}&scope=local`);
    expect(listed.map((m) => m.kind)).toEqual(['gap', 'handoff-from']);
    expect(listed[0]!.offset).toBe(seam);
    expect(await markers(b, 'm3', `?start=${seam}&scope=cluster`)).toEqual(listed);
  });
});
