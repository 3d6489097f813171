/**
 * The replicator on its own (store/replication/replicator.ts and its parts), with no
 * daemon: a real LocalLog in a temp dir, the real Capture writing into it, the real
 * Redis connection to a redis-server this test starts, and the guest side as the
 * capture itself. It publishes exactly the log, starts `unverified` after a restart,
 * releases on giveUp, becomes fenced when another host claims, and keeps the host's
 * bound on bytes in flight with several guests in backlog at once.
 */
import type { Redis } from 'ioredis';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { silentLogger } from '../../common/logger.js';
import type { MarkerEvent } from '../../common/marker.js';
import { Capture } from '../../sidecar/capture/capture.js';
import { RedisConnection } from '../../sidecar/replication/redis-connection.js';
import { handoffConfigSchema, redisConfigSchema } from '../../sidecar/replication/replication-config.js';
import { LocalLog } from '../../store/local-log.js';
import { InFlightBudget } from '../../store/replication/in-flight-budget.js';
import { readBackBuffers } from '../../store/replication/read-back-buffers.js';
import { initialState, ReplicationStateFile } from '../../store/replication/replication-state.js';
import { type GuestControl, Replicator } from '../../store/replication/replicator.js';
import { SegmentClock } from '../../store/replication/segment-clock.js';
import { SharedLog } from '../../store/replication/shared-log.js';
import { type RedisHandle, startRedis, stopAllRedis } from '../support/redis-server.js';
import { readStream } from '../support/replication.js';
import { removeTmpDirs, tmpDir } from '../support/tmp.js';
import { waitFor } from '../support/wait.js';

let redis: RedisHandle;
let client: Redis;
const open: Array<{ close(): Promise<unknown> }> = [];

afterEach(async () => {
  for (const o of open.splice(0).reverse()) await o.close();
  await stopAllRedis();
});
afterAll(removeTmpDirs);

/** The guest side of a replicator: the real capture over the real log, no chardev. */
function control(capture: Capture, log: LocalLog, stopped: { value: boolean }): GuestControl {
  return {
    drainSource: async () => undefined,
    writeMarker: (event: MarkerEvent) => {
      capture.writeMarker(event);
      return log.end;
    },
    outputMayBeUnread: () => capture.outputMayBeUnread,
    stopSource: async () => {
      stopped.value = true;
    },
    setContinuing: (value) => capture.setContinuing(value),
    onOutput: (listener) =>
      capture.connect('replication', { output: ({ offset, bytes }) => listener(offset, bytes) }),
    holdInMemory: () => capture.holdInMemory(),
    endHold: () => capture.endHold(),
    appendToLog: (bytes, markers) => void capture.appendToLog(bytes, markers),
    writeLogMarker: (event) => {
      capture.writeLogMarker(event);
      return log.end;
    },
  };
}

async function replicatorOn(
  dir: string,
  host: string,
  { guestId = 'u1', inFlightBudget }: { guestId?: string; inFlightBudget?: InFlightBudget } = {},
) {
  const logger = silentLogger();
  const log = await LocalLog.open({
    dir,
    maxFileBytes: 1 << 20,
    maxFiles: 4,
    maxQueueBytes: 1 << 20,
    maxWriteBytes: 64 << 10,
    fileMode: 0o640,
    diskRetryMs: 100,
    logger,
  });
  const capture = new Capture(log, null, logger);
  const config = redisConfigSchema.parse({
    url: redis.url,
    reconnect: { initialDelayMs: 20, maxDelayMs: 200 },
  });
  const connection = new RedisConnection(config, host, logger);
  const stateFile = new ReplicationStateFile(dir);
  const loaded = await stateFile.load();
  const clock = new SegmentClock(20);
  const stopped = { value: false };
  const replicator = new Replicator({
    guestId,
    host,
    log,
    spool: null,
    shared: new SharedLog(connection.client),
    client: connection.client,
    prefix: 'consoled:',
    link: connection,
    stateFile,
    state: loaded.kind === 'state' ? loaded.state : initialState(host, 'claiming', log.oldest),
    control: control(capture, log, stopped),
    notify: () => undefined,
    segmentMaxBytes: 4096,
    clock,
    recentBytesMax: 1 << 16,
    maxInFlight: 4,
    inFlightBudget,
    retentionBytes: 0,
    stateSaveIntervalMs: 20,
    handoff: handoffConfigSchema.parse({}),
    logger,
  });
  replicator.start();
  const handle = {
    log,
    capture,
    replicator,
    stopped,
    close: async () => {
      await replicator.stop();
      clock.stop();
      await log.close();
      await connection.close();
    },
  };
  open.push(handle);
  return handle;
}

