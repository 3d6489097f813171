#!/usr/bin/env node
import { rmSync } from 'node:fs';
// The soak: does the daemon's memory stay flat under churn? (About 540 lines on purpose:
// one program with its seed, so a soak is reproduced by one command.) It starts its own
// redis-server and the built daemon (replication on), feeds `--guests` guests at
// `--baud` (115200 baud = 11.5 KB/s each) with numbered lines, keeps `--viewers`
// read-only WebSocket viewers on `--viewer-guests` of them and replaces `--replace`
// of those every `--churn-ms` (each replacement with a freshly issued token, half of
// them single-use), issues `--spare-tokens` more tokens that are never used at each
// churn, and detaches and re-attaches a few short-lived guests every `--cycle-ms`.
// It samples the daemon's RSS (/proc/<pid>/status) and V8 heap (/metrics) every
// `--sample-ms`, and reports the least-squares RSS slope after `--warmup-minutes`
// (MiB per hour and % per hour of the RSS at the end of the warm-up; by default the
// time each guest's log takes to fill its rotation, 12 min at 115200 baud, at most
// half the run), and the same fit from other starting points. All the
// while it reads every guest's log back through the API and checks each line: in
// order, none missing, none torn. The schedule (which viewers go, which tokens are
// single-use, the writers' phases) follows `--seed`.
//
//   npm run build && node test/bench/soak.mjs [--minutes 30] [--guests 200] [--viewers 50]
//     [--viewer-guests 10] [--replace 5] [--churn-ms 20000] [--cycle-ms 30000] [--seed 1]
//
// Prints a markdown table; writes test-artifacts/bench/soak.json with every sample.
import { createServer } from 'node:net';
import { parseArgs } from 'node:util';
import { isMainThread, parentPort, Worker, workerData } from 'node:worker_threads';
import { WebSocket } from 'ws';
import { attachTcpGuests, markdownTable, report, rssBytes, sleep, startDaemon } from './bench-lib.mjs';
import { startRedisServer } from './redis-bench-lib.mjs';

const MiB = 1024 * 1024;

/** A small seeded PRNG (mulberry32): the same seed gives the same schedule. */
function prng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Line `seq` of guest `g`: `g<g> <seq> ` then a letter that depends on both, to `size` bytes with `\n`. */
function lineOf(g, seq, size) {
  const head = `g${g} ${seq} `;
  const fill = String.fromCharCode(65 + ((seq * 7 + g) % 26));
  return `${head}${fill.repeat(size - head.length - 1)}\n`;
}

// ---------------------------------------------------------------------------
// Worker: the guests. One chardev (a QEMU `server=on` stand-in) per guest, each
// written at `bytesPerSec` in whole numbered lines every `tickMs`.
// ---------------------------------------------------------------------------
if (!isMainThread) {
  const { guests, bytesPerSec, lineBytes, tickMs, phases } = workerData;
  const sockets = new Array(guests).fill(null);
  const ports = [];
  for (let i = 0; i < guests; i++) {
    const server = createServer((s) => {
      s.on('error', () => undefined);
      sockets[i] = s;
    });
    await new Promise((r) => server.listen(0, '127.0.0.1', r));
    ports.push(server.address().port);
  }
  const seqs = new Array(guests).fill(0);
  const perTick = (bytesPerSec * tickMs) / 1000;
  const credit = phases.map((p) => p * perTick);
  let timer = null;
  parentPort.on('message', (msg) => {
    if (msg === 'start') {
      timer = setInterval(() => {
        for (let i = 0; i < guests; i++) {
          const s = sockets[i];
          if (!s) continue;
          credit[i] += perTick;
          const n = Math.floor(credit[i] / lineBytes);
          if (n === 0) continue;
          credit[i] -= n * lineBytes;
          let out = '';
          for (let k = 0; k < n; k++) out += lineOf(i, seqs[i]++, lineBytes);
          s.write(out);
        }
      }, tickMs);
    } else if (msg === 'stop') {
      clearInterval(timer);
      parentPort.postMessage({ lines: seqs });
    }
  });
  parentPort.postMessage({ ports });
}

// ---------------------------------------------------------------------------
// Main thread.
// ---------------------------------------------------------------------------

