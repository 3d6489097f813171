// Shared plumbing for the benchmark programs: start the built daemon, read a
// process's CPU and memory from /proc, and summarise samples. Benchmarks are
// programs, not tests: they print a table and write JSON; they assert nothing.
import { spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, openSync, readFileSync, writeFileSync } from 'node:fs';
import { request } from 'node:http';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

export const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const CLOCK_TICKS = 100; // sysconf(_SC_CLK_TCK) on Linux x86_64

export async function freePort() {
  return new Promise((res, rej) => {
    const s = createServer();
    s.once('error', rej);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => res(port));
    });
  });
}

/** CPU seconds a process has used in user and in system mode, from /proc/<pid>/stat. */
export function cpuTimes(pid) {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return { user: Number(fields[11]) / CLOCK_TICKS, system: Number(fields[12]) / CLOCK_TICKS };
}

/** CPU seconds (user + system) a process has used. */
export function cpuSeconds(pid) {
  const { user, system } = cpuTimes(pid);
  return user + system;
}

/** Resident set size in bytes, from /proc/<pid>/status. */
export function rssBytes(pid) {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) * 1024 : 0;
}

export function median(values) {
  const s = [...values].sort((a, b) => a - b);
  if (s.length === 0) return Number.NaN;
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
}

export function percentile(values, p) {
  const s = [...values].sort((a, b) => a - b);
  if (s.length === 0) return Number.NaN;
  return s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)];
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Polls `probe` every 20 ms until it returns something truthy (a throw counts as not yet), and returns that. */
export async function waitUntil(what, probe, timeoutMs = 60_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe().catch(() => undefined);
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

/**
 * Starts `node dist/sidecar/bin/consoled.js` with a generated config in a temp state
 * directory. `overrides` is merged into the config; `nodeArgs` go to node before the
 * script (e.g. `--cpu-prof`, which NODE_OPTIONS does not take), as do the words of
 * BENCH_DAEMON_NODE_ARGS; BENCH_DAEMON_PREFIX is a command put before node (e.g. `strace -f -o …`);
 * BENCH_DAEMON_STDOUT is a file the daemon's stdout is appended to (e.g. with `--trace-gc`).
 */
export async function startDaemon(overrides = {}, { stateDir, nodeArgs = [] } = {}) {
  const dir = stateDir ?? mkdtempSync(join(tmpdir(), 'consoled-bench-'));
  const port = await freePort();
  const token = 'bench-admin-token-0123456789abcdef';
  const config = {
    stateDir: dir,
    listen: { host: '127.0.0.1', port },
    adminToken: token,
    defaults: { reconnect: { initialDelayMs: 50, maxDelayMs: 500 } },
    ...overrides,
  };
  const configPath = join(dir, 'bench-config.json');
  writeFileSync(configPath, JSON.stringify(config));
  const proc = spawn(
    'bash',
    [
      '-c',
      `ulimit -n 65536 2>/dev/null || true; exec ${process.env.BENCH_DAEMON_PREFIX ?? ''} "${process.execPath}" ${nodeArgs.map((a) => `'${a}'`).join(' ')} ${process.env.BENCH_DAEMON_NODE_ARGS ?? ''} dist/sidecar/bin/consoled.js --config "${configPath}"`,
    ],
    {
      cwd: repoRoot,
      stdio: [
        'ignore',
        process.env.BENCH_DAEMON_STDOUT ? openSync(process.env.BENCH_DAEMON_STDOUT, 'a') : 'ignore',
        'pipe',
      ],
      env: { ...process.env, CONSOLED_LOG_LEVEL: 'warn' },
    },
  );
  let stderr = '';
  proc.stderr.on('data', (d) => {
    stderr += d;
  });
  const url = `http://127.0.0.1:${port}`;
  for (let i = 0; ; i++) {
    try {
      const r = await fetch(`${url}/healthz`);
      if (r.ok) break;
    } catch {
      // not up yet
    }
    if (proc.exitCode !== null || i > 300) throw new Error(`daemon did not start: ${stderr}`);
    await sleep(50);
  }
  const api = async (method, path, body) => {
    const res = await fetch(`${url}${path}`, {
      method,
      headers: { authorization: `Bearer ${token}`, ...(body ? { 'content-type': 'application/json' } : {}) },
      ...(body ? { body: JSON.stringify(body) } : {}),
    });
    if (!res.ok) throw new Error(`${method} ${path}: ${res.status} ${await res.text()}`);
    return res;
  };
  const stop = async () => {
    if (proc.exitCode !== null) return;
    const exited = new Promise((r) => proc.once('exit', r));
    proc.kill('SIGTERM');
    await exited;
  };
  return { url, token, dir, proc, pid: proc.pid, api, stop };
}

/** Writes the results as JSON under test-artifacts/bench/ and prints the markdown table. */
export function report(name, table, data) {
  const outDir = join(repoRoot, 'test-artifacts', 'bench');
  mkdirSync(outDir, { recursive: true });
  writeFileSync(
    join(outDir, `${name}.json`),
    JSON.stringify({ name, at: new Date().toISOString(), ...data }, null, 2),
  );
  console.log(table);
}

export function markdownTable(header, rows) {
  const line = (cells) => `| ${cells.join(' | ')} |`;
  return [line(header), line(header.map(() => '---')), ...rows.map(line)].join('\n');
}

/**
 * A guest that floods: a TCP server (QEMU's `server=on` chardev stand-in) that writes
 * `totalBytes` to its first connection as fast as the reader takes them, then closes
 * it; later connections stay idle. `started` resolves with the time it accepted.
 */
export async function floodServer(totalBytes) {
  const block = Buffer.alloc(1024 * 1024);
  for (let i = 0; i < block.length; i++) block[i] = 32 + (i % 90);
  let connected;
  const started = new Promise((r) => {
    connected = r;
  });
  let flooded = false;
  const server = createServer((socket) => {
    socket.on('error', () => undefined);
    if (flooded) return;
    flooded = true;
    connected(performance.now());
    let sent = 0;
    const pump = () => {
      while (sent < totalBytes) {
        const n = Math.min(block.length, totalBytes - sent);
        sent += n;
        if (!socket.write(n === block.length ? block : block.subarray(0, n))) {
          socket.once('drain', pump);
          return;
        }
      }
      socket.end();
    };
    pump();
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  return { port: server.address().port, started, close: () => server.close() };
}

/**
 * GETs a guest's default log tail with the admin token over `agent` (keep-alive) and
 * times it: resolves `{ms, size, status, scope, start}`.
 */
export function timedTail(daemon, id, agent) {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const req = request(
      `${daemon.url}/v1/guests/${id}/log`,
      { agent, headers: { authorization: `Bearer ${daemon.token}` } },
      (res) => {
        let size = 0;
        res.on('data', (c) => {
          size += c.length;
        });
        res.on('end', () =>
          resolve({
            ms: performance.now() - t0,
            size,
            status: res.statusCode,
            scope: res.headers['x-consoled-scope'],
            start: Number(res.headers['x-consoled-start']),
          }),
        );
      },
    );
    req.on('error', reject);
    req.end();
  });
}

/**
 * Attaches one `tcp` guest per id (`ids[i]` to `ports[i]`), 50 at a time, and waits until
 * every one of them is connected.
 */
export async function attachTcpGuests(daemon, ids, ports) {
  for (let i = 0; i < ids.length; i += 50) {
    await Promise.all(
      ids.slice(i, i + 50).map((id, j) =>
        daemon.api('PUT', `/v1/guests/${id}`, {
          source: { type: 'tcp', host: '127.0.0.1', port: ports[i + j] },
        }),
      ),
    );
  }
  for (;;) {
    const list = await (await daemon.api('GET', '/v1/guests')).json();
    if (list.guests.filter((g) => g.state === 'connected').length >= ids.length) return;
    await sleep(100);
  }
}
