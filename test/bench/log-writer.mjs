#!/usr/bin/env node
// The local log's writer against rotating-file-stream used through its public API, in
// one process and one run: `--mib` MiB appended in 64 KiB chunks as fast as each takes
// them, files of 2 MiB × 4 (virtlogd's), rounds interleaved. Usage:
//   node test/bench/log-writer.mjs [--mib 256] [--runs 3]
// CPU is this process's (user+sys, every thread), so it counts the writes' thread pool too.
import { once } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { createStream } from 'rotating-file-stream';
import { LocalLog } from '../../dist/store/local-log.js';
import { markdownTable, median, report } from './bench-lib.mjs';

const { values } = parseArgs({
  options: { mib: { type: 'string', default: '256' }, runs: { type: 'string', default: '3' } },
});
const total = Number(values.mib) * 1024 * 1024;
const runs = Number(values.runs);
const chunk = Buffer.alloc(64 * 1024, 0x61);
const FILE_BYTES = 2 * 1024 * 1024;

function cpu() {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
}

async function measure(write) {
  const dir = mkdtempSync(join(tmpdir(), 'consoled-writer-bench-'));
  const c0 = cpu();
  const t0 = performance.now();
  await write(join(dir, 'g'));
  const seconds = (performance.now() - t0) / 1000;
  const used = cpu() - c0;
  rmSync(dir, { recursive: true, force: true });
  return { mibPerSec: total / 2 ** 20 / seconds, cpuSecPerGib: used / (total / 2 ** 30) };
}

/** consoled's writer: appends while the queue has room, then waits for a write. */
async function localLog(dir) {
  const log = await LocalLog.open({
    dir,
    maxFileBytes: FILE_BYTES,
    maxFiles: 4,
    maxQueueBytes: 16 * 1024 * 1024,
    maxWriteBytes: 1024 * 1024,
    fileMode: 0o640,
    diskRetryMs: 1000,
  });
  for (let sent = 0; sent < total; sent += chunk.length) {
    while (!log.canAccept(chunk.length)) await once(log, 'flushed');
    log.append(chunk);
  }
  await log.flush();
  await log.close();
}

/** rotating-file-stream's public API: a Writable, honouring its backpressure. */
async function rotatingFileStream(dir) {
  const stream = createStream('console.log', { path: dir, size: `${FILE_BYTES}B`, rotate: 3 });
  for (let sent = 0; sent < total; sent += chunk.length) {
    if (!stream.write(chunk)) await once(stream, 'drain');
  }
  stream.end();
  await once(stream, 'finish');
}

const results = { consoled: [], rfs: [] };
for (let i = 0; i < runs; i++) {
  results.consoled.push(await measure(localLog));
  results.rfs.push(await measure(rotatingFileStream));
}
const label = {
  consoled: "consoled's writer (store/log-writer.ts)",
  rfs: 'rotating-file-stream, public API',
};
const summary = Object.fromEntries(
  Object.entries(results).map(([k, v]) => [
    k,
    { mibPerSec: median(v.map((r) => r.mibPerSec)), cpuSecPerGib: median(v.map((r) => r.cpuSecPerGib)) },
  ]),
);
report(
  'log-writer',
  `Writer, ${values.mib} MiB in 64 KiB appends, 2 MiB × 4 files, median of ${runs} runs\n\n${markdownTable(
    ['writer', 'MiB/s', 'ratio', 'CPU s per GiB'],
    Object.entries(summary).map(([k, s]) => [
      label[k],
      s.mibPerSec.toFixed(0),
      (s.mibPerSec / summary.rfs.mibPerSec).toFixed(2),
      s.cpuSecPerGib.toFixed(2),
    ]),
  )}`,
  { total, runs, results, summary },
);
