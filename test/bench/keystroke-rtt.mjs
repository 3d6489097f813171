#!/usr/bin/env node
// Keystroke round trip: one byte from a client to an echo guest and back, five ways
// in the same run, all in front of the same guest (test/bench/echo-guest.c, a C TCP
// echo server compiled here with gcc):
//   - direct TCP, the floor;
//   - a plain Node `ws` proxy (test/bench/plain-ws-proxy.mjs), the floor for Node;
//   - websockify (Debian's, what nova's serial proxy is built on);
//   - consoled (WebSocket client -> consoled -> tcp source -> guest -> capture -> hub -> client);
//   - consoled via an edge: the client connects to a second daemon that does not run the
//     guest and proxies the console to the first (README "Console across hosts"), one hop.
// For the last path the two daemons share a Redis the bench starts (its own
// redis-server on a free port) and a `console.tokenSecret`; the consoled daemon of
// the direct path is then that Redis-backed owner, so the hop is the only difference
// between the two consoled paths (each has a guest of its own on the owner, both
// connected to the echo server, so that neither client sees the other's echo).
// `--no-proxy` leaves the edge, and Redis, out.
// Medians and p99 over `--count` round trips each, after a warm-up, interleaved
// (by default one round trip of each path in turn) so that a noisy moment on the
// host hits all alike. Each proxy's added median is over direct TCP's; the ratios
// compare consoled with each peer, and the hop (via edge minus consoled direct) with
// what the plain proxy adds over direct TCP. Each server's CPU time over the measured
// window, divided by the round trips it served, says what a keystroke costs it.
//
//   npm run build && node test/bench/keystroke-rtt.mjs [--count 5000] [--rounds 5000] [--no-proxy] [--cpu-prof DIR]
//
// --cpu-prof writes V8 CPU profiles of consoled (and the edge) and of the plain proxy into DIR.
//
// The daemons run with the writer's keystroke rate limit off (`console.keystrokeBytesPerSec:
// 0`): a round-trip loop types thousands of keystrokes a second, and past the limit's
// burst (1 MiB, each frame counting 64 bytes: 16 384 frames) the limit holds a writer
// to about 1000 frames a second, so the bench would time the limit's waits, not the
// path (runs of 40 000 and 60 000 round trips had a p90 of 1.25–1.3 ms that way). The
// program prints how often consoled paused the writer for its rate; `--keystroke-limit`
// keeps the default limit.
//
// Prints a markdown table; writes test-artifacts/bench/keystroke-rtt.json.
import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { WebSocket } from 'ws';
import {
  cpuSeconds,
  freePort,
  markdownTable,
  median,
  percentile,
  report,
  sleep,
  startDaemon,
  waitUntil,
} from './bench-lib.mjs';
import { startClusterHosts, startRedisServer } from './redis-bench-lib.mjs';

const { values } = parseArgs({
  options: {
    count: { type: 'string', default: '5000' },
    /** Blocks the round trips of each path are interleaved in; the default, `count`, alternates every trip. */
    rounds: { type: 'string' },
    warmup: { type: 'string', default: '200' },
    /** Writes a V8 CPU profile of the daemon (node --cpu-prof) into this directory. */
    'cpu-prof': { type: 'string' },
    /** Leaves out the path through an edge (and Redis): the consoled daemon runs alone. */
    'no-proxy': { type: 'boolean', default: false },
    /** Keeps the default keystroke rate limit (see the top of this file). */
    'keystroke-limit': { type: 'boolean', default: false },
  },
});
const COUNT = Number(values.count);
const ROUNDS = Number(values.rounds ?? values.count);
const WARMUP = Number(values.warmup);
const PROXY = !values['no-proxy'];
const VIA_EDGE = 'consoled via edge';
/** Config for every daemon: the keystroke rate limit off, unless kept (see the top of this file). */
const CONSOLE_CONFIG = values['keystroke-limit'] ? {} : { console: { keystrokeBytesPerSec: 0 } };

/** Waits for a child's first line on stdout ("ready"). */
async function ready(proc, what) {
  await new Promise((resolve, reject) => {
    proc.stdout.once('data', resolve);
    proc.once('exit', (code) => reject(new Error(`${what} exited (${code})`)));
  });
}

/** The guest: the C echo server, in its own process group (it forks one process per client). */
async function startEcho() {
  const port = await freePort();
  const binary = join(mkdtempSync(join(tmpdir(), 'consoled-echo-')), 'echo-guest');
  execFileSync('gcc', ['-O2', '-o', binary, new URL('./echo-guest.c', import.meta.url).pathname]);
  const proc = spawn(binary, [String(port)], { stdio: ['ignore', 'pipe', 'inherit'], detached: true });
  await ready(proc, 'echo-guest');
  return { port, pid: proc.pid, stop: () => process.kill(-proc.pid, 'SIGKILL') };
}

