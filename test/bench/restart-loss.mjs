// What a restart and an upgrade cost a real QEMU guest (TCG) printing a numbered line
// every 20 ms on a `server=on,wait=off` TCP chardev (QEMU drops what that chardev emits
// while no client is connected; its `logfile=` keeps everything):
// - N plain restarts (SIGTERM, wait for the exit, start again): per restart, how long
//   the chardev was disconnected (from the old process' `chardevs closed` log line to the
//   new one's `connected`) and how many lines the capture lacks;
// - M upgrades (`POST /v1/upgrade`): wall time and lines lost.
// Medians, and the same restarts run against another build for comparison
// (`--baseline DIR`, e.g. the main checkout's dist/, which closes the chardev first).
//
//   node test/bench/restart-loss.mjs [--restarts N] [--upgrades M] [--baseline DIR]
//
// Needs a built dist/ and what the QEMU tests need (qemu-system-x86_64, a cloud kernel,
// busybox-static). It is a program, not a test: it prints a table and writes JSON.
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { runnerImport } from 'vite';
import { freePort, markdownTable, median, repoRoot, report, sleep, waitUntil } from './bench-lib.mjs';

const { values } = parseArgs({
  options: {
    restarts: { type: 'string', default: '5' },
    upgrades: { type: 'string', default: '3' },
    baseline: { type: 'string' },
  },
});
const RESTARTS = Number(values.restarts);
const UPGRADES = Number(values.upgrades);
const TOKEN = 'bench-admin-token-0123456789abcdef';
const GUEST = 'bench-restart';
const PRINT_MS = 1500; // the guest prints on between two restarts

const { module: qemuSupport } = await runnerImport(join(repoRoot, 'test/support/qemu-guest.ts'), {
  configFile: false,
  logLevel: 'error',
});
const available = qemuSupport.qemuAvailable();
if (!available.ok) {
  console.error(`restart-loss: skipped: ${available.reason}`);
  process.exit(0);
}

function alive(pid) {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** The counter numbers in a capture, and the runs missing between them. */
function gaps(text) {
  const numbers = [...text.matchAll(/counter (\d+)\r?\n/g)].map((m) => Number(m[1]));
  const missing = [];
  for (let i = 1; i < numbers.length; i++) {
    if (numbers[i] !== numbers[i - 1] + 1) missing.push(numbers[i] - numbers[i - 1] - 1);
  }
  return { numbers, missing };
}

/** One run: restarts (and upgrades) of the build in `dist` under one guest. */
async function run(dist, label, upgrades) {
  const stateDir = mkdtempSync(join(tmpdir(), 'consoled-restart-loss-'));
  const chardevPort = await freePort();
  const apiPort = await freePort();
  const logfile = join(stateDir, 'qemu-serial.log');
  const configPath = join(stateDir, 'config.json');
  writeFileSync(
    configPath,
    JSON.stringify({
      hostId: 'bench-host',
      stateDir: join(stateDir, 'state'),
      listen: { host: '127.0.0.1', port: apiPort },
      adminToken: TOKEN,
      defaults: {
        rateLimit: { bytesPerSec: 0, burstBytes: 1 },
        reconnect: { initialDelayMs: 20, maxDelayMs: 200 },
      },
      guests: [{ id: GUEST, source: { type: 'tcp', host: '127.0.0.1', port: chardevPort } }],
    }),
  );
  const url = `http://127.0.0.1:${apiPort}`;
  const lines = []; // [pid, parsed pino line]
  let current = null;
  const start = () => {
    const proc = spawn(process.execPath, [join(dist, 'sidecar/bin/consoled.js'), '--config', configPath], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, CONSOLED_LOG_LEVEL: 'info' },
    });
    let partial = '';
    proc.stdout.on('data', (chunk) => {
      const parts = (partial + chunk).split('\n');
      partial = parts.pop();
      for (const line of parts) {
        try {
          lines.push(JSON.parse(line));
        } catch {
          // not a log line
        }
      }
    });
    proc.stderr.on('data', (d) => process.stderr.write(d));
    current = proc.pid;
    return proc;
  };
  const api = (method, path) =>
    fetch(`${url}${path}`, { method, headers: { authorization: `Bearer ${TOKEN}` } });
  const status = async () => (await api('GET', `/v1/guests/${GUEST}`)).json();

  const guest = await qemuSupport.startQemuGuest({
    mode: 'counter',
    hz: 50,
    serial: { kind: 'tcp-server', port: chardevPort },
    logfile,
    paused: true,
  });
  const restarts = [];
  const upgradeRuns = [];
  try {
    start();
    await waitUntil('the guest connected', async () => (await status()).state === 'connected');
    await guest.qmp.execute('cont');
    await waitUntil('the guest printing', async () => (await status()).offset > 2000, 120_000);
    for (let i = 0; i < RESTARTS; i++) {
      await sleep(PRINT_MS);
      const pid = current;
      const stoppedAt = lines.length;
      process.kill(pid, 'SIGTERM');
      await waitUntil(`pid ${pid} to exit`, async () => !alive(pid));
      const t0 = performance.now();
      start();
      await waitUntil('the new process connected', async () => (await status()).state === 'connected');
      const wallMs = performance.now() - t0;
      // The old process closes the chardev at `chardevs closed` (this build) or when its
      // source stops (a build that closes it first); the new one connects when it dials
      // early (`chardevs connected early`) or when its source connects.
      const since = lines.slice(stoppedAt);
      const closed =
        since.find((l) => l.msg === 'chardevs closed') ??
        since.find((l) => l.msg === 'source connected -> stopped');
      const early = since.find((l) => l.msg === 'chardevs connected early' && l.chardevs > 0);
      const connected = since.find(
        (l) => l.msg === 'source connecting -> connected' || l.msg === 'source idle -> connected',
      );
      const connectedAt = early ? early.dialledAt : connected?.time;
      restarts.push({
        disconnectedMs: closed && connectedAt ? connectedAt - closed.time : null,
        // How long the new process took from its start to its early dial (node's own start included).
        processStartToDialMs: early ? early.doneAtMs : null,
        startToConnectedMs: Math.round(wallMs),
      });
    }
    for (let i = 0; i < upgrades; i++) {
      await sleep(PRINT_MS);
      const t0 = performance.now();
      const res = await api('POST', '/v1/upgrade');
      const body = await res.json();
      if (res.status !== 200) throw new Error(`upgrade: ${res.status} ${JSON.stringify(body)}`);
      upgradeRuns.push({ wallMs: Math.round(performance.now() - t0), daemonWallMs: body.wallMs });
      current = body.toPid;
      await waitUntil('the old process to exit', async () => !alive(body.fromPid));
    }
    await sleep(PRINT_MS);
    await guest.qmp.execute('stop');
    await waitUntil('the capture to settle', async () => {
      const s = await status();
      return s.offset === s.flushedOffset && s.disk.queuedBytes === 0;
    });
    await sleep(300);
  } finally {
    if (current && alive(current)) {
      process.kill(current, 'SIGTERM');
      await waitUntil('the daemon to exit', async () => !alive(current)).catch(() =>
        process.kill(current, 'SIGKILL'),
      );
    }
    await guest.kill();
  }
  const capture = readFileSync(join(stateDir, 'state/guests', GUEST, 'console.log'), 'latin1');
  const qemuLog = readFileSync(logfile, 'latin1');
  const { missing } = gaps(capture);
  const qemuGaps = gaps(qemuLog);
  if (qemuGaps.missing.length > 0) console.warn(`${label}: QEMU's own logfile has gaps: ${qemuGaps.missing}`);
  // Gaps appear in order: one per restart at most (a restart that lost nothing leaves none).
  const lost = [...missing];
  const restartLoss = restarts.map(() => 0);
  const boundaries = restartBoundaries(capture, restarts.length);
  for (let i = 0; i < boundaries.length; i++) restartLoss[i] = boundaries[i];
  const upgradeLoss = Math.max(0, lost.reduce((a, b) => a + b, 0) - restartLoss.reduce((a, b) => a + b, 0));
  return {
    label,
    restarts: restarts.map((r, i) => ({ ...r, linesLost: restartLoss[i] })),
    upgrades: upgradeRuns,
    upgradeLinesLost: upgradeLoss,
    markers: [...capture.matchAll(/\r\n\[consoled\] ([^\r\n]*)\r\n/g)].map((m) => m[1].replace(/ at .*/, '')),
  };
}

