#!/usr/bin/env node
// Replication lag, from a guest byte written to the chardev to that byte readable in
// the Redis stream (XREAD from another connection), with the default segment bounds
// (64 KiB or 80 ms): one guest at 1 MiB/s, and 500 guests at 115200 baud (11.5 KB/s)
// each. Also the daemon's CPU and RSS while it runs. Usage:
//   node test/bench/replication-lag.mjs [--seconds 20] [--guests 500] [--only single|many]
//                                       [--files-only] [--cpu-prof DIR]
// `--files-only` adds the same guests on a daemon without Redis (its CPU is what
// capture and the local files cost; the rest is replication's). `--cpu-prof DIR`
// writes a V8 CPU profile of the replicating daemon into DIR.
// The guests run in a worker thread; the first line of each write carries the
// monotonic time it was written; lag = time read back from the stream - that time.
import { rmSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { Worker } from 'node:worker_threads';
import { Redis } from 'ioredis';
import {
  attachTcpGuests,
  cpuSeconds,
  markdownTable,
  median,
  percentile,
  report,
  rssBytes,
  sleep,
  startDaemon,
} from './bench-lib.mjs';
import { startRedisServer } from './redis-bench-lib.mjs';

const { values } = parseArgs({
  options: {
    seconds: { type: 'string', default: '20' },
    guests: { type: 'string', default: '500' },
    only: { type: 'string' },
    'cpu-prof': { type: 'string' },
    'files-only': { type: 'boolean', default: false },
  },
});
const seconds = Number(values.seconds);
const WARMUP_S = Math.min(3, seconds / 4);

/** Lag samples from the stamped lines of a guest's stream entries, across entry boundaries. */
class Stamps {
  carry = '';
  /** `appendedAtNs`: when the daemon appended the entry (its `t` field), on the monotonic clock. */
  feed(bytes, now, appendedAtNs, out) {
    const text = this.carry + bytes.toString('latin1');
    const lastNl = text.lastIndexOf('\n');
    this.carry = text.slice(lastNl + 1);
    for (const m of text.slice(0, lastNl + 1).matchAll(/(?:^|\n)T(\d+) /g)) {
      const written = BigInt(m[1]);
      out.total.push(Number(now - written) / 1e6);
      out.toAppend.push(Number(appendedAtNs - written) / 1e6);
    }
  }
}

/** Script calls (EVAL, EVALSHA) Redis has run, from INFO commandstats: the daemon's appends and polls. */
async function scriptCalls(client) {
  // A connection of its own: the reader's is blocked in XREAD.
  const stats = client.duplicate();
  const info = await stats.info('commandstats').finally(() => stats.disconnect());
  let calls = 0;
  let usec = 0;
  for (const m of info.matchAll(/^cmdstat_eval(?:sha)?:calls=(\d+),usec=(\d+)/gm)) {
    calls += Number(m[1]);
    usec += Number(m[2]);
  }
  return { calls, usec };
}

/** Wall-clock ms (the `t` field of stream entries) to the monotonic ns of process.hrtime. */
const WALL_TO_HR_NS = process.hrtime.bigint() - BigInt(Date.now()) * 1_000_000n;

async function scenario({ name, guests, bytesPerSec, lineBytes, tickMs, filesOnly = false }) {
  const redis = filesOnly ? null : await startRedisServer();
  const daemon = await startDaemon(
    {
      hostId: 'bench-host',
      limits: { maxGuests: guests + 10, maxBodyBytes: 65536 },
      defaults: {
        rateLimit: { bytesPerSec: 0, burstBytes: 1 },
        reconnect: { initialDelayMs: 50, maxDelayMs: 500 },
      },
      ...(redis ? { redis: { url: redis.url } } : {}),
    },
    {
      nodeArgs: values['cpu-prof'] && redis ? ['--cpu-prof', `--cpu-prof-dir=${values['cpu-prof']}`] : [],
    },
  );
  const worker = new Worker(new URL('./stamped-writer.mjs', import.meta.url), {
    workerData: { guests, bytesPerSec, lineBytes, tickMs },
  });
  const { ports } = await new Promise((r) => worker.once('message', r));
  const ids = Array.from({ length: guests }, (_, i) => `lag-${i}`);
  await attachTcpGuests(daemon, ids, ports);

  if (!redis) return filesOnlyRun({ name, guests, bytesPerSec, daemon, worker });

  // The reader: XREAD on every guest's stream.
  const reader = new Redis(redis.port);
  const keys = ids.map((id) => `consoled:{${id}}:log`);
  const index = new Map(keys.map((k, i) => [k, i]));
  const lastIds = ids.map(() => '0-0');
  const parsers = ids.map(() => new Stamps());
  const lags = { total: [], toAppend: [] };
  const sink = { total: [], toAppend: [] };
  let measuring = false;
  let reading = true;
  const readerDone = (async () => {
    while (reading) {
      const reply = await reader.xreadBuffer('COUNT', 1000, 'BLOCK', 500, 'STREAMS', ...keys, ...lastIds);
      if (!reply) continue;
      const now = process.hrtime.bigint();
      for (const [keyBuf, entries] of reply) {
        const i = index.get(keyBuf.toString());
        for (const [entryId, fields] of entries) {
          lastIds[i] = entryId.toString();
          let data = null;
          let appendedAt = now;
          for (let f = 0; f + 1 < fields.length; f += 2) {
            if (fields[f].length !== 1) continue;
            if (fields[f][0] === 0x64) data = fields[f + 1];
            else if (fields[f][0] === 0x74)
              appendedAt = BigInt(fields[f + 1].toString()) * 1_000_000n + WALL_TO_HR_NS;
          }
          if (data) parsers[i].feed(data, now, appendedAt, measuring ? lags : sink);
        }
      }
      sink.total.length = 0;
      sink.toAppend.length = 0;
    }
  })();

  worker.postMessage('start');
  await sleep(WARMUP_S * 1000);
  measuring = true;
  const scriptCalls0 = await scriptCalls(reader);
  const cpu0 = cpuSeconds(daemon.pid);
  const redisCpu0 = cpuSeconds(redis.pid);
  const t0 = performance.now();
  await sleep((seconds - WARMUP_S) * 1000);
  const elapsed = (performance.now() - t0) / 1000;
  const cpu = (cpuSeconds(daemon.pid) - cpu0) / elapsed;
  const redisCpu = (cpuSeconds(redis.pid) - redisCpu0) / elapsed;
  const scriptCalls1 = await scriptCalls(reader);
  const scriptCallsPerSec = (scriptCalls1.calls - scriptCalls0.calls) / elapsed;
  const scriptMsPerSec = (scriptCalls1.usec - scriptCalls0.usec) / 1000 / elapsed;
  const rss = rssBytes(daemon.pid);
  measuring = false;
  worker.postMessage('stop');
  const { written } = await new Promise((r) => worker.once('message', r));
  reading = false;
  await readerDone;
  reader.disconnect();
  const metrics = await (await daemon.api('GET', '/metrics')).text();
  const skipped = [...metrics.matchAll(/^consoled_replication_skipped_bytes_total\{[^}]*\} (\d+)/gm)].reduce(
    (a, m) => a + Number(m[1]),
    0,
  );
  await daemon.stop();
  await redis.stop();
  rmSync(daemon.dir, { recursive: true, force: true });
  return {
    name,
    guests,
    bytesPerSecPerGuest: bytesPerSec,
    samples: lags.total.length,
    medianMs: median(lags.total),
    p99Ms: percentile(lags.total, 99),
    maxMs: percentile(lags.total, 100),
    toAppendMedianMs: median(lags.toAppend),
    toAppendP99Ms: percentile(lags.toAppend, 99),
    daemonCpuFraction: cpu,
    redisCpuFraction: redisCpu,
    scriptCallsPerSec,
    scriptMsPerSec,
    daemonRssBytes: rss,
    writtenBytes: written,
    writtenBytesPerSec: written / seconds,
    skippedBytes: skipped,
  };
}

