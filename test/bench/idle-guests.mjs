#!/usr/bin/env node
// 1000 idle guests attached to one daemon: resident memory and idle CPU. Usage:
//   node test/bench/idle-guests.mjs [--guests 1000] [--idle-seconds 20]
// Each guest is a `tcp` source connected to a peer that accepts and stays silent
// (QEMU with a quiet guest), so every guest holds a socket and an open log file.
import { rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { parseArgs } from 'node:util';
import { cpuSeconds, markdownTable, report, rssBytes, sleep, startDaemon } from './bench-lib.mjs';

const { values } = parseArgs({
  options: { guests: { type: 'string', default: '1000' }, 'idle-seconds': { type: 'string', default: '20' } },
});
const guests = Number(values.guests);
const idleSeconds = Number(values['idle-seconds']);

const peers = new Set();
const server = createServer((s) => {
  peers.add(s);
  s.on('error', () => undefined);
  // A quiet guest that says one line when the console attaches.
  s.write('login: ');
});
server.maxConnections = guests + 100;
await new Promise((r) => server.listen(0, '127.0.0.1', r));
const port = server.address().port;

const daemon = await startDaemon({ limits: { maxGuests: guests + 10, maxBodyBytes: 65536 } });
const rssEmpty = rssBytes(daemon.pid);
const t0 = performance.now();
const batch = 50;
for (let i = 0; i < guests; i += batch) {
  await Promise.all(
    Array.from({ length: Math.min(batch, guests - i) }, (_, j) =>
      daemon.api('PUT', `/v1/guests/idle-${i + j}`, { source: { type: 'tcp', host: '127.0.0.1', port } }),
    ),
  );
}
const attachSeconds = (performance.now() - t0) / 1000;
// Wait for every guest to be connected.
for (;;) {
  const list = await (await daemon.api('GET', '/v1/guests')).json();
  if (list.guests.filter((g) => g.state === 'connected').length === guests) break;
  await sleep(200);
}
await sleep(3000);
const cpu0 = cpuSeconds(daemon.pid);
const idleStart = performance.now();
await sleep(idleSeconds * 1000);
const idleCpu = (cpuSeconds(daemon.pid) - cpu0) / ((performance.now() - idleStart) / 1000);
const rss = rssBytes(daemon.pid);
await daemon.stop();
rmSync(daemon.dir, { recursive: true, force: true });
for (const p of peers) p.destroy();
server.close();

const MiB = 1024 * 1024;
report(
  'idle-guests',
  `Idle guests (${guests} attached, tcp sources, connected)\n\n${markdownTable(
    ['guests', 'daemon RSS (MiB)', 'RSS with no guests (MiB)', 'idle CPU (% of one core)', 'attach time (s)'],
    [
      [
        String(guests),
        (rss / MiB).toFixed(1),
        (rssEmpty / MiB).toFixed(1),
        (idleCpu * 100).toFixed(2),
        attachSeconds.toFixed(1),
      ],
    ],
  )}`,
  { guests, rssBytes: rss, rssEmptyBytes: rssEmpty, idleCpuFraction: idleCpu, attachSeconds, idleSeconds },
);
