#!/usr/bin/env node
// Handoff time: from the destination's first guest byte to the destination owning the
// stream, between two daemons (two hosts) and one Redis, the source alive. Usage:
//   node test/bench/handoff-time.mjs [--handoffs 20]
// Measured twice: inside the destination (status replication.handoff.lastTriggerToOwnerMs,
// from the byte's arrival to the ownership), and from outside (the byte written to the
// chardev until GET /v1/guests/{id} shows the owner role; polled every 2 ms).
import { rmSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { markdownTable, median, percentile, report, sleep, startDaemon } from './bench-lib.mjs';
import { chardev, startRedisServer } from './redis-bench-lib.mjs';

const { values } = parseArgs({ options: { handoffs: { type: 'string', default: '20' } } });
const handoffs = Number(values.handoffs);

const redis = await startRedisServer();
const config = (hostId) => ({ hostId, redis: { url: redis.url } });
const source = await startDaemon(config('host-a'));
const dest = await startDaemon(config('host-b'));
const status = async (d, id) => (await d.api('GET', `/v1/guests/${id}`)).json();
async function until(what, probe, timeoutMs = 20_000) {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    const v = await probe();
    if (v) return v;
    if (performance.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(2);
  }
}

const inside = [];
const outside = [];
try {
  for (let i = 0; i < handoffs; i++) {
    const id = `handoff-${i}`;
    const src = await chardev();
    const dst = await chardev();
    await source.api('PUT', `/v1/guests/${id}`, {
      source: { type: 'tcp', host: '127.0.0.1', port: src.port },
    });
    const srcSocket = await src.connected;
    srcSocket.write('booting on the source\r\n'.repeat(50));
    await until('the source to replicate', async () => {
      const s = await status(source, id);
      return s.flushedOffset > 1000 && s.replication.cursor === s.flushedOffset;
    });
    await dest.api('PUT', `/v1/guests/${id}`, {
      source: { type: 'tcp', host: '127.0.0.1', port: dst.port },
      incoming: true,
    });
    const dstSocket = await dst.connected;
    await until('the destination to wait', async () => {
      const s = await status(dest, id);
      return s.replication.handoff.phase === 'waiting' && s.replication.owner === 'host-a';
    });
    const t0 = performance.now();
    dstSocket.write('first line on the destination\r\n');
    const owned = await until('the destination to own the guest', async () => {
      const s = await status(dest, id);
      return s.replication.role === 'owner' ? s : null;
    });
    outside.push(performance.now() - t0);
    inside.push(owned.replication.handoff.lastTriggerToOwnerMs);
    await dest.api('DELETE', `/v1/guests/${id}`);
    await source.api('DELETE', `/v1/guests/${id}`);
    srcSocket.destroy();
    dstSocket.destroy();
    src.close();
    dst.close();
  }
} finally {
  await source.stop();
  await dest.stop();
  await redis.stop();
  rmSync(source.dir, { recursive: true, force: true });
  rmSync(dest.dir, { recursive: true, force: true });
}
report(
  'handoff-time',
  `Handoff: destination's first guest byte to the destination owning the stream (${handoffs} handoffs, default handoff settings: drain quiet 50 ms)\n\n${markdownTable(
    ['measured', 'median (ms)', 'p90 (ms)', 'max (ms)'],
    [
      [
        'inside the destination daemon',
        median(inside).toFixed(1),
        percentile(inside, 90).toFixed(1),
        Math.max(...inside).toFixed(1),
      ],
      [
        'from outside (write to status)',
        median(outside).toFixed(1),
        percentile(outside, 90).toFixed(1),
        Math.max(...outside).toFixed(1),
      ],
    ],
  )}`,
  { handoffs, insideMs: inside, outsideMs: outside },
);