/** Reads a guest's log back from `next` and checks each line against what its writer wrote. */
class LineChecker {
  next = 0;
  carry = '';
  expected = null; // the next sequence number; null until the first whole line
  lines = 0;
  missing = 0;
  torn = 0;
  markers = 0;
  /** Bytes rotated away before they were read back (not checked, not counted lost). */
  unchecked = 0;
  constructor(index, lineBytes) {
    this.index = index;
    this.lineBytes = lineBytes;
  }
  feed(start, text) {
    if (start > this.next) {
      this.unchecked += start - this.next;
      this.carry = '';
      this.expected = null;
    }
    const all = this.carry + text;
    const cut = all.lastIndexOf('\n');
    this.carry = all.slice(cut + 1);
    const body = all.slice(0, cut + 1);
    let from = 0;
    // A read that started past the writer's line boundary (the first read after a
    // rotation) begins mid-line: skip to the first newline.
    if (this.expected === null && this.lines === 0 && start > 0) from = body.indexOf('\n') + 1;
    for (let i = from; i < body.length; ) {
      const nl = body.indexOf('\n', i);
      const line = body.slice(i, nl + 1);
      i = nl + 1;
      const bare = line.replace(/^\r?\n?/, '');
      if (bare === '' || bare.startsWith('[consoled] ') || line.startsWith('\r\n[consoled]')) {
        if (bare.startsWith('[consoled] ')) this.markers++;
        continue;
      }
      const m = /^g(\d+) (\d+) /.exec(line);
      if (!m || Number(m[1]) !== this.index || line !== lineOf(this.index, Number(m[2]), this.lineBytes)) {
        this.torn++;
        this.expected = null;
        continue;
      }
      const seq = Number(m[2]);
      if (this.expected !== null && seq !== this.expected) this.missing += Math.abs(seq - this.expected);
      this.expected = seq + 1;
      this.lines++;
    }
  }
}

async function readBack(daemon, id, checker, limitBytes) {
  const res = await fetch(
    `${daemon.url}/v1/guests/${id}/log?start=${checker.next}&limit=${limitBytes}&scope=local`,
    { headers: { authorization: `Bearer ${daemon.token}` } },
  );
  if (!res.ok) throw new Error(`log of ${id}: ${res.status} ${await res.text()}`);
  const body = Buffer.from(await res.arrayBuffer()).toString('latin1');
  const start = Number(res.headers.get('x-consoled-start'));
  checker.feed(start, body);
  checker.next = Number(res.headers.get('x-consoled-next'));
}