/** The plain Node `ws` proxy in front of the guest. */
async function startPlainProxy(targetPort, nodeArgs) {
  const port = await freePort();
  const script = new URL('./plain-ws-proxy.mjs', import.meta.url).pathname;
  const proc = spawn(process.execPath, [...nodeArgs, script, String(port), String(targetPort)], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  await ready(proc, 'plain-ws-proxy');
  // SIGTERM, so that it exits cleanly and --cpu-prof writes its profile.
  return { port, stop: () => proc.kill('SIGTERM'), pid: proc.pid };
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
    if (ok) return { port, pid: proc.pid, stop: () => proc.kill('SIGTERM') };
    await sleep(100);
  }
  throw new Error(`websockify did not start: ${out}`);
}

/** CPU seconds of a process and its descendants (websockify forks one per connection). */
function treeCpuSeconds(root) {
  const parentOf = new Map();
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      parentOf.set(Number(entry), Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]));
    } catch {
      // gone meanwhile
    }
  }
  let total = 0;
  for (const pid of parentOf.keys()) {
    let p = pid;
    while (p > 1 && p !== root) p = parentOf.get(p) ?? 0;
    if (p === root) total += cpuSeconds(pid);
  }
  return total;
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

/**
 * A WebSocket client: binary frame out, binary frame back. With `token` (consoled) it
 * authenticates in the Authorization header and waits until it holds the writer lock.
 */
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

/**
 * The consoled daemon(s) in front of `echoPort`: alone (`--no-proxy`), or the owner of
 * the guests and an edge that proxies to it, both on a Redis of their own.
 */
async function startConsoled(echoPort, nodeArgs, stops) {
  const tcp = { type: 'tcp', host: '127.0.0.1', port: echoPort };
  const guests = [{ id: 'echo', source: tcp }];
  if (!PROXY) {
    const daemon = await startDaemon(
      { guests, ...CONSOLE_CONFIG },
      { nodeArgs: nodeArgs('consoled.cpuprofile') },
    );
    stops.unshift(daemon.stop);
    return { owner: daemon, edge: null, redis: null };
  }
  const redis = await startRedisServer();
  stops.push(redis.stop);
  guests.push({ id: 'echo-edge', source: tcp });
  const [owner, edge] = await startClusterHosts(redis, [
    { hostId: 'owner', overrides: { guests, ...CONSOLE_CONFIG }, nodeArgs: nodeArgs('consoled.cpuprofile') },
    { hostId: 'edge', overrides: CONSOLE_CONFIG, nodeArgs: nodeArgs('consoled-edge.cpuprofile') },
  ]);
  stops.unshift(owner.stop, edge.stop);
  for (const { id } of guests)
    await waitUntil(`the owner to own ${id}`, async () => {
      const s = await (await owner.api('GET', `/v1/guests/${id}`)).json();
      return s.state === 'connected' && s.replication?.role === 'owner';
    });
  return { owner, edge, redis };
}

const consoleUrl = (daemon, id) => `ws://127.0.0.1:${new URL(daemon.url).port}/v1/guests/${id}/console`;

