#!/usr/bin/env node
// Throughput of one flooding guest with replication on, as a ratio of the files-only
// figure measured in the same run (the core benchmark's setup: a `server=on` chardev
// stand-in that floods its first connection, rate limit off, 64 MiB x 4 files). Usage:
//   node test/bench/replication-throughput.mjs [--mib 512] [--runs 3] [--segment-kib 64]
//                                              [--in-flight 8] [--retention-mib 16]
// `--in-flight` and `--retention-mib` set `redis.maxInFlightSegments` and
// `redis.retentionBytes` (their defaults by default).
// Files-only: from the connection to the last byte in the local files. Replication:
// the same, and from the connection to the last byte in the Redis stream, counting only
// the bytes the stream got (a flood can rotate bytes out of the local files before they
// are sent: those are skipped and marked, and reported apart). The daemon's CPU is per
// GiB of the flood, Redis's per GiB in the stream.
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { cpuSeconds, floodServer, markdownTable, median, report, sleep, startDaemon } from './bench-lib.mjs';
import { startRedisServer } from './redis-bench-lib.mjs';

const { values } = parseArgs({
  options: {
    mib: { type: 'string', default: '512' },
    runs: { type: 'string', default: '3' },
    'segment-kib': { type: 'string', default: '64' },
    'in-flight': { type: 'string' },
    'retention-mib': { type: 'string' },
  },
});
const totalBytes = Number(values.mib) * 1024 * 1024;
const runs = Number(values.runs);

async function run(daemon, id, replicated) {
  const srv = await floodServer(totalBytes);
  const cpuBefore = cpuSeconds(daemon.pid);
  const redisCpuBefore = cpuSeconds(redis.pid);
  await daemon.api('PUT', `/v1/guests/${id}`, { source: { type: 'tcp', host: '127.0.0.1', port: srv.port } });
  const t0 = await srv.started;
  let captured = null;
  let status;
  for (;;) {
    status = await (await daemon.api('GET', `/v1/guests/${id}`)).json();
    const now = performance.now();
    // Done capturing: every byte was kept or dropped (the core drops what its disk queue cannot hold).
    const settled = status.flushedOffset === status.offset && status.disk.queuedBytes === 0;
    if (captured === null && settled && status.offset + status.drops.lostBytes >= totalBytes) captured = now;
    if (captured !== null && (!replicated || status.replication.cursor >= status.flushedOffset)) break;
    await sleep(2);
  }
  const end = performance.now();
  const cpu = cpuSeconds(daemon.pid) - cpuBefore;
  const redisCpu = cpuSeconds(redis.pid) - redisCpuBefore;
  srv.close();
  await daemon.api('DELETE', `/v1/guests/${id}`);
  rmSync(join(daemon.dir, 'guests', id), { recursive: true, force: true, maxRetries: 10, retryDelay: 100 });
  return {
    keptBytes: status.flushedOffset,
    captureSeconds: (captured - t0) / 1000,
    streamSeconds: replicated ? (end - t0) / 1000 : null,
    cpu,
    redisCpu,
    lostBytes: status.drops.lostBytes,
    skippedBytes: status.replication?.skippedBytes ?? 0,
  };
}

const common = {
  defaults: {
    rateLimit: { bytesPerSec: 0, burstBytes: 1 },
    rotation: { maxFileBytes: 64 * 1024 * 1024, maxFiles: 4 },
    reconnect: { initialDelayMs: 1000, maxDelayMs: 5000 },
  },
};
const redis = await startRedisServer();
const filesOnly = await startDaemon(common);
const replicating = await startDaemon({
  ...common,
  hostId: 'bench-host',
  redis: {
    url: redis.url,
    segmentMaxBytes: Number(values['segment-kib']) * 1024,
    ...(values['in-flight'] ? { maxInFlightSegments: Number(values['in-flight']) } : {}),
    ...(values['retention-mib'] ? { retentionBytes: Number(values['retention-mib']) * 1024 * 1024 } : {}),
  },
});
const results = { filesOnly: [], replication: [] };
try {
  for (let i = 0; i < runs; i++) {
    results.filesOnly.push(await run(filesOnly, `flood-${i}`, false));
    results.replication.push(await run(replicating, `flood-${i}`, true));
    process.stderr.write(`run ${i + 1}/${runs} done\n`);
  }
} finally {
  await filesOnly.stop();
  await replicating.stop();
  await redis.stop();
  rmSync(filesOnly.dir, { recursive: true, force: true });
  rmSync(replicating.dir, { recursive: true, force: true });
}

