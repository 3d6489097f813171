#!/usr/bin/env node
// Capture CPU by read-coalescing window: one guest printing 1 MiB/s in 1 KiB chunks (Nagle
// off, each chunk its own segment), no viewers, no Redis, read by one daemon per window
// setting (`defaults.readCoalescing.windowMs`), the daemons taking turns round by round.
// Reports each daemon's CPU (user and system, from /proc/<pid>/stat) and the windows it
// took per second. Usage:
//   node test/bench/capture-windows.mjs [--windows 0,20,100] [--rounds 3] [--seconds 8]
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { cpuTimes, markdownTable, median, report, sleep, startDaemon } from './bench-lib.mjs';
import { trickleServer } from './trickle-guest.mjs';

const { values } = parseArgs({
  options: {
    windows: { type: 'string', default: '0,20,100' },
    rounds: { type: 'string', default: '3' },
    seconds: { type: 'string', default: '8' },
  },
});
const windows = values.windows.split(',').map(Number);
const rounds = Number(values.rounds);
const seconds = Number(values.seconds);

const daemons = [];
for (const windowMs of windows) {
  daemons.push(
    await startDaemon({
      defaults: {
        rateLimit: { bytesPerSec: 0, burstBytes: 1 },
        readCoalescing: { windowMs, bulkBytesPerSec: 64 * 1024 },
      },
    }),
  );
}
const samples = windows.map(() => []);
try {
  for (let round = 0; round < rounds; round++) {
    for (let k = 0; k < windows.length; k++) {
      const daemon = daemons[k];
      const id = `trickle-${round}`;
      const guest = await trickleServer({ bytesPerSec: 1024 * 1024, chunkBytes: 1024 });
      await daemon.api('PUT', `/v1/guests/${id}`, {
        source: { type: 'tcp', host: '127.0.0.1', port: guest.port },
      });
      await sleep(1000);
      const status0 = await (await daemon.api('GET', `/v1/guests/${id}`)).json();
      const cpu0 = cpuTimes(daemon.pid);
      const t0 = performance.now();
      await sleep(seconds * 1000);
      const cpu1 = cpuTimes(daemon.pid);
      const elapsed = (performance.now() - t0) / 1000;
      const status1 = await (await daemon.api('GET', `/v1/guests/${id}`)).json();
      samples[k].push({
        user: (cpu1.user - cpu0.user) / elapsed,
        system: (cpu1.system - cpu0.system) / elapsed,
        windowsPerSec: (status1.chardev.coalescedWindows - status0.chardev.coalescedWindows) / elapsed,
      });
      guest.close();
      await daemon.api('DELETE', `/v1/guests/${id}`);
      rmSync(join(daemon.dir, 'guests', id), { recursive: true, force: true });
    }
    process.stderr.write(`round ${round + 1}/${rounds} done\n`);
  }
} finally {
  for (const daemon of daemons) {
    await daemon.stop();
    rmSync(daemon.dir, { recursive: true, force: true });
  }
}

const pct = (v) => `${(v * 100).toFixed(2)}%`;
const rows = windows.map((windowMs, k) => {
  const s = samples[k];
  const total = s.map((x) => x.user + x.system);
  return [
    String(windowMs),
    pct(median(total)),
    total.map(pct).join(' / '),
    pct(median(s.map((x) => x.user))),
    pct(median(s.map((x) => x.system))),
    median(s.map((x) => x.windowsPerSec)).toFixed(1),
  ];
});
report(
  'capture-windows',
  `Capture CPU by read-coalescing window, one guest at 1 MiB/s in 1 KiB chunks, ${seconds} s per round, ${rounds} rounds\n\n${markdownTable(
    ['windowMs', 'CPU (median, % of a core)', 'each round', 'user', 'system', 'windows/s'],
    rows,
  )}`,
  { windows, rounds, seconds, samples },
);