describe('Replicator', () => {
  it('claims an unowned stream after an explicit attach and publishes exactly the log, markers included', async () => {
    redis = await startRedis();
    client = redis.client();
    const r = await replicatorOn(tmpDir('rep'), 'host-a');
    r.capture.startBoot();
    for (let i = 0; i < 50; i++) r.capture.ingest(Buffer.from(`line ${i}\r\n`));
    await waitFor(
      'published',
      () =>
        r.replicator.role === 'owner' &&
        r.replicator.cursor === r.log.flushedEnd &&
        r.log.flushedEnd === r.log.end,
    );
    const stream = await readStream(client, 'u1');
    expect(stream.bytes.equals(await r.log.read(r.log.oldest, r.log.end))).toBe(true);
    expect(stream.entries.every((e) => e.host === 'host-a' && e.epoch === 1)).toBe(true);
    expect(await new SharedLog(client).markers('u1')).toEqual(r.log.markersIn(0, r.log.end));
  });

  it('after a restart it is unverified until Redis confirms it, then continues without a repeat', async () => {
    redis = await startRedis();
    client = redis.client();
    const dir = tmpDir('rep');
    let r = await replicatorOn(dir, 'host-a');
    r.capture.ingest(Buffer.from('before\r\n'));
    await waitFor('published', () => r.replicator.role === 'owner' && r.replicator.cursor === r.log.end);
    await r.close();
    open.splice(open.indexOf(r), 1);
    await redis.stop();
    r = await replicatorOn(dir, 'host-a');
    expect(r.replicator.role).toBe('unverified');
    r.capture.ingest(Buffer.from('during\r\n'));
    await redis.start();
    await waitFor('owner again', () => r.replicator.role === 'owner' && r.replicator.cursor === r.log.end);
    const stream = await readStream(client, 'u1');
    expect(stream.bytes.toString()).toBe('before\r\nduring\r\n');
  });

  it('gives the stream up on giveUp: a release marker, then the record released at its offset', async () => {
    redis = await startRedis();
    client = redis.client();
    const r = await replicatorOn(tmpDir('rep'), 'host-a');
    r.capture.ingest(Buffer.from('bye\r\n'));
    await waitFor('owner', () => r.replicator.role === 'owner' && r.replicator.cursor === r.log.end);
    await r.replicator.giveUp(2_000, 2_000);
    expect(r.replicator.role).toBe('released');
    expect(r.stopped.value).toBe(true);
    const owner = await new SharedLog(client).owner('u1');
    expect(owner).toMatchObject({ host: null, handoff: 'released', next: r.log.end });
    const text = (await readStream(client, 'u1')).bytes.toString('latin1');
    expect(text.startsWith('bye\r\n')).toBe(true);
    expect(text).toMatch(/\[consoled\] released by host-a at [^\r]*\r\n$/);
  });

  it('is fenced when another host claims; its later bytes stay local behind a fenced marker', async () => {
    redis = await startRedis();
    client = redis.client();
    const r = await replicatorOn(tmpDir('rep'), 'host-a');
    r.capture.ingest(Buffer.from('mine\r\n'));
    await waitFor('owner', () => r.replicator.role === 'owner' && r.replicator.cursor === r.log.end);
    await new SharedLog(client).claim('u1', { host: 'host-x', expectedEpoch: 1 });
    r.capture.ingest(Buffer.from('not published\r\n'));
    await r.replicator.confirm(1_000);
    await waitFor('fenced', () => r.replicator.role === 'fenced');
    expect((await readStream(client, 'u1')).bytes.toString()).toBe('mine\r\n');
    expect(r.replicator.status()).toMatchObject({
      role: 'fenced',
      owner: 'host-x',
      ownerEpoch: 2,
      knownEpoch: 2,
    });
  });

  it("guests in backlog at once share the host's bound on bytes in flight, and each stream equals its log", async () => {
    redis = await startRedis();
    client = redis.client();
    // Segments of 4 KiB, 4 in flight per guest: three guests could have 48 KiB in
    // flight; the host allows 12 KiB, and a guest with none in flight may send one.
    const budget = new InFlightBudget(12 * 1024);
    const guests = await Promise.all(
      ['g1', 'g2', 'g3'].map((guestId) =>
        replicatorOn(tmpDir('rep'), 'host-a', { guestId, inFlightBudget: budget }),
      ),
    );
    // 512 KiB each, at once: every guest is in backlog together.
    const maxUsed = await backlogAtOnce(guests, 512, () => budget.used);
    expect(maxUsed).toBeGreaterThan(4096);
    expect(maxUsed).toBeLessThanOrEqual(12 * 1024 + 3 * 4096);
    expect(budget.used).toBe(0);
    await expectStreamsEqualLogs(guests, (i) => `g${i + 1}`);
  });

  it('bounds the read-back buffers of many guests in backlog at once, and each stream equals its log', async () => {
    redis = await startRedis();
    client = redis.client();
    const count = readBackBuffers.maxHeld + 8;
    const guests = await Promise.all(
      Array.from({ length: count }, (_, i) => replicatorOn(tmpDir('rep'), 'host-a', { guestId: `m${i}` })),
    );
    // 256 KiB each, at once, more than the recent output holds: every guest reads back.
    const maxHeld = await backlogAtOnce(guests, 256, () => readBackBuffers.counts.held);
    // Enough guests read back at once to come near the bound, and none went past it.
    expect(maxHeld).toBeGreaterThan(readBackBuffers.maxHeld / 2);
    expect(maxHeld).toBeLessThanOrEqual(readBackBuffers.maxHeld);
    await expectStreamsEqualLogs(guests, (i) => `m${i}`);
  });
});

type Replicated = Awaited<ReturnType<typeof replicatorOn>>;

/**
 * Gives every guest `kib` KiB at once (all in backlog together), waits until every
 * stream caught up, and returns the largest value `sample` gave meanwhile (every ms).
 */
async function backlogAtOnce(guests: Replicated[], kib: number, sample: () => number): Promise<number> {
  let max = 0;
  const sampler = setInterval(() => {
    max = Math.max(max, sample());
  }, 1);
  try {
    for (const g of guests) for (let i = 0; i < kib; i++) g.capture.ingest(Buffer.alloc(1024, 97 + (i % 26)));
    await waitFor(
      'every stream caught up',
      () => guests.every((g) => g.replicator.role === 'owner' && g.replicator.cursor === g.log.end),
      { timeoutMs: 60_000 },
    );
  } finally {
    clearInterval(sampler);
  }
  return max;
}

async function expectStreamsEqualLogs(guests: Replicated[], idOf: (i: number) => string): Promise<void> {
  for (const [i, g] of guests.entries()) {
    const stream = await readStream(client, idOf(i));
    expect(stream.bytes.equals(await g.log.read(g.log.oldest, g.log.end))).toBe(true);
  }
}
