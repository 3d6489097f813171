#!/usr/bin/env node
/**
 * Which system calls and /proc files the daemon uses, checked against the unit's
 * SystemCallFilter= and ProcSubset=pid (README "systemd"): systemd cannot run the unit
 * here (it is not PID 1), so the built daemon runs under strace instead, with a guest
 * of each source kind (tcp, unix-listen with a socket group, pty, exec), API calls, a
 * reload by POST /v1/reload and by SIGHUP, a runtime attach and detach, and a stop.
 *   npm run build && node scripts/unit-syscalls.mjs [UNIT]
 * Prints the calls the filter would refuse (EPERM) and /proc files outside
 * /proc/self and /proc/<pid>; exits 1 when there is any. Needs strace, socat and
 * systemd-analyze.
 */
import { execFileSync, spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, readFileSync, realpathSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const unitPath = process.argv[2] ?? join(ROOT, 'systemd', 'consoled.service');
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/**
 * /proc files outside ProcSubset=pid that are read with a fallback when hidden, each
 * checked by refusing the open under strace (README "systemd").
 */
const PROC_FALLBACKS = {
  '/proc/meminfo': "libuv's total memory: falls back to sysinfo(2), the same number (V8's heap limit unchanged)",
  '/proc/sys/vm/overcommit_memory': "glibc malloc's heap trimming: falls back to its default",
};

/** The calls of a `@group` (or one call), groups expanded. */
function expand(name, seen = new Set()) {
  if (!name.startsWith('@')) return new Set([name]);
  if (seen.has(name)) return new Set();
  seen.add(name);
  const out = execFileSync('systemd-analyze', ['syscall-filter', '--no-pager', name], { encoding: 'utf8' });
  const calls = new Set();
  for (const line of out.split('\n').slice(1)) {
    const item = line.trim();
    if (!item || item.startsWith('#')) continue;
    for (const c of expand(item, seen)) calls.add(c);
  }
  return calls;
}

/** The allow list the unit's SystemCallFilter= lines make, in order. */
function allowedCalls(unitText) {
  let allowed = null;
  for (const line of unitText.split('\n')) {
    const m = /^SystemCallFilter=(~?)(.*)$/.exec(line.trim());
    if (!m) continue;
    const names = m[2].split(/\s+/).filter(Boolean);
    if (allowed === null) {
      if (m[1]) throw new Error('a deny list first is not handled here');
      allowed = new Set();
    }
    for (const n of names) for (const c of expand(n)) m[1] ? allowed.delete(c) : allowed.add(c);
  }
  if (allowed === null) throw new Error(`${unitPath} has no SystemCallFilter=`);
  return allowed;
}

async function main() {
  const allowed = allowedCalls(readFileSync(unitPath, 'utf8'));
  const dir = mkdtempSync(join(tmpdir(), 'unit-syscalls-'));
  const stateDir = join(dir, 'state');
  execFileSync('mkdir', ['-m', '700', stateDir]);
  const children = [];
  try {
    // A guest on TCP that prints a line every 50 ms.
    const server = createServer((s) => {
      const t = setInterval(() => s.write(`tcp line ${Date.now()}\n`), 50);
      s.on('close', () => clearInterval(t));
      s.on('error', () => undefined);
    }).listen(0, '127.0.0.1');
    await once(server, 'listening');
    // A guest on a pty: socat holds the master and prints into it.
    const ptyLink = join(dir, 'pty');
    const socat = spawn('socat', [`PTY,link=${ptyLink},raw,echo=0`, 'SYSTEM:while :; do echo pty line; sleep 0.05; done'], {
      stdio: 'ignore',
    });
    children.push(socat);
    for (let i = 0; i < 400; i++) {
      try {
        realpathSync(ptyLink);
        break;
      } catch {
        await sleep(50);
      }
    }
    const token = 'x'.repeat(32);
    const config = {
      hostId: 'syscalls',
      stateDir,
      listen: { host: '127.0.0.1', port: 0 },
      adminToken: token,
      guests: [
        { id: 'tcp-guest', source: { type: 'tcp', host: '127.0.0.1', port: server.address().port } },
        { id: 'pty-guest', source: { type: 'pty', path: realpathSync(ptyLink) } },
        { id: 'exec-guest', source: { type: 'exec', command: ['/bin/sh', '-c', 'while :; do echo exec line; sleep 0.05; done'] } },
      ],
    };
    const configPath = join(dir, 'consoled.json');
    writeFileSync(configPath, JSON.stringify(config));
    const tracePath = join(dir, 'trace');
    const daemon = spawn(
      'strace',
      ['-f', '-qq', '-o', tracePath, process.execPath, join(ROOT, 'dist/sidecar/bin/consoled.js'), '--config', configPath],
      { stdio: ['ignore', 'pipe', 'inherit'] },
    );
    children.push(daemon);
    let url = '';
    daemon.stdout.on('data', (chunk) => {
      const m = /"msg":"consoled listening".*?"url":"([^"]+)"|"url":"([^"]+)".*?"msg":"consoled listening"/.exec(String(chunk));
      if (m) url = m[1] ?? m[2];
    });
    for (let i = 0; i < 600 && !url; i++) await sleep(50);
    if (!url) throw new Error('the daemon did not start');
    const api = async (method, path, body) => {
      const res = await fetch(`${url}${path}`, {
        method,
        headers: { authorization: `Bearer ${token}`, ...(body ? { 'content-type': 'application/json' } : {}) },
        ...(body ? { body: JSON.stringify(body) } : {}),
      });
      await res.arrayBuffer();
      return res.status;
    };
    await sleep(1500);
    const statuses = {
      guests: await api('GET', '/v1/guests'),
      log: await api('GET', '/v1/guests/tcp-guest/log?tail=10'),
      metrics: await api('GET', '/metrics'),
      attach: await api('PUT', '/v1/guests/listen-guest', {
        source: { type: 'unix-listen', path: join(dir, 'listen.sock'), socketGroup: Number(execFileSync('id', ['-g'], { encoding: 'utf8' })) },
      }),
      reload: await api('POST', '/v1/reload'),
    };
    // SIGHUP to the daemon (strace's child), then a detach, then the stop.
    const nodePid = Number(execFileSync('pgrep', ['-P', String(daemon.pid), '-n'], { encoding: 'utf8' }).trim());
    process.kill(nodePid, 'SIGHUP');
    await sleep(500);
    statuses.detach = await api('DELETE', '/v1/guests/listen-guest');
    process.kill(nodePid, 'SIGTERM');
    await once(daemon, 'exit');
    server.close();
    const trace = readFileSync(tracePath, 'utf8');
    const used = new Map();
    const procFiles = new Set();
    for (const line of trace.split('\n')) {
      const m = /^\d+\s+(?:<\.\.\. )?([a-z0-9_]+)[( ]/.exec(line);
      if (m) used.set(m[1], (used.get(m[1]) ?? 0) + 1);
      const p = /"(\/proc\/[^"]*)"/.exec(line);
      if (p && !/^\/proc\/(self|thread-self|\d+)(\/|$)/.test(p[1])) procFiles.add(p[1]);
    }
    const refused = [...used.keys()].filter((c) => !allowed.has(c) && c !== 'exit' && c !== 'resumed').sort();
    process.stdout.write(`API answers: ${JSON.stringify(statuses)}\n`);
    process.stdout.write(`system calls used: ${used.size}; allowed by ${unitPath}: ${allowed.size}\n`);
    process.stdout.write(`refused by SystemCallFilter= (EPERM): ${refused.length ? refused.join(' ') : 'none'}\n`);
    const unknownProc = [...procFiles].filter((p) => !(p in PROC_FALLBACKS)).sort();
    for (const p of [...procFiles].filter((p) => p in PROC_FALLBACKS).sort())
      process.stdout.write(`/proc file outside ProcSubset=pid, with a fallback: ${p} (${PROC_FALLBACKS[p]})\n`);
    process.stdout.write(`/proc files outside ProcSubset=pid without a known fallback: ${unknownProc.length ? unknownProc.join(' ') : 'none'}\n`);
    if (refused.length || unknownProc.length) process.exitCode = 1;
  } finally {
    for (const c of children) c.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((err) => {
  process.stderr.write(`${err.stack ?? err}\n`);
  process.exit(1);
});
