#!/usr/bin/env node
// The viewer's gap at a live migration: a real QEMU guest (TCG) printing a numbered
// line every 1000/hz ms is live-migrated through QMP between two daemons (host-a and
// host-b, back and forth), while one viewer watches it through a third daemon (host-c,
// an edge that proxies the console to the owner and follows the guest: README
// "Console across hosts"). The three share a Redis the program starts (its own
// redis-server on a free port) and a `console.tokenSecret`. Per migration:
//   - the viewer's gap: from the last output byte it got from the source (before
//     `moved`) to the first byte from the destination (after the new `welcome`);
//   - the same between whole numbered lines: the last line before `moved`, the first
//     after the `welcome` (what a reader sees stall, markers aside);
//   - QEMU's own downtime (`query-migrate` on the source once completed: `downtime`);
//   - the guest's own gap: from the last byte out of the source QEMU's chardev to the
//     first out of the destination's (each daemon reads its chardev through a relay
//     in this program that notes when bytes arrive), the floor of any viewer's gap;
//   - whether the numbered lines go on across the seam with no gap and no duplicate.
// Each migration starts a destination QEMU with `-incoming`, attaches it there
// (`incoming: true`), waits for the destination to wait for the handoff, migrates,
// then kills the paused source and detaches it; the guest boots once.
//
//   npm run build && node test/bench/migration-gap.mjs [--runs 10] [--hz 50] [--seal-poll-ms N]
//
// --seal-poll-ms sets the hosts' `handoff.sealPollIntervalMs` (how often a sealed source
// looks whether the destination owns the guest yet), to compare it with the default.
//
// Needs what the QEMU tests need (qemu-system-x86_64, a cloud kernel, busybox-static)
// and redis-server. Prints a markdown table; writes test-artifacts/bench/migration-gap.json.
import { connect, createServer } from 'node:net';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { runnerImport } from 'vite';
import { MARKER_REGEX } from '../../dist/common/marker.js';
import { freePort, markdownTable, median, repoRoot, report, sleep, waitUntil } from './bench-lib.mjs';
import { startClusterHosts, startRedisServer } from './redis-bench-lib.mjs';

const { values } = parseArgs({
  options: {
    runs: { type: 'string', default: '10' },
    /** Numbered lines the guest prints a second. */
    hz: { type: 'string', default: '50' },
    /** `handoff.sealPollIntervalMs` of the hosts (the daemon's default when not given). */
    'seal-poll-ms': { type: 'string' },
  },
});
const RUNS = Number(values.runs);
const HZ = Number(values.hz);
const SEAL_POLL_MS = values['seal-poll-ms'] === undefined ? null : Number(values['seal-poll-ms']);
const ID = 'migrating-guest';
/** Whole lines the viewer must get from the destination before the next migration. */
const LINES_AFTER = 20;

const load = async (path) =>
  (await runnerImport(join(repoRoot, path), { configFile: false, logLevel: 'error' })).module;
const qemuSupport = await load('test/support/qemu-guest.ts');
const { ConsoleViewer } = await load('test/support/console-viewer.ts');
const available = qemuSupport.qemuAvailable();
if (!available.ok) {
  console.error(`migration-gap: skipped: ${available.reason}`);
  process.exit(0);
}

/**
 * What the viewer received, in arrival order: `{seq, t, type, bytes?, message?}`, one
 * record per WebSocket message (`type` 'bytes' or the control message's type).
 */
function recordArrivals(viewer) {
  const records = [];
  viewer.ws.on('message', (data, isBinary) => {
    const t = performance.now();
    const bytes = Buffer.isBuffer(data) ? data : Buffer.from(data);
    const seq = records.length;
    if (isBinary) records.push({ seq, t, type: 'bytes', bytes });
    else {
      const message = JSON.parse(bytes.toString('utf8'));
      records.push({ seq, t, type: message.type, message });
    }
  });
  return records;
}

/**
 * The numbered lines in the output, markers taken out (a marker may split a line where
 * the source stopped), each with the record its `\n` arrived in: `{n, seq, t}`.
 */
