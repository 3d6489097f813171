#!/usr/bin/env node
// Console fan-out: one guest writing 1 MiB/s to 100 WebSocket viewers, once in
// 10 KiB chunks and once in 1 KiB chunks, with one viewer stalled on purpose (it
// stops reading its socket). Reports the bytes each fast viewer got (goal 100%),
// what the capture lost (goal 0), and the daemon's CPU (goal <= 15% of one core).
// A plain `ws` fan-out (one frame per chunk per viewer, no coalescing, no bound)
// runs in the same conditions for comparison.
//
//   npm run build && node test/bench/console-fanout.mjs [--seconds 30] [--viewers 100] [--no-baseline]
//     [--chunks 10,1] [--cpu-prof DIR]
//
// The viewers run in a worker thread, the guest (a TCP server the daemon connects
// to, like QEMU's `server=on`) in the main thread; the daemon's CPU is read from
// /proc/<pid>/stat. Prints a markdown table; writes test-artifacts/bench/console-fanout.json.
import { spawn } from 'node:child_process';
import { createServer } from 'node:net';
import { parseArgs } from 'node:util';
import { isMainThread, parentPort, Worker, workerData } from 'node:worker_threads';
import { WebSocket } from 'ws';
import { cpuSeconds, freePort, markdownTable, report, sleep, startDaemon } from './bench-lib.mjs';

const MiB = 1024 * 1024;

// ---------------------------------------------------------------------------
// Worker: the viewers.
// ---------------------------------------------------------------------------
if (!isMainThread) {
  const { url, token, count, kind } = workerData;
  const viewers = [];
  const connect = (i) =>
    new Promise((resolve, reject) => {
      const stalled = i === count - 1;
      const ws = new WebSocket(url, {
        perMessageDeflate: false,
        headers: token ? { authorization: `Bearer ${token}` } : {},
      });
      const v = {
        stalled,
        bytes: 0,
        welcomeOffset: null,
        skippedBytes: 0,
        skips: 0,
        closed: null,
        frames: 0,
      };
      viewers.push(v);
      ws.on('message', (data, isBinary) => {
        if (isBinary) {
          v.bytes += data.length;
          v.frames++;
          return;
        }
        const m = JSON.parse(data.toString());
        if (m.type === 'welcome') {
          v.welcomeOffset = m.offset;
          if (stalled) ws.pause();
          resolve();
        } else if (m.type === 'skipped') {
          v.skippedBytes += m.bytes;
          v.skips++;
        }
      });
      ws.on('open', () => {
        if (kind !== 'baseline') return;
        if (stalled) ws.pause();
        resolve();
      });
      ws.on('close', (code, reason) => {
        v.closed = `${code} ${reason}`;
      });
      ws.on('error', reject);
    });
  for (let i = 0; i < count; i++) await connect(i);
  parentPort.postMessage({ type: 'ready' });
  parentPort.on('message', (m) => {
    if (m === 'report') parentPort.postMessage({ type: 'report', viewers });
  });
}

// ---------------------------------------------------------------------------
// Main thread.
// ---------------------------------------------------------------------------

/** The guest: a TCP server that writes `bytesPerSec` in `chunkBytes` chunks to whoever connects. */
async function startGuest(chunkBytes, bytesPerSec) {
  const port = await freePort();
  const state = { sent: 0, socket: null, running: false };
  const server = createServer((socket) => {
    socket.setNoDelay(true);
    socket.on('error', () => {});
    state.socket = socket;
  });
  await new Promise((r) => server.listen(port, '127.0.0.1', r));
  let timer = null;
  let t0 = 0;
  const chunk = Buffer.alloc(chunkBytes);
  let n = 0;
  state.start = () => {
    state.running = true;
    t0 = performance.now();
    const tick = () => {
      if (!state.running) return;
      const due = ((performance.now() - t0) / 1000) * bytesPerSec;
      while (state.sent + chunkBytes <= due && state.socket) {
        chunk.fill(0x21 + (n++ % 90));
        chunk[chunkBytes - 1] = 0x0a;
        state.socket.write(chunk);
        state.sent += chunkBytes;
      }
      timer = setTimeout(tick, 1);
    };
    tick();
  };
  state.stop = () => {
    state.running = false;
    clearTimeout(timer);
  };
  state.close = () => new Promise((r) => server.close(r)) && state.socket?.destroy();
  return { port, state, server };
}

