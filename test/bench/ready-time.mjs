#!/usr/bin/env node
// Time from start to READY=1 with many declared guests (README "systemd"). Usage:
//   npm run build && node test/bench/ready-time.mjs [--guests 1000] [--runs 3]
// Each guest is declared in the config file as a `tcp` source to a peer that accepts
// and stays silent (QEMU with a quiet guest). The daemon runs with NOTIFY_SOCKET set
// to a datagram socket this program binds, and is timed from spawn to: the HTTP API
// answering /healthz (what a unit without notify, or a polling script, could wait
// for), and READY=1 (the API listens and every declared guest was tried). The STATUS
// sent with READY says how many guests were connected then.
import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { freePort, markdownTable, median, repoRoot, report, sleep } from './bench-lib.mjs';

const { values } = parseArgs({
  options: { guests: { type: 'string', default: '1000' }, runs: { type: 'string', default: '3' } },
});
const guests = Number(values.guests);
const runs = Number(values.runs);

const peers = new Set();
const server = createServer((s) => {
  peers.add(s);
  s.on('error', () => undefined);
  s.on('close', () => peers.delete(s));
});
server.maxConnections = guests + 100;
await new Promise((r) => server.listen(0, '127.0.0.1', r));
const peerPort = server.address().port;

const require = createRequire(import.meta.url);
const dgram = require('unix-dgram');

async function oneRun() {
  const dir = mkdtempSync(join(tmpdir(), 'consoled-ready-'));
  const stateDir = join(dir, 'state');
  const notifyPath = join(dir, 'notify.sock');
  const messages = [];
  const socket = dgram.createSocket('unix_dgram');
  socket.on('message', (buf) => messages.push({ at: performance.now(), text: buf.toString('utf8') }));
  socket.bind(notifyPath);
  const port = await freePort();
  const config = {
    stateDir,
    listen: { host: '127.0.0.1', port },
    adminToken: 'bench-admin-token-0123456789abcdef',
    limits: { maxGuests: guests + 10 },
    guests: Array.from({ length: guests }, (_, i) => ({
      id: `ready-${i}`,
      source: { type: 'tcp', host: '127.0.0.1', port: peerPort },
    })),
  };
  const configPath = join(dir, 'consoled.json');
  writeFileSync(configPath, JSON.stringify(config));
  // The state directory must be the daemon's alone (mode 0700), as the package makes it.
  execFileSync('mkdir', ['-m', '700', stateDir]);
  const t0 = performance.now();
  const proc = spawn(process.execPath, ['dist/sidecar/bin/consoled.js', '--config', configPath], {
    cwd: repoRoot,
    stdio: ['ignore', 'ignore', 'pipe'],
    env: { ...process.env, CONSOLED_LOG_LEVEL: 'warn', NOTIFY_SOCKET: notifyPath },
  });
  let stderr = '';
  proc.stderr.on('data', (d) => {
    stderr += d;
  });
  let healthzMs = null;
  for (;;) {
    if (proc.exitCode !== null) throw new Error(`daemon exited: ${stderr}`);
    if (healthzMs === null) {
      try {
        if ((await fetch(`http://127.0.0.1:${port}/healthz`)).ok) healthzMs = performance.now() - t0;
      } catch {
        // not listening yet
      }
    }
    const ready = messages.find((m) => m.text.startsWith('READY=1'));
    if (ready && healthzMs !== null) {
      const status = /STATUS=(.*)/.exec(ready.text)?.[1] ?? '';
      const exited = new Promise((r) => proc.once('exit', r));
      proc.kill('SIGTERM');
      await exited;
      socket.close();
      rmSync(dir, { recursive: true, force: true });
      return { healthzMs, readyMs: ready.at - t0, status };
    }
    await sleep(10);
  }
}

const results = [];
for (let i = 0; i < runs; i++) results.push(await oneRun());
for (const p of peers) p.destroy();
server.close();

const healthz = median(results.map((r) => r.healthzMs));
const ready = median(results.map((r) => r.readyMs));
report(
  'ready-time',
  `Start to READY=1 (${guests} declared tcp guests, ${runs} runs, medians)\n\n${markdownTable(
    [
      'guests',
      'spawn to /healthz 200 (ms)',
      'spawn to READY=1 (ms)',
      'READY / healthz',
      'STATUS with READY (last run)',
    ],
    [
      [
        String(guests),
        healthz.toFixed(0),
        ready.toFixed(0),
        (ready / healthz).toFixed(2),
        results.at(-1)?.status ?? '',
      ],
    ],
  )}`,
  { guests, runs, results, healthzMedianMs: healthz, readyMedianMs: ready },
);