function numberedLines(records) {
  const frames = records.filter((r) => r.type === 'bytes');
  const raw = Buffer.concat(frames.map((f) => f.bytes)).toString('latin1');
  const frameOf = new Int32Array(raw.length);
  let at = 0;
  frames.forEach((f, i) => {
    frameOf.fill(i, at, at + f.bytes.length);
    at += f.bytes.length;
  });
  // Keep every byte outside a marker, with the frame it came in.
  let text = '';
  const kept = [];
  let from = 0;
  for (const m of [...raw.matchAll(MARKER_REGEX), { index: raw.length, 0: '' }]) {
    text += raw.slice(from, m.index);
    for (let i = from; i < m.index; i++) kept.push(frameOf[i]);
    from = m.index + m[0].length;
  }
  return [...text.matchAll(/(?<=^|\n)counter (\d+)\r\n/g)].map((m) => {
    const frame = frames[kept[m.index + m[0].length - 1]];
    return { n: Number(m[1]), seq: frame.seq, t: frame.t };
  });
}

/**
 * A TCP relay between a daemon and QEMU's serial chardev that notes when the guest's
 * bytes leave QEMU: `arrivals` gets the time of every chunk read from QEMU.
 */
async function timedRelay(qemuPort) {
  const arrivals = [];
  const sockets = new Set();
  const server = createServer((daemon) => {
    const qemu = connect(qemuPort, '127.0.0.1');
    for (const s of [daemon, qemu]) {
      s.setNoDelay(true);
      sockets.add(s);
      s.on('error', () => undefined).on('close', () => {
        daemon.destroy();
        qemu.destroy();
      });
    }
    qemu.on('data', () => arrivals.push(performance.now()));
    qemu.pipe(daemon);
    daemon.pipe(qemu);
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  return {
    port: server.address().port,
    arrivals,
    close() {
      for (const s of sockets) s.destroy();
      server.close();
    },
  };
}

/** A QEMU guest (`startQemuGuest` options but the serial port) with a timed relay in front of its chardev. */
async function startGuest(options) {
  const port = await freePort();
  const qemu = await qemuSupport.startQemuGuest({
    mode: 'counter',
    hz: HZ,
    serial: { kind: 'tcp-server', port },
    ...options,
  });
  const relay = await timedRelay(port);
  return {
    qemu,
    relay,
    source: { type: 'tcp', host: '127.0.0.1', port: relay.port },
    async kill() {
      relay.close();
      await qemu.kill();
    },
  };
}

const redis = await startRedisServer();
const overrides = SEAL_POLL_MS === null ? {} : { handoff: { sealPollIntervalMs: SEAL_POLL_MS } };
const [a, b, c] = await startClusterHosts(
  redis,
  ['host-a', 'host-b', 'host-c'].map((hostId) => ({ hostId, overrides })),
);
const status = async (d) => (await d.api('GET', `/v1/guests/${ID}`)).json();
const qemus = [];
const runs = [];
let viewer;
try {
  // The guest boots on host-a, paused until host-a reads its chardev, so that it sees every byte.
  let guest = await startGuest({ paused: true });
  qemus.push(guest);
  await a.api('PUT', `/v1/guests/${ID}`, { source: guest.source });
  await waitUntil('host-a to read the guest', async () => (await status(a)).offset > 0);
  await guest.qemu.qmp.execute('cont');

  // The viewer, read-only, through host-c (the token is issued by host-c too).
  const res = await c.api('POST', `/v1/guests/${ID}/tokens`, { mode: 'ro', ttl: '1h', name: 'viewer' });
  const { token } = await res.json();
  viewer = await ConsoleViewer.open(c.url, ID, { token, header: true, from: 0 });
  const records = recordArrivals(viewer); // from the first welcome on
  await viewer.waitFor('welcome');
  await viewer.waitForText('counter 20\r\n', 120_000);

  let [from, to] = [a, b];
  for (let run = 0; run < RUNS; run++) {
    const migrationPort = await freePort();
    const dest = await startGuest({ incoming: migrationPort });
    qemus.push(dest);
    await to.api('PUT', `/v1/guests/${ID}`, { source: dest.source, incoming: true });
    await waitUntil('the destination to wait for the handoff', async () => {
      const s = await status(to);
      return s.replication?.role === 'incoming' && s.replication.handoff.phase === 'waiting';
    });
    await sleep(500); // the guest prints on for a while before it moves
    const since = records.length;
    const migrationMs = await qemuSupport.migrate(guest.qemu, migrationPort);
    const info = await guest.qemu.qmp.execute('query-migrate');
    const welcome = await waitUntil(
      'the new welcome',
      async () => {
        const moved = records.findIndex((r, i) => i >= since && r.type === 'moved');
        return moved >= 0 && records.find((r, i) => i > moved && r.type === 'welcome');
      },
      30_000,
    );
    const moved = records.find((r, i) => i >= since && r.type === 'moved');
    await waitUntil(
      `${LINES_AFTER} lines from the destination`,
      async () => numberedLines(records).filter((l) => l.seq > welcome.seq).length >= LINES_AFTER,
      30_000,
    );
    const owned = await status(to);
    const lines = numberedLines(records);
    const lastBytes = records.findLast((r) => r.seq < moved.seq && r.type === 'bytes');
    const firstBytes = records.find((r) => r.seq > welcome.seq && r.type === 'bytes');
    const lastLine = lines.findLast((l) => l.seq < moved.seq);
    const firstLine = lines.find((l) => l.seq > welcome.seq);
    const sourceLast = guest.relay.arrivals[guest.relay.arrivals.length - 1];
    runs.push({
      from: run % 2 === 0 ? 'host-a' : 'host-b',
      to: moved.message.host,
      proxied: moved.message.proxied === true,
      movedOffset: moved.message.offset,
      welcomeOffset: welcome.message.offset,
      byteGapMs: firstBytes.t - lastBytes.t,
      lineGapMs: firstLine.t - lastLine.t,
      guestGapMs: dest.relay.arrivals[0] - sourceLast,
      /** When each step reached the viewer, in ms after the guest's last byte out of the source QEMU. */
      timeline: Object.fromEntries(
        Object.entries({
          lastLine: lastLine.t,
          lastBytes: lastBytes.t,
          destChardevFirstByte: dest.relay.arrivals[0],
          moved: moved.t,
          welcome: welcome.t,
          firstBytes: firstBytes.t,
          firstLine: firstLine.t,
        }).map(([k, t]) => [k, t - sourceLast]),
      ),
      movedToWelcomeMs: welcome.t - moved.t,
      qemuDowntimeMs: info.downtime,
      qemuTotalMs: info['total-time'],
      migrationMs,
      triggerToOwnerMs: owned.replication?.handoff.lastTriggerToOwnerMs ?? null,
      lastLineBefore: lastLine.n,
      firstLineAfter: firstLine.n,
      seamOk: firstLine.n === lastLine.n + 1,
    });
    // The source QEMU is paused for good (postmigrate); its host lets the guest go.
    await qemus.shift().kill();
    await from.api('DELETE', `/v1/guests/${ID}`);
    guest = dest;
    [from, to] = [to, from];
  }

  // The whole of what the viewer got: one run of offsets, and every line once, in order.
  const all = numberedLines(records);
  const numbers = all.map((l) => l.n);
  const outOfStep = numbers.flatMap((n, i) =>
    i > 0 && n !== numbers[i - 1] + 1 ? [[numbers[i - 1], n]] : [],
  );
  const whole = {
    lines: numbers.length,
    firstLine: numbers[0],
    lastLine: numbers[numbers.length - 1],
    outOfStep,
    /** The guest's actual pace, as the viewer got it (under TCG it is slower than `hz` asks). */
    medianLineIntervalMs: median(all.slice(1).map((l, i) => l.t - all[i].t)),
    offsetSegments: viewer.segments.length,
    protocolErrors: viewer.protocolErrors,
    welcomes: records.filter((r) => r.type === 'welcome').length,
  };
  const col = (k) => runs.map((r) => r[k]).filter((v) => v !== null);
  const summary = Object.fromEntries(
    [
      'byteGapMs',
      'lineGapMs',
      'guestGapMs',
      'qemuDowntimeMs',
      'movedToWelcomeMs',
      'triggerToOwnerMs',
      'migrationMs',
    ].map((k) => [k, median(col(k))]),
  );
  summary.timeline = Object.fromEntries(
    Object.keys(runs[0].timeline).map((k) => [k, median(runs.map((r) => r.timeline[k]))]),
  );
  summary.byteGapMinusDowntimeMs = summary.byteGapMs - summary.qemuDowntimeMs;
  summary.byteGapOverDowntime = summary.byteGapMs / summary.qemuDowntimeMs;
  summary.lineGapMinusDowntimeMs = summary.lineGapMs - summary.qemuDowntimeMs;
  summary.lineGapOverDowntime = summary.lineGapMs / summary.qemuDowntimeMs;
  summary.lineGapMinusGuestGapMs = summary.lineGapMs - summary.guestGapMs;
  summary.lineGapOverGuestGap = summary.lineGapMs / summary.guestGapMs;
  const ms = (v) => v.toFixed(1);
  const columns = [
    ['viewer gap, bytes (ms)', 'byteGapMs'],
    ['viewer gap, lines (ms)', 'lineGapMs'],
    ["guest's own gap at the chardevs (ms)", 'guestGapMs'],
    ['QEMU downtime (ms)', 'qemuDowntimeMs'],
    ['moved to welcome (ms)', 'movedToWelcomeMs'],
    ['trigger to owner (ms)', 'triggerToOwnerMs'],
    ['migration (ms)', 'migrationMs'],
  ];
  const table = markdownTable(
    ['migration', ...columns.map(([title]) => title), 'lines at the seam'],
    [
      ...runs.map((r, i) => [
        `${i + 1}: ${r.from} → ${r.to}`,
        ...columns.map(([, k]) => (r[k] === null ? '–' : ms(r[k]))),
        `${r.lastLineBefore} → ${r.firstLineAfter}${r.seamOk ? '' : ' (NOT in step)'}`,
      ]),
      [
        '**median**',
        ...columns.map(([, k]) => ms(summary[k])),
        `${runs.filter((r) => r.seamOk).length} of ${runs.length} in step`,
      ],
    ],
  );
  const lines = [
    `${RUNS} migrations of a guest asked to print a numbered line every ${ms(1000 / HZ)} ms (median interval at the viewer ${ms(whole.medianLineIntervalMs)} ms), one viewer through host-c${SEAL_POLL_MS === null ? '' : `, handoff.sealPollIntervalMs ${SEAL_POLL_MS}`}`,
    '',
    table,
    '',
    `median viewer gap (bytes) − median QEMU downtime: ${ms(summary.byteGapMinusDowntimeMs)} ms (ratio ${summary.byteGapOverDowntime.toFixed(2)})`,
    `median viewer gap (lines) − median QEMU downtime: ${ms(summary.lineGapMinusDowntimeMs)} ms (ratio ${summary.lineGapOverDowntime.toFixed(2)})`,
    `median viewer gap (lines) − median guest's own gap: ${ms(summary.lineGapMinusGuestGapMs)} ms (ratio ${summary.lineGapOverGuestGap.toFixed(2)})`,
    `median timeline, ms after the guest's last byte out of the source QEMU: ${Object.entries(
      summary.timeline,
    )
      .map(([k, t]) => `${k} ${ms(t)}`)
      .join(', ')}`,
    `the viewer's whole output: lines ${whole.firstLine}..${whole.lastLine} (${whole.lines}), ${whole.outOfStep.length} out of step ${JSON.stringify(whole.outOfStep)}; ${whole.offsetSegments} run(s) of offsets; ${whole.welcomes} welcomes; protocol errors ${JSON.stringify(whole.protocolErrors)}`,
  ];
  report('migration-gap', lines.join('\n'), {
    runs: RUNS,
    hz: HZ,
    sealPollIntervalMs: SEAL_POLL_MS,
    migrations: runs,
    summary,
    viewer: whole,
  });
} finally {
  await viewer?.close().catch(() => undefined);
  await Promise.all(qemus.map((q) => q.kill()));
  for (const d of [a, b, c]) await d.stop();
  await redis.stop();
}
