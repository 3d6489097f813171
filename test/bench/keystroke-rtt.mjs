#!/usr/bin/env node
// Keystroke round trip: one byte from a client to a TCP echo guest and back, three
// ways in the same run: a direct TCP connection; through consoled (WebSocket client
// -> consoled -> tcp source -> echo guest -> capture -> hub -> client); and through
// websockify (Debian's, what nova's serial proxy is built on). Medians and p99 over
// `--count` round trips each, after a warm-up, the three interleaved in rounds so
// that a noisy moment on the host hits all three alike.
//
//   npm run build && node test/bench/keystroke-rtt.mjs [--count 2000] [--rounds 4]
//
// Prints a markdown table; writes test-artifacts/bench/keystroke-rtt.json.
import { spawn } from 'node:child_process';
import { connect } from 'node:net';
import { parseArgs } from 'node:util';
import { WebSocket } from 'ws';
import { freePort, markdownTable, median, percentile, report, sleep, startDaemon } from './bench-lib.mjs';

const { values } = parseArgs({
  options: {
    count: { type: 'string', default: '2000' },
    rounds: { type: 'string', default: '4' },
    warmup: { type: 'string', default: '200' },
  },
});
const COUNT = Number(values.count);
const ROUNDS = Number(values.rounds);
const WARMUP = Number(values.warmup);

/** The guest: a TCP echo server in its own process, as a guest's tty would be. */
async function startEcho() {
  const port = await freePort();
  const code = `
    const net = require('node:net');
    net.createServer((s) => { s.setNoDelay(true); s.on('error', () => {}); s.pipe(s); })
      .listen(${port}, '127.0.0.1', () => process.stdout.write('ready\\n'));`;
  const proc = spawn(process.execPath, ['-e', code], { stdio: ['ignore', 'pipe', 'inherit'] });
  await new Promise((resolve) => proc.stdout.once('data', resolve));
  return { port, stop: () => proc.kill('SIGKILL') };
}

async function startWebsockify(targetPort) {
  const port = await freePort();
  const proc = spawn('websockify', [String(port), `127.0.0.1:${targetPort}`], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  proc.stdout.on('data', (d) => {
    out += d;
  });
  proc.stderr.on('data', (d) => {
    out += d;
  });
  for (let i = 0; i < 100; i++) {
    const ok = await new Promise((resolve) => {
      const s = connect(port, '127.0.0.1', () => {
        s.destroy();
        resolve(true);
      });
      s.on('error', () => resolve(false));
    });
    if (ok) return { port, stop: () => proc.kill('SIGTERM') };
    await sleep(100);
  }
  throw new Error(`websockify did not start: ${out}`);
}

/** Round trips over a function that sends one byte and resolves on the echo. */
async function measure(trip, count) {
  const samples = [];
  for (let i = 0; i < count; i++) {
    const t0 = process.hrtime.bigint();
    await trip();
    samples.push(Number(process.hrtime.bigint() - t0) / 1000);
  }
  return samples;
}

/** Direct TCP: write a byte, wait for it to come back. */
async function directClient(port) {
  const socket = connect(port, '127.0.0.1');
  socket.setNoDelay(true);
  await new Promise((r) => socket.once('connect', r));
  let waiter = null;
  socket.on('data', () => waiter?.());
  const byte = Buffer.from('x');
  return {
    trip: () =>
      new Promise((resolve) => {
        waiter = resolve;
        socket.write(byte);
      }),
    close: () => socket.destroy(),
  };
}

/** A WebSocket client: binary frame out, binary frame back. `auth` sends consoled's auth frame and waits to write. */
async function wsClient(url, { token, protocols } = {}) {
  const ws = new WebSocket(url, protocols ?? [], {
    perMessageDeflate: false,
    headers: token ? { authorization: `Bearer ${token}` } : {},
  });
  let waiter = null;
  let writer = false;
  let myId = null;
  ws.on('message', (data, isBinary) => {
    if (isBinary) {
      waiter?.();
      return;
    }
    const m = JSON.parse(data.toString());
    if (m.type === 'welcome') myId = m.viewerId;
    if (m.type === 'lock') writer = m.writer?.viewerId === myId;
  });
  await new Promise((resolve, reject) => {
    ws.once('open', resolve);
    ws.once('error', reject);
  });
  if (token) while (!writer) await sleep(5);
  await sleep(200); // let the replay go by
  const byte = Buffer.from('x');
  return {
    trip: () =>
      new Promise((resolve) => {
        waiter = resolve;
        ws.send(byte, { binary: true });
      }),
    close: () => ws.close(),
  };
}

const echo = await startEcho();
const websockify = await startWebsockify(echo.port);
const daemon = await startDaemon({
  guests: [{ id: 'echo', source: { type: 'tcp', host: '127.0.0.1', port: echo.port } }],
});
try {
  const consoledUrl = `ws://127.0.0.1:${new URL(daemon.url).port}/v1/guests/echo/console`;
  const clients = {
    'direct TCP': await directClient(echo.port),
    consoled: await wsClient(consoledUrl, { token: daemon.token }),
    websockify: await wsClient(`ws://127.0.0.1:${websockify.port}/`, { protocols: ['binary'] }),
  };
  const samples = Object.fromEntries(Object.keys(clients).map((k) => [k, []]));
  for (const c of Object.values(clients)) await measure(c.trip, WARMUP);
  for (let round = 0; round < ROUNDS; round++) {
    for (const [name, c] of Object.entries(clients))
      samples[name].push(...(await measure(c.trip, Math.ceil(COUNT / ROUNDS))));
  }
  for (const c of Object.values(clients)) c.close();

  const stats = Object.fromEntries(
    Object.entries(samples).map(([name, s]) => [
      name,
      {
        n: s.length,
        medianUs: median(s),
        p90Us: percentile(s, 90),
        p99Us: percentile(s, 99),
        maxUs: Math.max(...s),
      },
    ]),
  );
  const direct = stats['direct TCP'];
  const rows = Object.entries(stats).map(([name, s]) => [
    name,
    String(s.n),
    s.medianUs.toFixed(1),
    s.p90Us.toFixed(1),
    s.p99Us.toFixed(1),
    name === 'direct TCP' ? '–' : `+${(s.medianUs - direct.medianUs).toFixed(1)}`,
  ]);
  const table = markdownTable(
    ['path', 'round trips', 'median µs', 'p90 µs', 'p99 µs', 'added median over direct µs'],
    rows,
  );
  report('keystroke-rtt', table, { count: COUNT, rounds: ROUNDS, warmup: WARMUP, stats });
} finally {
  await daemon.stop();
  websockify.stop();
  echo.stop();
}
