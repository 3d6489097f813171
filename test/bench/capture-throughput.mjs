#!/usr/bin/env node
// Capture of one TCP guest into the local log, against socat writing the same stream to
// a file, in one run. Usage:
//   node test/bench/capture-throughput.mjs [--mib 256] [--runs 3] [--trickle-seconds 10]
// 1. Flood: each reader takes `--mib` MiB from the same kind of server (a QEMU
//    `server=on` chardev stand-in in this process), rate limit off; the time runs from
//    the server accepting the connection to the last byte being in the file. Readers:
//    `socat -u TCP:… OPEN:file` (its default 8 KiB buffer), `socat -b 65536`, consoled
//    with virtlogd's 2 MiB × 4 files and with 64 MiB files (overflow `block`, the
//    default, so a fast flood is slowed to the disk's pace, not dropped).
// 2. Trickle: one guest printing 1 MiB/s in 1 KiB chunks (Nagle off: each chunk its own
//    segment), read by consoled, socat and a plain Node pipe (socket → file stream).
// CPU is the reader's own (user+sys of its process, /proc/<pid>/stat), medians of `--runs`
// rounds, the readers interleaved within each round.
// Before each flood, the run writes a file as large as the flood into the same directory
// and deletes it, so that every reader writes into page cache the kernel has just freed.
// On a VM whose guest hands free memory back to its host (virtio-balloon free page
// reporting, as on the development VM), a write into memory the host has taken back costs
// several times more system time: `socat -b 65536` writing 256 MiB took 0.10-0.14 s of
// system time right after deleting its last file, and 0.45-0.89 s into new files with
// nothing deleted. Without this step, the figures depend on which reader happened to
// follow a deletion. `--page-cache as-is` skips it.
import { execFile, spawn } from 'node:child_process';
import { closeSync, openSync, rmSync, statSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import {
  cpuSeconds,
  cpuTimes,
  floodServer,
  markdownTable,
  median,
  report,
  sleep,
  startDaemon,
} from './bench-lib.mjs';
import { trickleServer } from './trickle-guest.mjs';

const { values } = parseArgs({
  options: {
    mib: { type: 'string', default: '256' },
    runs: { type: 'string', default: '3' },
    'trickle-seconds': { type: 'string', default: '10' },
    'page-cache': { type: 'string', default: 'warm' },
  },
});
const totalBytes = Number(values.mib) * 1024 * 1024;
const runs = Number(values.runs);
const trickleSeconds = Number(values['trickle-seconds']);
const warmPageCache = values['page-cache'] === 'warm';

const warmupBlock = Buffer.alloc(4 * 1024 * 1024, 0x61);

/** Writes `totalBytes` into a file in `dir` and deletes it (see the top of this file). */
function freePageCache(dir) {
  if (!warmPageCache) return;
  const path = join(dir, 'page-cache-warmup');
  const fd = openSync(path, 'w');
  try {
    for (let at = 0; at < totalBytes; at += warmupBlock.length) writeSync(fd, warmupBlock);
  } finally {
    closeSync(fd);
  }
  rmSync(path);
}

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
  const [user = 0, system = 0] = secs;
  return { seconds: (out.end - t0) / 1000, cpu: user + system, user, system };
}

async function runConsoled(daemon, id) {
  const srv = await floodServer(totalBytes);
  const cpuBefore = cpuTimes(daemon.pid);
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
    // Every status request costs the daemon CPU too: poll gently (10 ms is 1-3% of a run).
    await sleep(10);
  }
  const cpuAfter = cpuTimes(daemon.pid);
  const user = cpuAfter.user - cpuBefore.user;
  const system = cpuAfter.system - cpuBefore.system;
  // Under overflow `block` the flood waits for the disk; what was dropped anyway is counted.
  const lostBytes = status.drops.lostBytes;
  srv.close();
  await daemon.api('DELETE', `/v1/guests/${id}`);
  rmSync(join(daemon.dir, 'guests', id), { recursive: true, force: true });
  return { seconds: (end - t0) / 1000, cpu: user + system, user, system, lostBytes };
}

/**
 * Capture CPU at a steady rate in small chunks (a chatty guest): `bytesPerSec` in
 * `chunkBytes` chunks for `seconds`, read by `reader` (a child process); CPU from
 * /proc/<pid>/stat over the window, after a second of warm-up.
 */
async function runTrickle(startReader, { bytesPerSec, chunkBytes, seconds }) {
  const srv = await trickleServer({ bytesPerSec, chunkBytes });
  const reader = await startReader(srv.port);
  await sleep(1000);
  const cpu0 = cpuSeconds(reader.pid);
  const sent0 = srv.sent;
  const t0 = performance.now();
  await sleep(seconds * 1000);
  const cpu = cpuSeconds(reader.pid) - cpu0;
  const elapsed = (performance.now() - t0) / 1000;
  const bytes = srv.sent - sent0;
  await reader.stop();
  srv.close();
  return { cpuShare: cpu / elapsed, bytesPerSec: bytes / elapsed, cpuSecPerGib: cpu / (bytes / 2 ** 30) };
}

/** A reader that is a child process: socat, or a plain Node pipe (socket → file stream). */
function childReader(argv, out) {
  return async (port) => {
    const child = spawn(
      argv[0],
      argv.slice(1).map((a) => a.replace('PORT', String(port))),
      {
        stdio: 'ignore',
      },
    );
    return {
      pid: child.pid,
      stop: async () => {
        const exited = new Promise((r) => child.once('exit', r));
        child.kill();
        await exited;
        rmSync(out, { force: true });
      },
    };
  };
}