/** The comparison: a plain ws server that sends each chunk from the guest to every client as it comes. */
const BASELINE_SERVER = `
const net = require('node:net');
const { WebSocketServer } = require(process.argv[1]);
const [wsPort, guestPort] = process.argv.slice(2).map(Number);
const wss = new WebSocketServer({ port: wsPort, host: '127.0.0.1', perMessageDeflate: false });
wss.on('listening', () => {
  const guest = net.connect(guestPort, '127.0.0.1');
  guest.on('data', (chunk) => { for (const c of wss.clients) c.send(chunk, { binary: true }); });
  process.stdout.write('ready\\n');
});
`;

async function startBaseline(guestPort) {
  const wsPort = await freePort();
  const wsPath = new URL('../../node_modules/ws/index.js', import.meta.url).pathname;
  const proc = spawn(process.execPath, ['-e', BASELINE_SERVER, wsPath, String(wsPort), String(guestPort)], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  await new Promise((resolve) => proc.stdout.once('data', resolve));
  return { url: `ws://127.0.0.1:${wsPort}/`, pid: proc.pid, stop: () => proc.kill('SIGKILL') };
}

function viewerWorker(url, token, count, kind) {
  const worker = new Worker(new URL(import.meta.url), { workerData: { url, token, count, kind } });
  const ready = new Promise((resolve, reject) => {
    worker.on('message', (m) => m.type === 'ready' && resolve());
    worker.once('error', reject);
  });
  const collect = () =>
    new Promise((resolve) => {
      const onMessage = (m) => {
        if (m.type !== 'report') return;
        worker.off('message', onMessage);
        resolve(m.viewers);
      };
      worker.on('message', onMessage);
      worker.postMessage('report');
    });
  return { ready, collect, stop: () => worker.terminate() };
}

async function runConsoled({ chunkBytes, seconds, viewers, bytesPerSec, cpuProf }) {
  const guest = await startGuest(chunkBytes, bytesPerSec);
  const nodeArgs = cpuProf && viewers > 0 ? ['--cpu-prof', `--cpu-prof-dir=${cpuProf}`] : [];
  const daemon = await startDaemon(
    {
      console: { maxViewersPerGuest: viewers + 10 },
      guests: [
        {
          id: 'fan',
          source: { type: 'tcp', host: '127.0.0.1', port: guest.port },
          rateLimit: { bytesPerSec: 0, burstBytes: 1 },
        },
      ],
    },
    { nodeArgs },
  );
  try {
    const status = async () => (await daemon.api('GET', '/v1/guests/fan')).json();
    while (!guest.state.socket) await sleep(20);
    const url = `ws://127.0.0.1:${new URL(daemon.url).port}/v1/guests/fan/console`;
    const w = viewers > 0 ? viewerWorker(url, daemon.token, viewers, 'consoled') : null;
    await w?.ready;
    const before = await status();
    guest.state.start();
    await sleep(1000); // warm-up
    const cpu0 = cpuSeconds(daemon.pid);
    const t0 = performance.now();
    await sleep(seconds * 1000);
    const cpu1 = cpuSeconds(daemon.pid);
    const elapsed = (performance.now() - t0) / 1000;
    guest.state.stop();
    // Let the fast viewers drain what is in flight, then read the end of the log.
    let after = await status();
    for (let i = 0; i < 50 && after.offset < before.offset + guest.state.sent; i++) {
      await sleep(100);
      after = await status();
    }
    await sleep(1000);
    const got = (await w?.collect()) ?? [];
    await w?.stop();
    const end = after.offset;
    const fast = got.filter((v) => !v.stalled);
    const stalled = got.find((v) => v.stalled) ?? { bytes: 0, skippedBytes: 0, skips: 0, closed: null };
    const delivered = fast.length > 0 ? fast.map((v) => v.bytes / (end - v.welcomeOffset)) : [Number.NaN];
    const captured = end - before.offset;
    return {
      server: viewers > 0 ? 'consoled' : 'consoled, no viewers (capture only)',
      chunkBytes,
      seconds: Math.round(elapsed),
      viewers,
      guestBytes: guest.state.sent,
      capturedBytes: captured,
      captureLossBytes: guest.state.sent - captured + after.drops.lostBytes + after.drops.suppressedBytes,
      minDelivered: Math.min(...delivered),
      meanDelivered: delivered.reduce((a, b) => a + b, 0) / delivered.length,
      fastSkips: fast.reduce((n, v) => n + v.skips, 0),
      framesPerViewerPerSec:
        fast.length > 0 ? fast.reduce((n, v) => n + v.frames, 0) / fast.length / (elapsed + 1) : Number.NaN,
      stalled: {
        bytes: stalled.bytes,
        skippedBytes: stalled.skippedBytes,
        skips: stalled.skips,
        closed: stalled.closed,
      },
      daemonCpuPercent: ((cpu1 - cpu0) / elapsed) * 100,
      console: after.console,
    };
  } finally {
    await daemon.stop();
    guest.state.close();
  }
}

async function runBaseline({ chunkBytes, seconds, viewers, bytesPerSec }) {
  const guest = await startGuest(chunkBytes, bytesPerSec);
  const server = await startBaseline(guest.port);
  try {
    while (!guest.state.socket) await sleep(20);
    const w = viewerWorker(server.url, null, viewers, 'baseline');
    await w.ready;
    guest.state.start();
    await sleep(1000);
    const cpu0 = cpuSeconds(server.pid);
    const t0 = performance.now();
    const sentAt0 = guest.state.sent;
    await sleep(seconds * 1000);
    const cpu1 = cpuSeconds(server.pid);
    const elapsed = (performance.now() - t0) / 1000;
    guest.state.stop();
    await sleep(1500);
    const got = await w.collect();
    await w.stop();
    const fast = got.filter((v) => !v.stalled);
    const delivered = fast.map((v) => v.bytes / guest.state.sent);
    return {
      server: 'plain ws',
      chunkBytes,
      seconds: Math.round(elapsed),
      viewers,
      guestBytes: guest.state.sent,
      windowBytes: guest.state.sent - sentAt0,
      minDelivered: Math.min(...delivered),
      meanDelivered: delivered.reduce((a, b) => a + b, 0) / delivered.length,
      framesPerViewerPerSec: fast.reduce((n, v) => n + v.frames, 0) / fast.length / (elapsed + 1),
      daemonCpuPercent: ((cpu1 - cpu0) / elapsed) * 100,
    };
  } finally {
    server.stop();
    guest.state.close();
  }
}

if (isMainThread) {
  const { values } = parseArgs({
    options: {
      seconds: { type: 'string', default: '30' },
      viewers: { type: 'string', default: '100' },
      'no-baseline': { type: 'boolean', default: false },
      /** Writes a V8 CPU profile of the daemon serving viewers (node --cpu-prof) into this directory. */
      'cpu-prof': { type: 'string' },
      /** Chunk sizes to run, KiB, comma-separated. */
      chunks: { type: 'string', default: '10,1' },
    },
  });
  const seconds = Number(values.seconds);
  const viewers = Number(values.viewers);
  const bytesPerSec = 1 * MiB;
  const results = [];
  for (const chunkBytes of values.chunks.split(',').map((k) => Number(k) * 1024)) {
    results.push(
      await runConsoled({ chunkBytes, seconds, viewers, bytesPerSec, cpuProf: values['cpu-prof'] }),
    );
    // What the capture and the local log cost on their own, for reference.
    results.push(await runConsoled({ chunkBytes, seconds, viewers: 0, bytesPerSec }));
    if (!values['no-baseline'])
      results.push(await runBaseline({ chunkBytes, seconds, viewers, bytesPerSec }));
  }
  const pct = (x) => `${(x * 100).toFixed(2)}%`;
  const isConsoled = (r) => r.server.startsWith('consoled');
  const rows = results.map((r) => [
    r.server,
    `${r.chunkBytes / 1024} KiB`,
    r.viewers > 0 ? `${r.viewers} (1 stalled)` : '0',
    `${r.seconds} s`,
    r.viewers > 0 ? `${pct(r.minDelivered)} / ${pct(r.meanDelivered)}` : '–',
    r.server === 'consoled' ? String(r.fastSkips) : '–',
    isConsoled(r) ? `${r.captureLossBytes} B` : '–',
    r.server === 'consoled'
      ? `${(r.console.skippedBytes / MiB).toFixed(1)} MiB skipped in ${r.console.skipEpisodes} skips, ${r.console.slowDisconnects} closed slow`
      : r.viewers > 0
        ? '(unbounded queue)'
        : '–',
    r.viewers > 0 ? r.framesPerViewerPerSec.toFixed(0) : '–',
    `${r.daemonCpuPercent.toFixed(1)}%`,
  ]);
  const table = markdownTable(
    [
      'server',
      'chunks',
      'viewers',
      'measured',
      'delivered to fast viewers (min / mean)',
      'fast viewer skips',
      'capture loss',
      'stalled viewer',
      'frames/s per viewer',
      'server CPU (one core)',
    ],
    rows,
  );
  report('console-fanout', table, { bytesPerSec, seconds, viewers, results });
}
