#!/usr/bin/env node
// Retrieval of the default 100 KiB tail (GET /v1/guests/{id}/log) with 1 MiB of
// history kept and with 1 GiB kept (64 files of 16 MiB), in one run. Usage:
//   node test/bench/log-retrieval.mjs [--requests 300] [--big-mib 1024]
// Reads must cost what they return, never the size of the history (docs/design.md, invariant 5).
import { rmSync } from 'node:fs';
import { Agent } from 'node:http';
import { createServer } from 'node:net';
import { parseArgs } from 'node:util';
import { markdownTable, median, percentile, report, sleep, startDaemon, timedTail } from './bench-lib.mjs';

const { values } = parseArgs({
  options: { requests: { type: 'string', default: '300' }, 'big-mib': { type: 'string', default: '1024' } },
});
const requests = Number(values.requests);
const MiB = 1024 * 1024;

/**
 * A guest that writes `bytes` of log lines once and then stays quiet. It sends in
 * batches and waits for the daemon to flush each one: a faster flood would overflow
 * the daemon's disk queue (the guest is never blocked; excess is dropped and counted).
 */
async function fill(daemon, id, bytes) {
  const line = Buffer.from(`${'x'.repeat(99)}\n`);
  const block = Buffer.concat(Array.from({ length: 10486 }, () => line)).subarray(0, MiB);
  let socket;
  const connected = new Promise((r) => {
    socket = r;
  });
  const server = createServer((s) => {
    s.on('error', () => undefined);
    socket(s);
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  await daemon.api('PUT', `/v1/guests/${id}`, {
    source: { type: 'tcp', host: '127.0.0.1', port: server.address().port },
  });
  const s = await connected;
  const status = async () => (await daemon.api('GET', `/v1/guests/${id}`)).json();
  let sent = 0;
  while (sent < bytes) {
    for (let i = 0; i < 8 && sent < bytes; i++) {
      const n = Math.min(block.length, bytes - sent);
      s.write(block.subarray(0, n));
      sent += n;
    }
    while ((await status()).flushedOffset < sent) await sleep(5);
  }
  const st = await status();
  if (st.drops.lostBytes > 0) throw new Error(`fill lost ${st.drops.lostBytes} bytes`);
  return { server, status: st };
}

const agent = new Agent({ keepAlive: true, maxSockets: 1 });
const getTail = (daemon, id) => timedTail(daemon, id, agent);

const daemon = await startDaemon({
  defaults: {
    rateLimit: { bytesPerSec: 0, burstBytes: 1 },
    rotation: { maxFileBytes: 16 * MiB, maxFiles: 64 },
  },
});
const servers = [];
try {
  const small = await fill(daemon, 'history-1m', MiB);
  servers.push(small.server);
  // Both fills end mid-file, so both tails are read from one file: the comparison is of
  // history size alone, not of how the tail happens to straddle a file boundary.
  const big = await fill(daemon, 'history-1g', Number(values['big-mib']) * MiB + 8 * MiB);
  servers.push(big.server);
  const results = {};
  for (const id of ['history-1m', 'history-1g']) {
    for (let i = 0; i < 20; i++) await getTail(daemon, id); // warm up
  }
  const samples = { 'history-1m': [], 'history-1g': [] };
  // Interleave the two so machine noise falls on both alike.
  for (let i = 0; i < requests; i++) {
    for (const id of Object.keys(samples)) {
      const r = await getTail(daemon, id);
      if (r.status !== 200 || r.size !== 102400)
        throw new Error(`${id}: status ${r.status}, ${r.size} bytes`);
      samples[id].push(r.ms);
    }
  }
  for (const [id, ms] of Object.entries(samples))
    results[id] = { medianMs: median(ms), p99Ms: percentile(ms, 99) };
  const kept = { 'history-1m': small.status, 'history-1g': big.status };
  const ratio = results['history-1g'].medianMs / results['history-1m'].medianMs;
  report(
    'log-retrieval',
    `Default tail (100 KiB) retrieval over HTTP, ${requests} requests each, keep-alive\n\n${markdownTable(
      ['history kept', 'files', 'median (ms)', 'p99 (ms)'],
      Object.entries(results).map(([id, r]) => [
        `${((kept[id].flushedOffset - kept[id].oldestOffset) / MiB).toFixed(0)} MiB`,
        String(Math.ceil((kept[id].flushedOffset - kept[id].oldestOffset) / (16 * MiB))),
        r.medianMs.toFixed(3),
        r.p99Ms.toFixed(3),
      ]),
    )}\n\nmedian ratio 1 GiB / 1 MiB: ${ratio.toFixed(2)}`,
    { requests, results, ratio },
  );
} finally {
  agent.destroy();
  await daemon.stop();
  for (const s of servers) s.close();
  rmSync(daemon.dir, { recursive: true, force: true });
}