/** consoled as the reader: the guest attached to a running daemon, detached after. */
function consoledReader(daemon, id) {
  return async (port) => {
    await daemon.api('PUT', `/v1/guests/${id}`, { source: { type: 'tcp', host: '127.0.0.1', port } });
    return {
      pid: daemon.pid,
      stop: async () => {
        await daemon.api('DELETE', `/v1/guests/${id}`);
        rmSync(join(daemon.dir, 'guests', id), { recursive: true, force: true });
      },
    };
  };
}

const gib = totalBytes / 2 ** 30;
const results = { socat: [], socat64k: [], consoledDefault: [], consoledLarge: [] };
const trickle = { consoled: [], socat: [], nodePipe: [] };
const flags = {
  rateLimit: { bytesPerSec: 0, burstBytes: 1 },
  reconnect: { initialDelayMs: 1000, maxDelayMs: 5000 },
};
const daemon = await startDaemon({ defaults: flags });
const daemonLarge = await startDaemon({
  defaults: { ...flags, rotation: { maxFileBytes: 64 * 1024 * 1024, maxFiles: 4 } },
});
const trickleOptions = { bytesPerSec: 1024 * 1024, chunkBytes: 1024, seconds: trickleSeconds };
const plainPipe =
  "const s=require('net').connect(+process.argv[1],'127.0.0.1');s.pipe(require('fs').createWriteStream(process.argv[2]))";
try {
  for (let i = 0; i < runs; i++) {
    const file = join(daemon.dir, 'socat-out.log');
    freePageCache(daemon.dir);
    results.socat.push(await runSocat('', file));
    freePageCache(daemon.dir);
    results.socat64k.push(await runSocat('-b 65536', file));
    freePageCache(daemon.dir);
    results.consoledDefault.push(await runConsoled(daemon, `flood-${i}`));
    freePageCache(daemonLarge.dir);
    results.consoledLarge.push(await runConsoled(daemonLarge, `flood-${i}`));
    trickle.consoled.push(await runTrickle(consoledReader(daemon, `trickle-${i}`), trickleOptions));
    trickle.socat.push(
      await runTrickle(
        childReader(['socat', '-u', 'TCP:127.0.0.1:PORT', `OPEN:${file},creat,trunc`], file),
        trickleOptions,
      ),
    );
    trickle.nodePipe.push(
      await runTrickle(childReader([process.execPath, '-e', plainPipe, 'PORT', file], file), trickleOptions),
    );
    process.stderr.write(`round ${i + 1}/${runs} done\n`);
  }
} finally {
  await daemon.stop();
  await daemonLarge.stop();
  rmSync(daemon.dir, { recursive: true, force: true });
  rmSync(daemonLarge.dir, { recursive: true, force: true });
}

const summary = Object.fromEntries(
  Object.entries(results).map(([k, v]) => {
    const seconds = median(v.map((r) => r.seconds));
    const cpu = median(v.map((r) => r.cpu));
    const user = median(v.map((r) => r.user));
    const system = median(v.map((r) => r.system));
    const lostBytes = Math.max(...v.map((r) => r.lostBytes ?? 0));
    // Throughput counts only what reached the file.
    return [
      k,
      {
        mibPerSec: (totalBytes - lostBytes) / 2 ** 20 / seconds,
        cpuSecPerGib: cpu / gib,
        userSecPerGib: user / gib,
        systemSecPerGib: system / gib,
        seconds,
        cpu,
        lostBytes,
      },
    ];
  }),
);
const base = summary.socat.mibPerSec;
const base64k = summary.socat64k.mibPerSec;
const label = {
  socat: 'socat -u TCP → file',
  socat64k: 'socat -u -b 65536 TCP → file',
  consoledDefault: 'consoled (2 MiB × 4 files, rotating)',
  consoledLarge: 'consoled (64 MiB × 4 files)',
};
const rows = Object.entries(summary).map(([k, s]) => [
  label[k],
  s.mibPerSec.toFixed(0),
  (s.mibPerSec / base).toFixed(2),
  (s.mibPerSec / base64k).toFixed(2),
  s.cpuSecPerGib.toFixed(2),
  `${s.userSecPerGib.toFixed(2)} / ${s.systemSecPerGib.toFixed(2)}`,
  String(s.lostBytes),
]);
const trickleSummary = Object.fromEntries(
  Object.entries(trickle).map(([k, v]) => [
    k,
    { cpuShare: median(v.map((r) => r.cpuShare)), cpuSecPerGib: median(v.map((r) => r.cpuSecPerGib)) },
  ]),
);
const trickleLabel = {
  consoled: 'consoled',
  socat: 'socat -u TCP → file',
  nodePipe: 'plain Node pipe (socket → file stream)',
};
const trickleRows = Object.entries(trickleSummary).map(([k, s]) => [
  trickleLabel[k],
  `${(s.cpuShare * 100).toFixed(1)}%`,
  (s.cpuShare / trickleSummary.socat.cpuShare).toFixed(2),
  (s.cpuShare / trickleSummary.nodePipe.cpuShare).toFixed(2),
]);
report(
  'capture-throughput',
  `Capture throughput, ${values.mib} MiB flood per run, rate limit off, median of ${runs} runs\n\n${markdownTable(
    [
      'reader',
      'MiB/s into the file',
      'ratio vs socat',
      'ratio vs socat -b 65536',
      'CPU s per GiB',
      'user / system s per GiB',
      'bytes lost',
    ],
    rows,
  )}\n\nCapture CPU, one guest at 1 MiB/s in 1 KiB chunks, ${trickleSeconds} s per reader, median of ${runs} runs\n\n${markdownTable(
    ['reader', 'CPU (% of one core)', 'ratio vs socat', 'ratio vs plain Node pipe'],
    trickleRows,
  )}`,
  { totalBytes, runs, results, summary, trickle, trickleSummary },
);