const gib = totalBytes / 2 ** 30;
// Rates are of the bytes kept (the rest was dropped at capture, counted); the stream's
// counts only the bytes it got: what the local log rotated away before they were sent
// is skipped (marked in the stream), not sent.
const keptBytes = (r) => r.keptBytes;
const streamedBytes = (r) => r.keptBytes - r.skippedBytes;
const rate = (runsOf, seconds, bytes = keptBytes) =>
  median(runsOf.map((r) => bytes(r) / 2 ** 30 / seconds(r)));
const filesRate = rate(results.filesOnly, (r) => r.captureSeconds);
const captureRate = rate(results.replication, (r) => r.captureSeconds);
const streamRate = rate(results.replication, (r) => r.streamSeconds, streamedBytes);
const ratios = results.replication.map(
  (r, i) =>
    streamedBytes(r) /
    r.streamSeconds /
    (results.filesOnly[i].keptBytes / results.filesOnly[i].captureSeconds),
);
const redisCpuPerGib = median(results.replication.map((r) => r.redisCpu / (streamedBytes(r) / 2 ** 30)));
const keptFraction = (runsOf) => median(runsOf.map((r) => r.keptBytes / totalBytes));
const summary = {
  filesOnlyGibPerSec: filesRate,
  replicationCaptureGibPerSec: captureRate,
  replicationStreamGibPerSec: streamRate,
  ratioStreamVsFilesOnly: streamRate / filesRate,
  ratioCaptureVsFilesOnly: captureRate / filesRate,
  medianPerRunRatio: median(ratios),
  keptFractionFilesOnly: keptFraction(results.filesOnly),
  keptFractionReplication: keptFraction(results.replication),
  skippedBytes: results.replication.reduce((a, r) => a + r.skippedBytes, 0),
};
report(
  'replication-throughput',
  `One flooding guest, ${values.mib} MiB per run, segments of ${values['segment-kib']} KiB, median of ${runs} runs (files-only and replication alternate)\n\n${markdownTable(
    [
      'daemon',
      'MiB/s kept',
      'ratio vs files-only',
      'CPU s per GiB of the flood',
      "Redis's CPU s per GiB in the stream",
    ],
    [
      [
        'files only (to the local files)',
        (filesRate * 1024).toFixed(0),
        '1.00',
        (median(results.filesOnly.map((r) => r.cpu)) / gib).toFixed(2),
        '-',
      ],
      [
        'replication on: to the local files',
        (captureRate * 1024).toFixed(0),
        (captureRate / filesRate).toFixed(2),
        '-',
        '-',
      ],
      [
        'replication on: to the Redis stream',
        (streamRate * 1024).toFixed(0),
        (streamRate / filesRate).toFixed(2),
        (median(results.replication.map((r) => r.cpu)) / gib).toFixed(2),
        redisCpuPerGib.toFixed(2),
      ],
    ],
  )}\n\nper-run ratios (stream vs files-only): ${ratios.map((r) => r.toFixed(2)).join(', ')}; bytes kept of those sent (the rest dropped at capture, counted): files-only ${(summary.keptFractionFilesOnly * 100).toFixed(0)} %, replication ${(summary.keptFractionReplication * 100).toFixed(0)} %; bytes skipped by the stream (rotated out of the local files before they were sent; not counted as sent) ${summary.skippedBytes}`,
  { totalBytes, runs, segmentBytes: Number(values['segment-kib']) * 1024, results, summary },
);