/** A chardev for a short-lived guest: writes numbered lines to whoever connects until closed. */
async function cycleGuest(bytesPerSec, lineBytes) {
  let socket = null;
  let seq = 0;
  const server = createServer((s) => {
    s.on('error', () => undefined);
    socket = s;
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  const timer = setInterval(() => {
    if (!socket || socket.destroyed) return;
    let out = '';
    for (let n = Math.max(1, Math.round(bytesPerSec / 10 / lineBytes)); n > 0; n--)
      out += lineOf(9999, seq++, lineBytes);
    socket.write(out);
  }, 100);
  return {
    port: server.address().port,
    drop() {
      socket?.destroy();
      socket = null;
    },
    close() {
      clearInterval(timer);
      socket?.destroy();
      server.close();
    },
  };
}

function leastSquares(points) {
  const n = points.length;
  if (n < 2) return { slope: Number.NaN, intercept: Number.NaN };
  const mx = points.reduce((a, p) => a + p[0], 0) / n;
  const my = points.reduce((a, p) => a + p[1], 0) / n;
  let sxy = 0;
  let sxx = 0;
  for (const [x, y] of points) {
    sxy += (x - mx) * (y - my);
    sxx += (x - mx) ** 2;
  }
  const slope = sxy / sxx;
  return { slope, intercept: my - slope * mx };
}

function metricValue(text, name) {
  const m = new RegExp(`^${name}(?:\\{[^}]*\\})? ([0-9.e+-]+)$`, 'm').exec(text);
  return m ? Number(m[1]) : null;
}

async function main() {
  const { values } = parseArgs({
    options: {
      seed: { type: 'string', default: '1' },
      minutes: { type: 'string', default: '30' },
      'warmup-minutes': { type: 'string' },
      guests: { type: 'string', default: '200' },
      baud: { type: 'string', default: '115200' },
      'line-bytes': { type: 'string', default: '200' },
      viewers: { type: 'string', default: '50' },
      'viewer-guests': { type: 'string', default: '10' },
      replace: { type: 'string', default: '5' },
      'churn-ms': { type: 'string', default: '20000' },
      'spare-tokens': { type: 'string', default: '5' },
      'cycle-ms': { type: 'string', default: '30000' },
      'cycle-guests': { type: 'string', default: '4' },
      'sample-ms': { type: 'string', default: '10000' },
      'redis-retention-mib': { type: 'string', default: '4' },
      'no-redis': { type: 'boolean', default: false },
      'node-arg': { type: 'string', multiple: true, default: [] },
    },
  });
  const seed = Number(values.seed);
  const minutes = Number(values.minutes);
  const guests = Number(values.guests);
  const bytesPerSec = Number(values.baud) / 10;
  // By default the warm-up lasts until each guest's log has filled its rotation (the
  // daemon's default 4 files of 2 MiB): what a guest holds, bounded by that, has
  // grown to its size. At most half the run.
  const fillMinutes = (4 * 2 * MiB) / bytesPerSec / 60;
  const warmupMinutes = Number(values['warmup-minutes'] ?? Math.min(minutes / 2, Math.ceil(fillMinutes)));
  const lineBytes = Number(values['line-bytes']);
  const viewerCount = Number(values.viewers);
  const viewerGuests = Math.min(Number(values['viewer-guests']), guests);
  const replace = Number(values.replace);
  const churnMs = Number(values['churn-ms']);
  const spareTokens = Number(values['spare-tokens']);
  const cycleMs = Number(values['cycle-ms']);
  const cycleSlots = Number(values['cycle-guests']);
  const sampleMs = Number(values['sample-ms']);
  const rand = prng(seed);

  const redis = values['no-redis'] ? null : await startRedisServer();
  const daemon = await startDaemon(
    {
      hostId: 'soak-host',
      limits: { maxGuests: guests + cycleSlots + 10, maxBodyBytes: 65536 },
      metrics: { requireAuth: true },
      defaults: {
        rateLimit: { bytesPerSec: 0, burstBytes: 1 },
        reconnect: { initialDelayMs: 50, maxDelayMs: 500 },
      },
      console: { maxViewersPerGuest: viewerCount + 10 },
      // Detached short-lived guests' directories expire, as on a host whose VMs come and go.
      store: { retention: { detachedAfterMs: 60_000, sweepIntervalMs: 10_000 } },
      ...(redis
        ? { redis: { url: redis.url, retentionBytes: Number(values['redis-retention-mib']) * MiB } }
        : {}),
    },
    { nodeArgs: values['node-arg'] },
  );
  const stopAll = async () => {
    await daemon.stop();
    await redis?.stop();
    rmSync(daemon.dir, { recursive: true, force: true });
  };
  // A soak that fails half-way must not leave its daemon running.
  const killAtExit = () => daemon.proc.kill('SIGKILL');
  process.once('exit', killAtExit);

  // The guests.
  const phases = Array.from({ length: guests }, () => rand());
  const worker = new Worker(new URL(import.meta.url), {
    workerData: { guests, bytesPerSec, lineBytes, tickMs: 50, phases },
  });
  const { ports } = await new Promise((r) => worker.once('message', r));
  const ids = Array.from({ length: guests }, (_, i) => `soak-${i}`);
  await attachTcpGuests(daemon, ids, ports);
  worker.postMessage('start');
  const t0 = performance.now();
  const elapsedS = () => (performance.now() - t0) / 1000;
  const endAt = t0 + minutes * 60_000;
  const running = () => performance.now() < endAt;

  // The viewers: read-only, each with a token issued for it.
  const counts = {
    viewersOpened: 0,
    viewersReplaced: 0,
    viewerBytes: 0,
    viewerErrors: 0,
    tokens: 0,
    cycles: 0,
  };
  const issueToken = async (guest, singleUse) => {
    const res = await daemon.api('POST', `/v1/guests/${guest}/tokens`, { mode: 'ro', ttl: '10m', singleUse });
    counts.tokens++;
    return (await res.json()).token;
  };
  const openViewer = async (guest) => {
    const token = await issueToken(guest, rand() < 0.5);
    const ws = new WebSocket(
      `ws://127.0.0.1:${new URL(daemon.url).port}/v1/guests/${guest}/console?mode=ro`,
      {
        perMessageDeflate: false,
        headers: { authorization: `Bearer ${token}` },
      },
    );
    ws.on('message', (data, isBinary) => {
      if (isBinary) counts.viewerBytes += data.length;
    });
    ws.on('error', () => {
      counts.viewerErrors++;
    });
    await new Promise((resolve) => {
      ws.once('message', resolve);
      ws.once('close', resolve);
    });
    counts.viewersOpened++;
    return { guest, ws };
  };
  const viewers = [];
  for (let i = 0; i < viewerCount; i++) viewers.push(await openViewer(ids[i % viewerGuests]));
  const churnViewers = async () => {
    while (running()) {
      await sleep(churnMs);
      for (let k = 0; k < replace && viewers.length > 0; k++) {
        const at = Math.floor(rand() * viewers.length);
        const old = viewers[at];
        const closed = new Promise((r) => old.ws.once('close', r));
        old.ws.close(1000);
        await Promise.race([closed, sleep(3000)]);
        old.ws.terminate();
        viewers[at] = await openViewer(ids[Math.floor(rand() * viewerGuests)]);
        counts.viewersReplaced++;
      }
      for (let k = 0; k < spareTokens; k++) await issueToken(ids[Math.floor(rand() * guests)], rand() < 0.5);
    }
  };

  // Short-lived guests: every cycle one is detached and a new one attached in its slot.
  const slots = await Promise.all(
    Array.from({ length: cycleSlots }, () => cycleGuest(bytesPerSec, lineBytes)),
  );
  const slotIds = slots.map((_, s) => `cycle-${s}-0`);
  for (let s = 0; s < cycleSlots; s++) {
    await daemon.api('PUT', `/v1/guests/${slotIds[s]}`, {
      source: { type: 'tcp', host: '127.0.0.1', port: slots[s].port },
    });
  }
  const cycleGuests = async () => {
    for (let n = 1; running() && cycleSlots > 0; n++) {
      await sleep(cycleMs);
      const s = Math.floor(rand() * cycleSlots);
      await daemon.api('DELETE', `/v1/guests/${slotIds[s]}`);
      slots[s].drop();
      slotIds[s] = `cycle-${s}-${n}`;
      await daemon.api('PUT', `/v1/guests/${slotIds[s]}?waitConnectedMs=5000`, {
        source: { type: 'tcp', host: '127.0.0.1', port: slots[s].port },
      });
      counts.cycles++;
    }
  };

  // Read-back: every guest's log, round robin, a few guests at a time.
  const checkers = ids.map((_, i) => new LineChecker(i, lineBytes));
  const readAll = async () => {
    for (let i = 0; i < guests; i++) await readBack(daemon, ids[i], checkers[i], 16 * MiB);
  };
  const verify = async () => {
    while (running()) {
      const started = performance.now();
      await readAll();
      await sleep(Math.max(1000, 60_000 - (performance.now() - started)));
    }
  };

  // The samples.
  const samples = [];
  const sample = async () => {
    const text = await (await daemon.api('GET', '/metrics')).text();
    samples.push({
      t: elapsedS(),
      rss: rssBytes(daemon.pid),
      heapUsed: metricValue(text, 'consoled_process_heap_used_bytes'),
      external: metricValue(text, 'consoled_process_external_memory_bytes'),
      viewersReplaced: counts.viewersReplaced,
      tokens: counts.tokens,
      cycles: counts.cycles,
    });
    const s = samples.at(-1);
    process.stderr.write(
      `${(s.t / 60).toFixed(1)} min: RSS ${(s.rss / MiB).toFixed(1)} MiB` +
        `${s.heapUsed !== null ? `, heap ${(s.heapUsed / MiB).toFixed(1)} MiB` : ''}` +
        `, ${s.viewersReplaced} viewers replaced, ${s.tokens} tokens, ${s.cycles} attach/detach cycles\n`,
    );
  };
  const sampling = async () => {
    while (running()) {
      await sample();
      await sleep(Math.min(sampleMs, Math.max(0, endAt - performance.now())));
    }
    await sample();
  };

  await Promise.all([churnViewers(), cycleGuests(), verify(), sampling()]);

  worker.postMessage('stop');
  const { lines: written } = await new Promise((r) => worker.once('message', r));
  await sleep(2000); // what the writers sent last reaches the log
  await readAll();
  for (const v of viewers) v.ws.terminate();
  for (const s of slots) s.close();
  await worker.terminate();
  await stopAll();
  process.off('exit', killAtExit);

  /** The RSS slope fitted to the samples after `minutesIn`, in MiB/h and % of the fitted RSS then. */
  const slopeAfter = (minutesIn) => {
    const points = samples.filter((s) => s.t >= minutesIn * 60).map((s) => [s.t / 3600, s.rss / MiB]);
    const f = leastSquares(points);
    const at = f.intercept + (f.slope * minutesIn) / 60;
    return {
      warmupMinutes: minutesIn,
      samples: points.length,
      mibPerHour: f.slope,
      percentPerHour: (f.slope / at) * 100,
      at,
    };
  };
  const warmupS = warmupMinutes * 60;
  const after = samples.filter((s) => s.t >= warmupS);
  const fit = leastSquares(after.map((s) => [s.t / 3600, s.rss / MiB]));
  const atWarmup = fit.intercept + fit.slope * (warmupS / 3600);
  // The same fit from other points, to show how much the choice of warm-up weighs.
  const slopesByWarmup = [0, 5, 10, 15, 20, 30, 45].filter((m) => m < minutes - 2).map(slopeAfter);
  const heapFit = leastSquares(
    after.filter((s) => s.heapUsed !== null).map((s) => [s.t / 3600, s.heapUsed / MiB]),
  );
  const total = (k) => checkers.reduce((a, c) => a + c[k], 0);
  const writtenLines = written.reduce((a, b) => a + b, 0);
  const result = {
    seed,
    minutes,
    warmupMinutes,
    guests,
    bytesPerSecPerGuest: bytesPerSec,
    lineBytes,
    viewers: viewerCount,
    viewerGuests,
    replacePerChurn: replace,
    churnMs,
    spareTokensPerChurn: spareTokens,
    cycleMs,
    redis: redis !== null,
    ...counts,
    rssAtWarmupMiB: atWarmup,
    rssFirstAfterWarmupMiB: after[0] ? after[0].rss / MiB : Number.NaN,
    rssLastMiB: samples.at(-1).rss / MiB,
    rssSlopeMiBPerHour: fit.slope,
    rssSlopePercentPerHour: (fit.slope / atWarmup) * 100,
    heapSlopeMiBPerHour: heapFit.slope,
    slopesByWarmup,
    writtenLines,
    checkedLines: total('lines'),
    missingLines: total('missing'),
    tornLines: total('torn'),
    markers: total('markers'),
    uncheckedBytes: total('unchecked'),
    samples,
  };
  const f1 = (x) => (Number.isFinite(x) ? x.toFixed(1) : 'n/a');
  report(
    'soak',
    `Soak (seed ${seed}): ${guests} guests at ${values.baud} baud, replication ${redis ? 'on' : 'off'}, ` +
      `${viewerCount} read-only viewers on ${viewerGuests} guests (${replace} replaced every ${churnMs / 1000} s), ` +
      `${spareTokens} spare tokens per churn, one attach/detach every ${cycleMs / 1000} s; ` +
      `${minutes} min, slope fitted after ${warmupMinutes} min\n\n${markdownTable(
        [
          'RSS at warm-up (MiB)',
          'RSS at end (MiB)',
          'RSS slope (MiB/h)',
          'RSS slope (%/h)',
          'heap slope (MiB/h)',
          'viewers replaced',
          'tokens issued',
          'attach/detach cycles',
          'lines checked',
          'missing',
          'torn',
        ],
        [
          [
            f1(result.rssAtWarmupMiB),
            f1(result.rssLastMiB),
            f1(result.rssSlopeMiBPerHour),
            f1(result.rssSlopePercentPerHour),
            f1(result.heapSlopeMiBPerHour),
            String(counts.viewersReplaced),
            String(counts.tokens),
            String(counts.cycles),
            String(result.checkedLines),
            String(result.missingLines),
            String(result.tornLines),
          ],
        ],
      )}\n\nRSS slope with other warm-ups: ${slopesByWarmup
        .map((w) => `after ${w.warmupMinutes} min ${f1(w.mibPerHour)} MiB/h (${f1(w.percentPerHour)} %/h)`)
        .join('; ')}`,
    result,
  );
  process.exit(0);
}

if (isMainThread) await main();