const stops = [];
try {
  const echo = await startEcho();
  stops.push(echo.stop);
  const websockify = await startWebsockify(echo.port);
  stops.push(websockify.stop);
  const prof = values['cpu-prof'];
  const nodeArgs = (name) =>
    prof ? ['--cpu-prof', `--cpu-prof-dir=${prof}`, `--cpu-prof-name=${name}`] : [];
  const plainProxy = await startPlainProxy(echo.port, nodeArgs('plain-ws-proxy.cpuprofile'));
  stops.push(plainProxy.stop);
  const { owner, edge, redis } = await startConsoled(echo.port, nodeArgs, stops);
  const clients = {
    'direct TCP': await directClient(echo.port),
    'plain Node ws proxy': await wsClient(`ws://127.0.0.1:${plainProxy.port}/`),
    websockify: await wsClient(`ws://127.0.0.1:${websockify.port}/`, { protocols: ['binary'] }),
    consoled: await wsClient(consoleUrl(owner, 'echo'), { token: owner.token }),
  };
  // The edge presents its admin connection to the owner as a rw viewer named admin.
  if (edge) clients[VIA_EDGE] = await wsClient(consoleUrl(edge, 'echo-edge'), { token: edge.token });
  // Each server and the paths whose round trips it serves (the owner serves both consoled paths).
  const consoledPaths = edge ? ['consoled', VIA_EDGE] : ['consoled'];
  const servers = {
    'plain Node ws proxy': { pid: plainProxy.pid, paths: ['plain Node ws proxy'] },
    websockify: { pid: websockify.pid, paths: ['websockify'] },
    consoled: { pid: owner.pid, paths: consoledPaths },
    ...(edge
      ? { [VIA_EDGE]: { pid: edge.pid, paths: [VIA_EDGE] }, redis: { pid: redis.pid, paths: consoledPaths } }
      : {}),
  };
  const samples = Object.fromEntries(Object.keys(clients).map((k) => [k, []]));
  for (const c of Object.values(clients)) await measure(c.trip, WARMUP);
  const cpuBefore = Object.fromEntries(
    Object.entries(servers).map(([k, { pid }]) => [k, treeCpuSeconds(pid)]),
  );
  for (let round = 0; round < ROUNDS; round++) {
    for (const [name, c] of Object.entries(clients))
      samples[name].push(...(await measure(c.trip, Math.ceil(COUNT / ROUNDS))));
  }
  const cpuUsPerTrip = Object.fromEntries(
    Object.entries(servers).map(([k, { pid, paths }]) => [
      k,
      ((treeCpuSeconds(pid) - cpuBefore[k]) * 1e6) / paths.reduce((n, p) => n + samples[p].length, 0),
    ]),
  );
  for (const c of Object.values(clients)) c.close();
  const ownerConsole = (await (await owner.api('GET', '/v1/guests/echo')).json()).console;
  const writerRatePauses = ownerConsole?.writerRatePauses ?? null;

  const stats = Object.fromEntries(
    Object.entries(samples).map(([name, s]) => [
      name,
      {
        n: s.length,
        medianUs: median(s),
        p90Us: percentile(s, 90),
        p99Us: percentile(s, 99),
        maxUs: Math.max(...s),
        serverCpuUsPerTrip: cpuUsPerTrip[name] ?? null,
      },
    ]),
  );
  const direct = stats['direct TCP'];
  for (const s of Object.values(stats)) {
    s.addedMedianUs = s.medianUs - direct.medianUs;
    s.addedP99Us = s.p99Us - direct.p99Us;
  }
  const mine = stats.consoled;
  const ratios = {
    addedMedianVsPlainProxy: mine.addedMedianUs / stats['plain Node ws proxy'].addedMedianUs,
    addedMedianVsWebsockify: mine.addedMedianUs / stats.websockify.addedMedianUs,
    p99VsWebsockify: mine.p99Us / stats.websockify.p99Us,
    p99VsPlainProxy: mine.p99Us / stats['plain Node ws proxy'].p99Us,
  };
  const plain = stats['plain Node ws proxy'];
  const viaEdge = stats[VIA_EDGE];
  const hop = viaEdge && {
    /** What the hop adds: via the edge minus consoled direct (the same owner, another guest). */
    addedMedianUs: viaEdge.medianUs - mine.medianUs,
    addedP99Us: viaEdge.p99Us - mine.p99Us,
    edgeCpuUsPerTrip: cpuUsPerTrip[VIA_EDGE],
    ownerCpuUsPerTrip: cpuUsPerTrip.consoled,
    redisCpuUsPerTrip: cpuUsPerTrip.redis,
  };
  if (hop) {
    ratios.hopAddedMedianVsPlainProxy = hop.addedMedianUs / plain.addedMedianUs;
    ratios.edgeCpuVsPlainProxy = hop.edgeCpuUsPerTrip / plain.serverCpuUsPerTrip;
  }
  const rows = Object.entries(stats).map(([name, s]) => [
    name,
    String(s.n),
    s.medianUs.toFixed(1),
    s.p90Us.toFixed(1),
    s.p99Us.toFixed(1),
    name === 'direct TCP' ? '–' : `+${s.addedMedianUs.toFixed(1)}`,
    s.serverCpuUsPerTrip === null ? '–' : s.serverCpuUsPerTrip.toFixed(1),
  ]);
  const table = markdownTable(
    [
      'path',
      'round trips',
      'median µs',
      'p90 µs',
      'p99 µs',
      'added median over direct µs',
      'server CPU per round trip µs',
    ],
    rows,
  );
  const ratioLines = [
    `consoled added median / plain Node ws proxy's: ${ratios.addedMedianVsPlainProxy.toFixed(2)}`,
    `consoled added median / websockify's: ${ratios.addedMedianVsWebsockify.toFixed(2)}`,
    `consoled p99 / websockify's: ${ratios.p99VsWebsockify.toFixed(2)}`,
    `consoled p99 / plain Node ws proxy's: ${ratios.p99VsPlainProxy.toFixed(2)}`,
    `consoled paused the writer for its keystroke rate ${writerRatePauses} times (limit ${values['keystroke-limit'] ? 'on' : 'off'})`,
  ];
  if (hop)
    ratioLines.push(
      `the hop (via edge − consoled direct): median +${hop.addedMedianUs.toFixed(1)} µs, p99 ${hop.addedP99Us >= 0 ? '+' : ''}${hop.addedP99Us.toFixed(1)} µs`,
      `the hop's added median / plain Node ws proxy's (over direct TCP): ${ratios.hopAddedMedianVsPlainProxy.toFixed(2)}`,
      `CPU per keystroke: edge ${hop.edgeCpuUsPerTrip.toFixed(1)} µs (${ratios.edgeCpuVsPlainProxy.toFixed(2)} of the plain proxy's), owner ${hop.ownerCpuUsPerTrip.toFixed(1)} µs and Redis ${hop.redisCpuUsPerTrip.toFixed(1)} µs (over both consoled paths' round trips)`,
    );
  report('keystroke-rtt', `${table}\n\n${ratioLines.join('\n')}`, {
    count: COUNT,
    rounds: ROUNDS,
    warmup: WARMUP,
    proxy: PROXY,
    keystrokeLimit: values['keystroke-limit'],
    writerRatePauses,
    stats,
    hop,
    ratios,
  });
} finally {
  for (const stop of stops) await stop();
}
