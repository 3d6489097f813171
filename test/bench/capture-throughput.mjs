#!/usr/bin/env node
// Capture throughput of one flooding TCP guest into the local log, against socat
// writing the same stream to a file, in one run. Usage:
//   node test/bench/capture-throughput.mjs [--mib 2048] [--runs 3]
// Each tool reads the same bytes from the same kind of server (a QEMU `server=on`
// chardev stand-in in this process) and the time runs from the server accepting the
// connection to the last byte being in the file. CPU is the reader's own (user+sys).
import { execFile } from 'node:child_process';
import { rmSync, statSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { cpuSeconds, floodServer, markdownTable, median, report, sleep, startDaemon } from './bench-lib.mjs';

const { values } = parseArgs({
  options: { mib: { type: 'string', default: '2048' }, runs: { type: 'string', default: '3' } },
});
const totalBytes = Number(values.mib) * 1024 * 1024;
const runs = Number(values.runs);

async function runSocat(extraArgs, file) {
  const srv = await floodServer(totalBytes);
  const script = `socat -u ${extraArgs} TCP:127.0.0.1:${srv.port} OPEN:${file},creat,trunc; times`;
  const out = await new Promise((res, rej) =>
    execFile('bash', ['-c', script], { maxBuffer: 1 << 20 }, (err, stdout) =>
      err ? rej(err) : res({ stdout, end: performance.now() }),
    ),
  );
  const t0 = await srv.started;
  srv.close();
  // `times` prints the shell's own times, then its children's: "0m1.234s 0m0.567s".
  const child = out.stdout.trim().split('\n')[1] ?? '';
  const secs = [...child.matchAll(/(\d+)m([\d.]+)s/g)].map((m) => Number(m[1]) * 60 + Number(m[2]));
  const size = statSync(file).size;
  rmSync(file, { force: true });
  if (size !== totalBytes) throw new Error(`socat wrote ${size} bytes, expected ${totalBytes}`);
  return { seconds: (out.end - t0) / 1000, cpu: secs.reduce((a, b) => a + b, 0) };
}

async function runConsoled(daemon, id) {
  const srv = await floodServer(totalBytes);
  const cpuBefore = cpuSeconds(daemon.pid);
  await daemon.api('PUT', `/v1/guests/${id}`, { source: { type: 'tcp', host: '127.0.0.1', port: srv.port } });
  const t0 = await srv.started;
  let end;
  let status;
  for (;;) {
    status = await (await daemon.api('GET', `/v1/guests/${id}`)).json();
    if (
      status.chardev.bytesIn >= totalBytes &&
      status.flushedOffset === status.offset &&
      status.disk.queuedBytes === 0
    ) {
      end = performance.now();
      break;
    }
    await sleep(2);
  }
  const cpu = cpuSeconds(daemon.pid) - cpuBefore;
  // The guest is never blocked: what the disk could not take in time was dropped and counted.
  const lost = status.drops.lostBytes;
  srv.close();
  await daemon.api('DELETE', `/v1/guests/${id}`);
  rmSync(join(daemon.dir, 'guests', id), { recursive: true, force: true });
  return { seconds: (end - t0) / 1000, cpu, lostFraction: lost / totalBytes };
}

/** A guest writing at a steady `mibPerSec` for `seconds`: the highest rate captured with no loss. */
async function runPaced(daemon, id, mibPerSec, seconds) {
  const block = Buffer.alloc(64 * 1024, 120);
  const bytes = Math.round(mibPerSec * 1024 * 1024 * seconds);
  const server = createServer((socket) => {
    socket.on('error', () => undefined);
    if (server.used) return;
    server.used = true;
    const t0 = performance.now();
    let sent = 0;
    const tick = () => {
      const due = Math.min(bytes, ((performance.now() - t0) / 1000) * mibPerSec * 1024 * 1024);
      while (sent + block.length <= due) {
        socket.write(block);
        sent += block.length;
      }
      if (sent + block.length <= bytes) setTimeout(tick, 1);
    };
    tick();
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  const cpuBefore = cpuSeconds(daemon.pid);
  await daemon.api('PUT', `/v1/guests/${id}`, {
    source: { type: 'tcp', host: '127.0.0.1', port: server.address().port },
  });
  const expected = Math.floor(bytes / block.length) * block.length;
  let status;
  for (;;) {
    status = await (await daemon.api('GET', `/v1/guests/${id}`)).json();
    if (status.chardev.bytesIn >= expected && status.disk.queuedBytes === 0) break;
    await sleep(20);
  }
  const cpu = cpuSeconds(daemon.pid) - cpuBefore;
  server.close();
  await daemon.api('DELETE', `/v1/guests/${id}`);
  rmSync(join(daemon.dir, 'guests', id), { recursive: true, force: true });
  return { mibPerSec, lostFraction: status.drops.lostBytes / expected, cpuPerSec: cpu / seconds };
}

const gib = totalBytes / 2 ** 30;
const results = { socat: [], socat64k: [], consoledDefault: [], consoledLarge: [] };
const daemon = await startDaemon({
  defaults: {
    rateLimit: { bytesPerSec: 0, burstBytes: 1 },
    reconnect: { initialDelayMs: 1000, maxDelayMs: 5000 },
  },
});
const daemonLarge = await startDaemon({
  store: { maxWriteBytes: Number(process.env.BENCH_WRITE_MIB ?? 1) * 1024 * 1024 },
  defaults: {
    rateLimit: { bytesPerSec: 0, burstBytes: 1 },
    rotation: { maxFileBytes: 64 * 1024 * 1024, maxFiles: 4 },
    reconnect: { initialDelayMs: 1000, maxDelayMs: 5000 },
  },
});
try {
  for (let i = 0; i < runs; i++) {
    const file = join(daemon.dir, 'socat-out.log');
    results.socat.push(await runSocat('', file));
    results.socat64k.push(await runSocat('-b 65536', file));
    results.consoledDefault.push(await runConsoled(daemon, `flood-${i}`));
    results.consoledLarge.push(await runConsoled(daemonLarge, `flood-${i}`));
    process.stderr.write(`run ${i + 1}/${runs} done\n`);
  }
  for (const rate of [16, 64, 128, 256]) {
    results.paced = results.paced ?? [];
    results.paced.push(await runPaced(daemon, `paced-${rate}`, rate, 3));
  }
} finally {
  await daemon.stop();
  await daemonLarge.stop();
  rmSync(daemon.dir, { recursive: true, force: true });
  rmSync(daemonLarge.dir, { recursive: true, force: true });
}

const paced = results.paced ?? [];
delete results.paced;
const summary = Object.fromEntries(
  Object.entries(results).map(([k, v]) => {
    const seconds = median(v.map((r) => r.seconds));
    const cpu = median(v.map((r) => r.cpu));
    const lost = Math.max(...v.map((r) => r.lostFraction ?? 0));
    // Throughput counts only what reached the file.
    return [
      k,
      { gibPerSec: (gib * (1 - lost)) / seconds, cpuSecPerGib: cpu / gib, seconds, cpu, lostFraction: lost },
    ];
  }),
);
const base = summary.socat.gibPerSec;
const base64k = summary.socat64k.gibPerSec;
const label = {
  socat: 'socat -u TCP → file',
  socat64k: 'socat -u -b 65536 TCP → file',
  consoledDefault: 'consoled (2 MiB × 4 files, rotating)',
  consoledLarge: 'consoled (64 MiB × 4 files)',
};
const rows = Object.entries(summary).map(([k, s]) => [
  label[k],
  s.gibPerSec.toFixed(2),
  (s.gibPerSec / base).toFixed(2),
  (s.gibPerSec / base64k).toFixed(2),
  s.cpuSecPerGib.toFixed(2),
  `${(s.lostFraction * 100).toFixed(1)}%`,
]);
report(
  'capture-throughput',
  `Capture throughput, ${values.mib} MiB per run, median of ${runs} runs\n\n${markdownTable(
    [
      'reader',
      'GiB/s into the file',
      'ratio vs socat',
      'ratio vs socat -b 65536',
      'CPU s per GiB',
      'bytes dropped (never blocks the guest)',
    ],
    rows,
  )}`,
  { totalBytes, runs, results, summary, paced },
);
console.log(
  `\nSteady guest output into consoled (2 MiB × 4 files), 3 s at each rate\n\n${markdownTable(
    ['guest rate (MiB/s)', 'bytes lost', 'daemon CPU (% of one core)'],
    paced.map((p) => [
      String(p.mibPerSec),
      `${(p.lostFraction * 100).toFixed(2)}%`,
      (p.cpuPerSec * 100).toFixed(0),
    ]),
  )}`,
);
