#!/usr/bin/env node
// Reading the last 100 KiB (the default `GET /v1/guests/{id}/log`) from a host that
// does not hold the guest, so it is served from the Redis stream, with 1 MiB and with
// 16 MiB retained in the stream. Usage:
//   node test/bench/replication-read.mjs [--requests 300]
// Reads must cost what they return, not the size of the history (docs/design.md, invariant 5).
import { rmSync } from 'node:fs';
import { Agent } from 'node:http';
import { parseArgs } from 'node:util';
import { markdownTable, median, percentile, report, sleep, startDaemon, timedTail } from './bench-lib.mjs';
import { chardev, startRedisServer } from './redis-bench-lib.mjs';

const { values } = parseArgs({ options: { requests: { type: 'string', default: '300' } } });
const requests = Number(values.requests);
const MiB = 1024 * 1024;

const redis = await startRedisServer();
const config = (hostId) => ({
  hostId,
  defaults: {
    rateLimit: { bytesPerSec: 0, burstBytes: 1 },
    rotation: { maxFileBytes: 8 * MiB, maxFiles: 4 },
  },
  redis: { url: redis.url },
});
const owner = await startDaemon(config('host-a'));
const reader = await startDaemon(config('host-b'));

/** Writes `bytes` of 100-byte lines in 256 KiB steps, each replicated before the next. */
async function fill(id, bytes) {
  const dev = await chardev();
  await owner.api('PUT', `/v1/guests/${id}`, { source: { type: 'tcp', host: '127.0.0.1', port: dev.port } });
  const socket = await dev.connected;
  const line = `${'y'.repeat(99)}\n`;
  const step = Buffer.from(line.repeat(2621)).subarray(0, 256 * 1024);
  for (let sent = 0; sent < bytes; sent += step.length) {
    socket.write(step);
    for (;;) {
      const s = await (await owner.api('GET', `/v1/guests/${id}`)).json();
      if (s.flushedOffset >= sent + step.length && s.replication.cursor === s.flushedOffset) break;
      await sleep(5);
    }
  }
  const s = await (await owner.api('GET', `/v1/guests/${id}`)).json();
  if (s.replication.skippedBytes > 0 || s.drops.lostBytes > 0) throw new Error(`fill of ${id} lost bytes`);
  return { socket, dev };
}

const agent = new Agent({ keepAlive: true, maxSockets: 1 });
const getTail = (daemon, id) => timedTail(daemon, id, agent);

const guests = [
  { id: 'read-1m', bytes: 1 * MiB, label: '1 MiB retained' },
  { id: 'read-16m', bytes: 20 * MiB, label: '16 MiB retained (20 MiB written)' },
];
const rows = [];
const data = [];
const held = [];
try {
  for (const g of guests) held.push(await fill(g.id, g.bytes));
  for (const g of guests) {
    for (let i = 0; i < 20; i++) await getTail(reader, g.id); // warm-up
    const times = [];
    let last;
    for (let i = 0; i < requests; i++) {
      last = await getTail(reader, g.id);
      if (last.size !== 102_400 || last.scope !== 'cluster')
        throw new Error(`unexpected read ${JSON.stringify(last)}`);
      times.push(last.ms);
    }
    const s = await (await owner.api('GET', `/v1/guests/${g.id}`)).json();
    const retained = s.flushedOffset - last.start + 0; // bytes from the served start to the end
    rows.push([
      g.label,
      String(requests),
      median(times).toFixed(2),
      percentile(times, 90).toFixed(2),
      percentile(times, 99).toFixed(2),
    ]);
    data.push({
      ...g,
      requests,
      medianMs: median(times),
      p90Ms: percentile(times, 90),
      p99Ms: percentile(times, 99),
      servedBytes: last.size,
      tailStart: last.start,
      end: s.flushedOffset,
      retained,
    });
  }
} finally {
  for (const h of held) {
    h.socket.destroy();
    h.dev.close();
  }
  agent.destroy();
  await owner.stop();
  await reader.stop();
  await redis.stop();
  rmSync(owner.dir, { recursive: true, force: true });
  rmSync(reader.dir, { recursive: true, force: true });
}
report(
  'replication-read',
  `Last 100 KiB from the Redis stream, read from a host that does not hold the guest (HTTP, keep-alive), ${requests} requests each\n\n${markdownTable(
    ['stream', 'requests', 'median (ms)', 'p90 (ms)', 'p99 (ms)'],
    rows,
  )}`,
  { results: data },
);