/**
 * Lines lost at each restart: the capture's `reattached` markers split it into the
 * restarts; the lines missing right before each marker were lost during that restart.
 */
function restartBoundaries(capture, count) {
  const parts = capture.split(/\r\n\[consoled\] reattached at [^\r\n]*\r\n/);
  const losses = [];
  for (let i = 1; i < parts.length && losses.length < count; i++) {
    const before = gaps(parts[i - 1]).numbers;
    const after = gaps(parts[i]).numbers;
    const last = before[before.length - 1];
    const first = after[0];
    losses.push(last !== undefined && first !== undefined ? Math.max(0, first - last - 1) : 0);
  }
  return losses;
}

function summarise(result) {
  const disconnected = result.restarts.map((r) => r.disconnectedMs).filter((v) => v !== null);
  return {
    restartDisconnectedMedianMs: disconnected.length ? median(disconnected) : null,
    restartLinesLostMedian: median(result.restarts.map((r) => r.linesLost)),
    restartLostMsMedian: median(result.restarts.map((r) => r.linesLost * 20)),
    upgradeWallMedianMs: result.upgrades.length ? median(result.upgrades.map((u) => u.wallMs)) : null,
    upgradeLinesLost: result.upgrades.length ? result.upgradeLinesLost : null,
  };
}

const runs = [await run(join(repoRoot, 'dist'), 'this build', UPGRADES)];
if (values.baseline) runs.push(await run(values.baseline, `baseline (${values.baseline})`, 0));

const rows = [];
for (const r of runs) {
  const s = summarise(r);
  rows.push([
    r.label,
    String(r.restarts.length),
    s.restartDisconnectedMedianMs === null ? 'n/a' : String(s.restartDisconnectedMedianMs),
    r.restarts.map((x) => x.disconnectedMs ?? 'n/a').join(' / '),
    String(s.restartLinesLostMedian),
    r.restarts.map((x) => x.linesLost).join(' / '),
    s.upgradeWallMedianMs === null ? '-' : String(s.upgradeWallMedianMs),
    s.upgradeLinesLost === null ? '-' : String(s.upgradeLinesLost),
  ]);
}
const table = markdownTable(
  [
    'build',
    'restarts',
    'disconnected ms (median)',
    'disconnected ms (each)',
    'lines lost (median, 20 ms each)',
    'lines lost (each)',
    'upgrade wall ms (median)',
    'upgrade lines lost',
  ],
  rows,
);
report('restart-loss', table, { runs, summaries: runs.map(summarise) });