/** The same guests on a daemon without Redis: its CPU and RSS, no lag. */
async function filesOnlyRun({ name, guests, bytesPerSec, daemon, worker }) {
  worker.postMessage('start');
  await sleep(WARMUP_S * 1000);
  const cpu0 = cpuSeconds(daemon.pid);
  const t0 = performance.now();
  await sleep((seconds - WARMUP_S) * 1000);
  const elapsed = (performance.now() - t0) / 1000;
  const cpu = (cpuSeconds(daemon.pid) - cpu0) / elapsed;
  const rss = rssBytes(daemon.pid);
  worker.postMessage('stop');
  const { written } = await new Promise((r) => worker.once('message', r));
  await daemon.stop();
  rmSync(daemon.dir, { recursive: true, force: true });
  return {
    name: `${name}, files only (no Redis)`,
    guests,
    bytesPerSecPerGuest: bytesPerSec,
    samples: 0,
    medianMs: Number.NaN,
    p99Ms: Number.NaN,
    maxMs: Number.NaN,
    toAppendMedianMs: Number.NaN,
    toAppendP99Ms: Number.NaN,
    daemonCpuFraction: cpu,
    redisCpuFraction: 0,
    daemonRssBytes: rss,
    writtenBytes: written,
    writtenBytesPerSec: written / seconds,
    skippedBytes: 0,
  };
}

