#!/usr/bin/env node
// The leak hunt behind the soak (test/bench/soak.mjs): runs the built daemon with the
// inspector on a loopback port (a node flag given here, so nothing of it exists in a
// daemon started the normal way), does `--warmup` cycles, takes a heap snapshot
// (after a full GC), does `--cycles` more, takes another, and prints the constructors
// whose live object count grew, with the growth per cycle. One cycle: a token issued
// (every other one single-use), a read-only viewer that joins a guest (the token in
// the header or in the first frame) and leaves (with a close frame or by dropping the
// connection), the spent single-use token tried again, a log follower that goes away, a
// spare token never used, and a short-lived guest attached under a new id and
// detached. An object that grows by about one per cycle (or more) is a leak suspect;
// one that does not grow with the cycles is not.
//
//   npm run build && node test/bench/heap-churn.mjs [--cycles 300] [--warmup 50] [--no-redis]
//     [--keep DIR]   (keep the two .heapsnapshot files, to open in Chrome DevTools)
//
// Prints a markdown table; writes test-artifacts/bench/heap-churn.json.
import { rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { WebSocket } from 'ws';
import { freePort, markdownTable, report, sleep, startDaemon } from './bench-lib.mjs';
import { startRedisServer } from './redis-bench-lib.mjs';

const { values } = parseArgs({
  options: {
    cycles: { type: 'string', default: '300' },
    warmup: { type: 'string', default: '50' },
    'no-redis': { type: 'boolean', default: false },
    keep: { type: 'string' },
    top: { type: 'string', default: '25' },
    guests: { type: 'string', default: '0' },
    'extra-seconds': { type: 'string', default: '0' },
  },
});
const cycles = Number(values.cycles);
const warmup = Number(values.warmup);

/** A client of the V8 inspector protocol over its WebSocket. */
async function inspector(port) {
  const list = await (await fetch(`http://127.0.0.1:${port}/json/list`)).json();
  const ws = new WebSocket(list[0].webSocketDebuggerUrl, { perMessageDeflate: false, maxPayload: 1 << 30 });
  await new Promise((r, j) => {
    ws.once('open', r);
    ws.once('error', j);
  });
  let nextId = 1;
  const pending = new Map();
  const listeners = new Map();
  ws.on('message', (data) => {
    const m = JSON.parse(data.toString());
    if (m.id !== undefined) {
      pending.get(m.id)?.(m);
      pending.delete(m.id);
    } else listeners.get(m.method)?.(m.params);
  });
  const send = (method, params = {}) =>
    new Promise((resolve, reject) => {
      const id = nextId++;
      pending.set(id, (m) =>
        m.error ? reject(new Error(`${method}: ${m.error.message}`)) : resolve(m.result),
      );
      ws.send(JSON.stringify({ id, method, params }));
    });
  return {
    send,
    on: (method, fn) => listeners.set(method, fn),
    close: () => ws.close(),
  };
}

/** A full GC, then the heap snapshot as parsed JSON. */
async function snapshot(client) {
  const chunks = [];
  client.on('HeapProfiler.addHeapSnapshotChunk', (p) => chunks.push(p.chunk));
  await client.send('HeapProfiler.enable');
  await client.send('HeapProfiler.collectGarbage');
  await client.send('HeapProfiler.collectGarbage');
  await client.send('HeapProfiler.takeHeapSnapshot', { reportProgress: false });
  return chunks.join('');
}

/** Live objects by constructor (node type `object`, `closure`, ...; name), with their shallow bytes. */
function countsByConstructor(text) {
  const snap = JSON.parse(text);
  const { node_fields: fields, node_types: types } = snap.snapshot.meta;
  const typeNames = types[0];
  const width = fields.length;
  const iType = fields.indexOf('type');
  const iName = fields.indexOf('name');
  const iSize = fields.indexOf('self_size');
  const counts = new Map();
  const nodes = snap.nodes;
  for (let i = 0; i < nodes.length; i += width) {
    const type = typeNames[nodes[i + iType]];
    const all = counts.get(`[all ${type}]`) ?? { count: 0, bytes: 0 };
    all.count++;
    all.bytes += nodes[i + iSize];
    counts.set(`[all ${type}]`, all);
    if (type !== 'object' && type !== 'closure' && type !== 'array' && type !== 'native') continue;
    const key = `${type === 'object' ? '' : `(${type}) `}${snap.strings[nodes[i + iName]]}`;
    const c = counts.get(key) ?? { count: 0, bytes: 0 };
    c.count++;
    c.bytes += nodes[i + iSize];
    counts.set(key, c);
  }
  return counts;
}

async function chardev() {
  const sockets = new Set();
  const server = createServer((s) => {
    s.on('error', () => undefined);
    s.write('hello from a short-lived guest\r\n');
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  return { port: server.address().port, sockets, close: () => server.close() };
}

const redis = values['no-redis'] ? null : await startRedisServer();
const inspectPort = await freePort();
const daemon = await startDaemon(
  {
    hostId: 'heap-host',
    defaults: { reconnect: { initialDelayMs: 50, maxDelayMs: 500 } },
    // Detached directories are kept: only the daemon's memory is looked at here.
    ...(redis ? { redis: { url: redis.url } } : {}),
  },
  { nodeArgs: [`--inspect=127.0.0.1:${inspectPort}`] },
);
// A hunt that fails half-way must not leave its daemon running.
process.once('exit', () => daemon.proc.kill('SIGKILL'));
const guestDev = await chardev();
await daemon.api('PUT', '/v1/guests/steady?waitConnectedMs=5000', {
  source: { type: 'tcp', host: '127.0.0.1', port: guestDev.port },
});
// Steady guests writing at 115200 baud all along: what grows with the bytes shows too.
const writers = [];
for (let g = 0; g < Number(values.guests); g++) {
  const dev = await chardev();
  await daemon.api('PUT', `/v1/guests/steady-${g}?waitConnectedMs=5000`, {
    source: { type: 'tcp', host: '127.0.0.1', port: dev.port },
  });
  writers.push(dev);
}
const line = `${'x'.repeat(114)}\r\n`;
const writing = setInterval(() => {
  for (const w of writers) for (const s of w.sockets) s.write(line.repeat(10));
}, 100);
// The viewers watch a guest that writes, when there are any.
const viewed = writers.length > 0 ? 'steady-0' : 'steady';
const wsBase = `ws://127.0.0.1:${new URL(daemon.url).port}`;

let n = 0;
async function cycle() {
  const i = n++;
  // A viewer joins with a fresh token and leaves.
  const res = await daemon.api('POST', `/v1/guests/${viewed}/tokens`, {
    mode: 'ro',
    ttl: '10m',
    singleUse: i % 2 === 0,
  });
  const { token } = await res.json();
  // Half present the token in the header, half in the first frame (as the page does).
  const inHeader = i % 2 === 0;
  const ws = new WebSocket(`${wsBase}/v1/guests/${viewed}/console?mode=ro`, {
    perMessageDeflate: false,
    headers: inHeader ? { authorization: `Bearer ${token}` } : {},
  });
  ws.on('error', () => undefined);
  if (!inHeader) ws.once('open', () => ws.send(JSON.stringify({ type: 'auth', token })));
  await new Promise((r) => {
    ws.once('message', r);
    ws.once('close', r);
  });
  // Half leave with a close frame, half vanish (the TCP connection reset).
  const closed = new Promise((r) => ws.once('close', r));
  if (i % 4 < 2) ws.close(1000);
  else ws.terminate();
  await closed;
  // The spent single-use token again: refused.
  if (i % 2 === 0) {
    const again = new WebSocket(`${wsBase}/v1/guests/${viewed}/console?mode=ro`, {
      perMessageDeflate: false,
      headers: { authorization: `Bearer ${token}` },
    });
    again.on('error', () => undefined);
    await new Promise((r) => {
      again.once('close', r);
      again.once('unexpected-response', (_req, res) => {
        res.resume();
        r();
      });
    });
  }
  // A follower of the log that goes away.
  const follow = new AbortController();
  const res2 = await fetch(`${daemon.url}/v1/guests/${viewed}/log?tail=100&follow=1`, {
    headers: { authorization: `Bearer ${daemon.token}` },
    signal: follow.signal,
  });
  await res2.body.getReader().read();
  follow.abort();
  // A token nobody uses.
  await daemon.api('POST', '/v1/guests/steady/tokens', { mode: 'rw', ttl: '1h', singleUse: i % 2 === 1 });
  // A guest that comes and goes under a new name.
  await daemon.api('PUT', `/v1/guests/churn-${i}?waitConnectedMs=5000`, {
    source: { type: 'tcp', host: '127.0.0.1', port: guestDev.port },
  });
  await daemon.api('DELETE', `/v1/guests/churn-${i}`);
}

const client = await inspector(inspectPort);
for (let i = 0; i < warmup; i++) await cycle();
await sleep(3000); // closes and detaches settle (close grace timers, episode ends)
const before = await snapshot(client);
const extraUntil = performance.now() + Number(values['extra-seconds']) * 1000;
for (let i = 0; i < cycles || performance.now() < extraUntil; i++) {
  if (i < cycles) await cycle();
  else await sleep(1000);
}
await sleep(3000);
const after = await snapshot(client);
// Label sets of guests that are gone: a metric kept for a detached guest grows the scrape.
const metricsText = await (await daemon.api('GET', '/metrics')).text();
const staleLabels = metricsText.split('\n').filter((l) => /guest="churn-/.test(l));
if (values.keep) {
  writeFileSync(join(values.keep, 'before.heapsnapshot'), before);
  writeFileSync(join(values.keep, 'after.heapsnapshot'), after);
}
client.close();
clearInterval(writing);
await daemon.stop();
for (const w of writers) w.close();
await redis?.stop();
rmSync(daemon.dir, { recursive: true, force: true });
guestDev.close();

const a = countsByConstructor(before);
const b = countsByConstructor(after);
const rows = [];
for (const [name, c] of b) {
  const was = a.get(name) ?? { count: 0, bytes: 0 };
  const grew = c.count - was.count;
  if (grew > 0)
    rows.push({
      name,
      before: was.count,
      after: c.count,
      grew,
      perCycle: grew / cycles,
      bytes: c.bytes - was.bytes,
    });
}
rows.sort((x, y) => y.grew - x.grew);
const top = rows.slice(0, Number(values.top));
report(
  'heap-churn',
  `Heap growth over ${cycles} cycles (after ${warmup} warm-up cycles; replication ${redis ? 'on' : 'off'}): ` +
    'live objects by constructor after a full GC (`[all <type>]`: every node of that type); ' +
    `metric lines naming a detached guest: ${staleLabels.length}\n\n` +
    markdownTable(
      ['constructor', 'before', 'after', 'grew', 'per cycle', 'bytes grew'],
      top.map((r) => [
        r.name,
        String(r.before),
        String(r.after),
        String(r.grew),
        r.perCycle.toFixed(2),
        String(r.bytes),
      ]),
    ),
  { cycles, warmup, redis: redis !== null, staleMetricLines: staleLabels, grew: rows },
);