const results = [];
if (values.only !== 'many') {
  results.push(
    await scenario({
      name: '1 guest at 1 MiB/s',
      guests: 1,
      bytesPerSec: 1024 * 1024,
      lineBytes: 128,
      tickMs: 10,
    }),
  );
  process.stderr.write('single guest done\n');
}
if (values.only !== 'single') {
  const guests = Number(values.guests);
  const many = {
    name: `${guests} guests at 11.5 KB/s`,
    guests,
    bytesPerSec: 11_520,
    lineBytes: 80,
    tickMs: 50,
  };
  results.push(await scenario(many));
  process.stderr.write('many guests done\n');
  if (values['files-only']) {
    results.push(await scenario({ ...many, filesOnly: true }));
    process.stderr.write('files-only peer done\n');
  }
}

const MiB = 1024 * 1024;
const ms = (v) => (Number.isNaN(v) ? '-' : v.toFixed(1));
report(
  'replication-lag',
  `Replication lag, guest byte to Redis stream (default segments: 64 KiB or 80 ms), ${seconds} s per scenario (${WARMUP_S} s warm-up)\n\n${markdownTable(
    [
      'scenario',
      'writes measured',
      'median (ms)',
      'p99 (ms)',
      'max (ms)',
      'to the append call: median / p99 (ms)',
      'daemon CPU (% of a core)',
      'daemon RSS (MiB)',
      'redis CPU (%)',
      'script calls/s',
      'script time (ms/s)',
      'skipped bytes',
      'written KiB/s (all guests)',
    ],
    results.map((r) => [
      r.name,
      String(r.samples),
      ms(r.medianMs),
      ms(r.p99Ms),
      ms(r.maxMs),
      `${ms(r.toAppendMedianMs)} / ${ms(r.toAppendP99Ms)}`,
      (r.daemonCpuFraction * 100).toFixed(1),
      (r.daemonRssBytes / MiB).toFixed(1),
      (r.redisCpuFraction * 100).toFixed(1),
      r.scriptCallsPerSec === undefined ? '-' : r.scriptCallsPerSec.toFixed(0),
      r.scriptMsPerSec === undefined ? '-' : r.scriptMsPerSec.toFixed(1),
      String(r.skippedBytes),
      (r.writtenBytesPerSec / 1024).toFixed(0),
    ]),
  )}`,
  { seconds, warmupSeconds: WARMUP_S, results },
);
