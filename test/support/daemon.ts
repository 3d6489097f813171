/**
 * The real daemon for black-box tests: the BUILT
 * `dist/sidecar/bin/consoled.js` started as a child process with a config this
 * module writes (JSON, which is YAML too) and a temp state dir, driven over HTTP.
 * Its stdout and stderr are kept so that a failure can say what the daemon logged.
 * Every process started here is killed by `stopAllDaemons()` (call it in `afterAll`)
 * or, failing that, when the test process exits.
 *
 * A handle follows an upgrade (docs/design.md "Upgrade"): the successor, a process
 * with a new pid that the daemon started, becomes the handle's process once the old
 * one says `upgraded` (its log line, or the answer of `handle.upgrade()`). The API's
 * address stays (the listener is inherited), and the successor writes to the same
 * stdout and stderr pipes (it inherits them), so `logs()` goes on. It is not this
 * process's child: `stop()` and `kill()` signal it by pid and wait until it is gone,
 * and its exit code is unknown (`stop()` answers null).
 *
 * `startInProcessDaemon` is the variant for tests that need the objects themselves
 * (`registry.get(id).write(...)`): `Daemon.start` from source in the test process.
 *
 * One file of about 900 lines on purpose: starting, signalling, following an upgrade
 * and reading the logs of a daemon process are one handle's state (its pid, pipes and
 * log lines), and every integration and e2e test imports it from here.
 */

import { type ChildProcess, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { existsSync, readFileSync } from 'node:fs';
import { chown, writeFile } from 'node:fs/promises';
import { createServer, type Server, type Socket } from 'node:net';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { silentLogger } from '../../common/logger.js';
import { validateConfig } from '../../sidecar/config.js';
import { Daemon } from '../../sidecar/daemon.js';
import type { UpgradeResult } from '../../sidecar/lifecycle/handover.js';
import { tmpDir } from './tmp.js';
import { waitFor } from './wait.js';

export const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
/** The build under test: `dist/`, or another one named by CONSOLED_TEST_DIST. */
export const DIST_DIR = process.env['CONSOLED_TEST_DIST'] ?? join(REPO_ROOT, 'dist');
export const CONSOLED_BIN = join(DIST_DIR, 'sidecar', 'bin', 'consoled.js');
export const CONSOLECTL_BIN = join(DIST_DIR, 'cli', 'consolectl.js');

const START_TIMEOUT_MS = 20_000;
const STOP_TIMEOUT_MS = 20_000;
const LOG_LINES_KEPT = Number(process.env.CONSOLED_TEST_LOG_LINES ?? 400);

type Json = Record<string, unknown>;

export interface DaemonOptions {
  /** Merged (deeply, objects only) over the base config; arrays replace. */
  config?: Json;
  /** The state directory; a fresh temp dir when absent. */
  stateDir?: string;
  /** Extra environment for the daemon. */
  env?: Record<string, string>;
  /**
   * Run the daemon as this user (the test runs as root): its state and config
   * directories are given to it first.
   */
  user?: { readonly uid: number; readonly gid: number };
}

export interface DaemonHandle {
  /** `http://127.0.0.1:<port>`; the port changes across restarts (the daemon binds port 0). */
  readonly url: string;
  readonly token: string;
  readonly stateDir: string;
  readonly configPath: string;
  /** The config as written to `configPath`. */
  readonly config: Json;
  /**
   * The process this handle last started (a new one after each restart). After an
   * upgrade the daemon is the successor: `pid` says which process that is.
   */
  readonly proc: ChildProcess;
  /** The daemon's current pid: the started process's, or its successor's after an upgrade. */
  readonly pid: number;
  readonly running: boolean;
  /** An admin call: `Authorization: Bearer <token>`, a JSON body when `body` is given. */
  api(method: string, path: string, body?: unknown, init?: RequestInit): Promise<Response>;
  /** `api` and then the JSON answer; throws with the daemon's log when the status is not `expectStatus`. */
  json<T = Json>(method: string, path: string, body?: unknown, expectStatus?: number | number[]): Promise<T>;
  /** What the daemon printed (the last few hundred lines of stdout and stderr). */
  logs(): string;
  /** Starts the process again (after `stop` or `kill`). */
  start(): Promise<void>;
  /** SIGTERM and wait for the exit; returns the exit code (null for a successor: not this process's child). */
  stop(): Promise<number | null>;
  /** SIGKILL and wait for the exit. */
  kill(): Promise<void>;
  /** `stop` (when running) then `start`. */
  restart(): Promise<void>;
  /** Replaces the config file (merging `patch` over the current config) for the next start. */
  reconfigure(patch: Json): Promise<void>;
  /**
   * `POST /v1/upgrade`; on success the handle follows the successor and this resolves
   * once the old process exited. Throws a `DaemonCallError` with the daemon's answer
   * otherwise (500 `UPGRADE_FAILED`: the old process goes on serving).
   */
  upgrade(): Promise<UpgradeAnswer>;
  /** Sends `signal` to the daemon's current process (`SIGHUP` reloads, `SIGUSR2` upgrades). */
  signal(signal: NodeJS.Signals): void;
}

/** The answer of `POST /v1/upgrade`. */
export type UpgradeAnswer = UpgradeResult;

/** A call the daemon answered with an unexpected status: the status and its error code. */
export class DaemonCallError extends Error {
  constructor(
    readonly status: number,
    readonly code: string | null,
    message: string,
  ) {
    super(message);
  }
}

/**
 * Whether `pid` is a live process. A successor outlives its parent and is reparented,
 * so once it exits it may stay a zombie for a while: that counts as gone.
 */
export function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return false;
  }
}

const live = new Set<ChildProcess>();
/** Successors the handles follow (not children of this process). */
const liveSuccessors = new Set<number>();
const handles = new Set<DaemonHandle>();

function killLive(): void {
  for (const proc of live) {
    try {
      proc.kill('SIGKILL');
    } catch {
      // already gone
    }
  }
  for (const pid of liveSuccessors) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
}
process.once('exit', killLive);
// A worker ended by a signal (a run interrupted or timed out) runs no `exit` hook:
// take the children along, then let the signal do what it would have done.
for (const signal of ['SIGTERM', 'SIGINT', 'SIGHUP'] as const) {
  process.once(signal, () => {
    killLive();
    process.kill(process.pid, signal);
  });
}

function isObject(v: unknown): v is Json {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Deep merge of plain objects; arrays and scalars in `patch` replace. */
export function mergeConfig(base: Json, patch: Json): Json {
  const out: Json = { ...base };
  for (const [k, v] of Object.entries(patch)) {
    const b = out[k];
    out[k] = isObject(b) && isObject(v) ? mergeConfig(b, v) : v;
  }
  return out;
}

export function baseConfig(stateDir: string, token: string): Json {
  return {
    hostId: 'test-host',
    stateDir,
    listen: { host: '127.0.0.1', port: 0 },
    adminToken: token,
    defaults: { reconnect: { initialDelayMs: 20, maxDelayMs: 200 } },
  };
}

function assertBuilt(): void {
  if (!existsSync(CONSOLED_BIN)) throw new Error(`${CONSOLED_BIN} is missing: run npm run build first`);
}

/** Starts the built daemon and waits until `/healthz` answers. */
export async function startDaemon(options: DaemonOptions = {}): Promise<DaemonHandle> {
  assertBuilt();
  const stateDir = options.stateDir ?? tmpDir('state');
  const token = randomBytes(24).toString('hex');
  const configPath = join(tmpDir('conf'), 'consoled.json');
  let config = mergeConfig(baseConfig(stateDir, token), options.config ?? {});
  const lines: string[] = [];
  let proc: ChildProcess | null = null;
  let exited: Promise<void> = Promise.resolve();
  /** The successor the daemon handed over to (after an upgrade), else null. */
  let successor: number | null = null;
  let url = '';

  const currentPid = (): number | null => successor ?? proc?.pid ?? null;
  /** The daemon said it handed over from `fromPid` to `toPid`: follow when it was ours. */
  const follow = (fromPid: number, toPid: number) => {
    if (fromPid !== currentPid() || toPid === fromPid) return;
    if (successor !== null) liveSuccessors.delete(successor);
    successor = toPid;
    liveSuccessors.add(toPid);
  };
  // pino's `upgraded` lines: the old process's names `toPid`, the successor's its own `pid`.
  const followLine = (line: string) => {
    if (!line.includes('"upgraded"')) return;
    try {
      const parsed = JSON.parse(line) as { msg?: string; fromPid?: number; toPid?: number; pid?: number };
      const to = parsed.toPid ?? parsed.pid;
      if (parsed.msg === 'upgraded' && parsed.fromPid !== undefined && to !== undefined)
        follow(parsed.fromPid, to);
    } catch {
      // not a whole JSON line
    }
  };
  /** Waits until `pid` (a successor, or the old process after an upgrade) is gone. */
  const gone = async (pid: number, timeoutMs: number) => {
    if (pid === proc?.pid) {
      const timer = setTimeout(() => proc?.kill('SIGKILL'), timeoutMs);
      await exited;
      clearTimeout(timer);
      return;
    }
    await waitFor(`process ${pid} to exit`, () => !pidAlive(pid), { timeoutMs, intervalMs: 20 }).catch(
      async () => {
        process.kill(pid, 'SIGKILL');
        await waitFor(`process ${pid} to die`, () => !pidAlive(pid), { timeoutMs: 5_000, intervalMs: 20 });
      },
    );
    liveSuccessors.delete(pid);
  };

  // A line can arrive in two chunks: the part after the last newline waits for the rest.
  const keep = (stream: string) => {
    let partial = '';
    return (chunk: Buffer) => {
      const parts = (partial + chunk.toString('utf8')).split('\n');
      partial = parts.pop() ?? '';
      for (const line of parts) {
        if (line.length === 0) continue;
        if (stream === 'out') followLine(line);
        lines.push(`${stream}: ${line}`);
        if (lines.length > LOG_LINES_KEPT) lines.shift();
      }
    };
  };

  const writeConfig = async () => {
    await writeFile(configPath, JSON.stringify(config, null, 2));
    const { user } = options;
    if (user) {
      for (const path of [stateDir, dirname(configPath), configPath]) await chown(path, user.uid, user.gid);
    }
  };

  const handle: DaemonHandle = {
    get url() {
      return url;
    },
    token,
    stateDir,
    configPath,
    get config() {
      return config;
    },
    get proc() {
      if (!proc) throw new Error('daemon never started');
      return proc;
    },
    get pid() {
      const pid = currentPid();
      if (pid === null) throw new Error('daemon never started');
      return pid;
    },
    get running() {
      if (successor !== null) return pidAlive(successor);
      return proc !== null && proc.exitCode === null && proc.signalCode === null;
    },
    api(method, path, body, init = {}) {
      const headers: Record<string, string> = { authorization: `Bearer ${token}` };
      if (body !== undefined) headers['content-type'] = 'application/json';
      return fetch(`${url}${path}`, {
        method,
        ...init,
        headers: { ...headers, ...((init.headers as Record<string, string> | undefined) ?? {}) },
        ...(body !== undefined ? { body: typeof body === 'string' ? body : JSON.stringify(body) } : {}),
      });
    },
    async json<T = Json>(
      method: string,
      path: string,
      body?: unknown,
      expectStatus: number | number[] = [200, 201],
    ): Promise<T> {
      const res = await handle.api(method, path, body);
      const text = await res.text();
      const ok = Array.isArray(expectStatus)
        ? expectStatus.includes(res.status)
        : res.status === expectStatus;
      if (!ok)
        throw new Error(`${method} ${path} -> ${res.status} ${text}\n--- daemon log ---\n${handle.logs()}`);
      return JSON.parse(text) as T;
    },
    logs() {
      return lines.join('\n');
    },
    async start() {
      if (handle.running) throw new Error('daemon already running');
      await writeConfig();
      url = '';
      successor = null;
      const child = spawn(process.execPath, [CONSOLED_BIN, '--config', configPath], {
        cwd: REPO_ROOT,
        env: { ...process.env, CONSOLED_LOG_LEVEL: 'info', ...options.env },
        stdio: ['ignore', 'pipe', 'pipe'],
        ...(options.user ? { uid: options.user.uid, gid: options.user.gid } : {}),
      });
      proc = child;
      live.add(child);
      exited = once(child, 'exit').then(() => {
        live.delete(child);
      });
      const keepOut = keep('out');
      child.stdout.on('data', (chunk: Buffer) => {
        keepOut(chunk);
        if (url) return;
        // pino's line: {"msg":"consoled listening","url":"http://127.0.0.1:PORT",...}
        for (const line of chunk.toString('utf8').split('\n')) {
          if (!line.includes('consoled listening')) continue;
          try {
            const parsed = JSON.parse(line) as { url?: string };
            if (parsed.url) url = parsed.url;
          } catch {
            // a partial line; the next chunk will do
          }
        }
      });
      child.stderr.on('data', keep('err'));
      try {
        // A probe that throws counts as "not yet" to waitFor: an exit ends the wait by value.
        const outcome = await waitFor(
          'the daemon to listen',
          () => (child.exitCode !== null || child.signalCode !== null ? 'exited' : url !== '' && 'listening'),
          { timeoutMs: START_TIMEOUT_MS },
        );
        if (outcome === 'exited') {
          await exited;
          throw new Error(`daemon exited (${child.exitCode ?? child.signalCode}) before listening`);
        }
        await waitFor(
          'GET /healthz to answer 200',
          async () => (await fetch(`${url}/healthz`)).status === 200,
          {
            timeoutMs: START_TIMEOUT_MS,
          },
        );
      } catch (err) {
        child.kill('SIGKILL');
        await exited;
        throw new Error(`${(err as Error).message}\n--- daemon log ---\n${handle.logs()}`);
      }
    },
    async stop() {
      const child = proc;
      if (successor !== null) {
        const pid = successor;
        if (pidAlive(pid)) process.kill(pid, 'SIGTERM');
        await Promise.all([gone(pid, STOP_TIMEOUT_MS), exited]);
        return null;
      }
      if (!child || !handle.running) return child?.exitCode ?? null;
      child.kill('SIGTERM');
      await gone(child.pid!, STOP_TIMEOUT_MS);
      return child.exitCode;
    },
    async kill() {
      const child = proc;
      if (successor !== null) {
        const pid = successor;
        if (pidAlive(pid)) process.kill(pid, 'SIGKILL');
        await Promise.all([gone(pid, STOP_TIMEOUT_MS), exited]);
        return;
      }
      if (!child || !handle.running) return;
      child.kill('SIGKILL');
      await exited;
    },
    async restart() {
      await handle.stop();
      await handle.start();
    },
    async reconfigure(patch) {
      config = mergeConfig(config, patch);
      await writeConfig();
    },
    async upgrade() {
      const res = await handle.api('POST', '/v1/upgrade');
      const text = await res.text();
      if (res.status !== 200) {
        let code: string | null = null;
        try {
          code = (JSON.parse(text) as { error?: { code?: string } }).error?.code ?? null;
        } catch {
          // not JSON
        }
        throw new DaemonCallError(res.status, code, `POST /v1/upgrade -> ${res.status} ${text}`);
      }
      const answer = JSON.parse(text) as UpgradeAnswer;
      follow(answer.fromPid, answer.toPid);
      // The old process answers, then exits: wait for that, so `running` speaks of the successor.
      if (pidAlive(answer.fromPid)) await gone(answer.fromPid, STOP_TIMEOUT_MS);
      return answer;
    },
    signal(signal) {
      process.kill(handle.pid, signal);
    },
  };
  handles.add(handle);
  await handle.start();
  return handle;
}

/**
 * Runs the built daemon with `config` as it is (not merged over the base config)
 * until it exits by itself, for tests of a refused start: the exit code and stderr.
 */
export async function runDaemonToExit(
  config: Json,
  timeoutMs = START_TIMEOUT_MS,
): Promise<{ code: number | null; stderr: string }> {
  assertBuilt();
  const configPath = join(tmpDir('conf'), 'consoled.json');
  await writeFile(configPath, JSON.stringify(config));
  const child = spawn(process.execPath, [CONSOLED_BIN, '--config', configPath], {
    cwd: REPO_ROOT,
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  live.add(child);
  let stderr = '';
  child.stderr.on('data', (c: Buffer) => {
    stderr += c.toString('utf8');
  });
  const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
  await once(child, 'exit');
  clearTimeout(timer);
  live.delete(child);
  return { code: child.exitCode, stderr };
}

/** Kills every daemon this file started (SIGKILL, then waits for the exits). */
export async function stopAllDaemons(): Promise<void> {
  await Promise.all([...handles].map((h) => h.kill()));
  handles.clear();
}

/** The result of one consolectl run. */
export interface CliResult {
  readonly code: number | null;
  readonly stdout: Buffer;
  readonly stderr: string;
}

/**
 * Runs the built `consolectl` against a daemon. With `untilStdoutBytes`, the process
 * is ended (SIGTERM) once that many bytes came out (for `-f`, which never ends by itself).
 */
export async function runConsolectl(
  daemon: Pick<DaemonHandle, 'url' | 'token'>,
  args: string[],
  options: { untilStdoutBytes?: number; until?: (stdout: Buffer) => boolean; timeoutMs?: number } = {},
): Promise<CliResult> {
  assertBuilt();
  const child = spawn(
    process.execPath,
    [CONSOLECTL_BIN, '--url', daemon.url, '--token', daemon.token, ...args],
    {
      cwd: REPO_ROOT,
      stdio: ['ignore', 'pipe', 'pipe'],
    },
  );
  live.add(child);
  const out: Buffer[] = [];
  let outBytes = 0;
  let err = '';
  const exited = once(child, 'exit');
  const until =
    options.until ??
    (options.untilStdoutBytes !== undefined ? () => outBytes >= options.untilStdoutBytes! : null);
  child.stdout.on('data', (chunk: Buffer) => {
    out.push(chunk);
    outBytes += chunk.length;
    if (until?.(Buffer.concat(out))) child.kill('SIGTERM');
  });
  child.stderr.on('data', (chunk: Buffer) => {
    err += chunk.toString('utf8');
  });
  const timer = setTimeout(() => child.kill('SIGKILL'), options.timeoutMs ?? 20_000);
  try {
    await exited;
  } finally {
    clearTimeout(timer);
    live.delete(child);
  }
  return { code: child.exitCode, stdout: Buffer.concat(out), stderr: err };
}

/** An in-process daemon (from source), for tests that need the guest objects. */
export interface InProcessDaemon {
  readonly daemon: Daemon;
  readonly url: string;
  readonly token: string;
  readonly stateDir: string;
  api(method: string, path: string, body?: unknown): Promise<Response>;
  stop(): Promise<void>;
}

const inProcess = new Set<InProcessDaemon>();

export async function startInProcessDaemon(
  options: { config?: Json; stateDir?: string } = {},
): Promise<InProcessDaemon> {
  const stateDir = options.stateDir ?? tmpDir('state');
  const token = randomBytes(24).toString('hex');
  const config = validateConfig(mergeConfig(baseConfig(stateDir, token), options.config ?? {}), 'test');
  const daemon = await Daemon.start(config, silentLogger());
  const handle: InProcessDaemon = {
    daemon,
    url: daemon.url,
    token,
    stateDir,
    api(method, path, body) {
      return fetch(`${daemon.url}${path}`, {
        method,
        headers: {
          authorization: `Bearer ${token}`,
          ...(body !== undefined ? { 'content-type': 'application/json' } : {}),
        },
        ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
      });
    },
    async stop() {
      inProcess.delete(handle);
      await daemon.stop('test teardown');
    },
  };
  inProcess.add(handle);
  return handle;
}

export async function stopAllInProcessDaemons(): Promise<void> {
  await Promise.all([...inProcess].map((d) => d.stop()));
}

/** A log read through the API: the bytes and the two offset headers. */
export interface LogRead {
  readonly status: number;
  readonly bytes: Buffer;
  readonly start: number;
  readonly next: number;
}

export async function readLog(
  daemon: Pick<DaemonHandle, 'api'> | Pick<InProcessDaemon, 'api'>,
  id: string,
  query: Record<string, string | number> = {},
): Promise<LogRead> {
  const q = new URLSearchParams(Object.entries(query).map(([k, v]): [string, string] => [k, String(v)]));
  const res = await daemon.api('GET', `/v1/guests/${encodeURIComponent(id)}/log${q.size ? `?${q}` : ''}`);
  const bytes = Buffer.from(await res.arrayBuffer());
  if (res.status !== 200) throw new Error(`GET log of ${id} -> ${res.status} ${bytes.toString('utf8')}`);
  return {
    status: res.status,
    bytes,
    start: Number(res.headers.get('x-consoled-start')),
    next: Number(res.headers.get('x-consoled-next')),
  };
}

/** The whole log still kept (`start=0` is clamped to the oldest byte). */
export function readWholeLog(
  daemon: Pick<DaemonHandle, 'api'> | Pick<InProcessDaemon, 'api'>,
  id: string,
): Promise<LogRead> {
  return readLog(daemon, id, { start: 0 });
}

// Guest-side peers ------------------------------------------------------------
// What stands for QEMU in these tests: a real socket server (`-chardev
// socket,server=on`) and a writer of a recognisable counter pattern whose
// integrity can be checked byte by byte in the log.

export type PeerTarget = { readonly host?: string; readonly port?: number } | { readonly path: string };

/**
 * A chardev served like QEMU's `server=on`: accepts consoled's connections, keeps the
 * bytes consoled writes toward the guest, and can go away and come back on the same
 * address (a new QEMU process).
 */
export class SocketPeer {
  private server: Server | null = null;
  private readonly sockets = new Set<Socket>();
  private readonly chunks: Buffer[] = [];
  /** Connections accepted so far. */
  connections = 0;
  current: Socket | null = null;
  /** Called for each accepted connection (after `current` is set). */
  onConnection: ((socket: Socket) => void) | null = null;
  /** The flood writing to this peer's connections, stopped when the peer closes. */
  flood: { stop(): void } | null = null;
  private bound: { host: string; port: number } | { path: string } | null = null;

  private constructor(private readonly target: PeerTarget) {}

  static async listen(target: PeerTarget = {}): Promise<SocketPeer> {
    const peer = new SocketPeer(target);
    await peer.open();
    peers.add(peer);
    return peer;
  }

  get port(): number {
    if (!this.bound || !('port' in this.bound)) throw new Error('not a TCP peer');
    return this.bound.port;
  }

  /** The bytes consoled sent toward the guest (keystrokes), over all connections. */
  get received(): Buffer {
    return Buffer.concat(this.chunks);
  }

  get listening(): boolean {
    return this.server !== null;
  }

  /** Listens (again) on the same address. */
  async open(): Promise<void> {
    if (this.server) return;
    const server = createServer((socket) => {
      this.connections++;
      this.sockets.add(socket);
      this.current = socket;
      socket.on('data', (chunk: Buffer) => this.chunks.push(chunk));
      socket.on('error', () => undefined); // ECONNRESET when consoled is killed
      socket.on('close', () => {
        this.sockets.delete(socket);
        if (this.current === socket) this.current = null;
      });
      this.onConnection?.(socket);
    });
    const listenOn =
      'path' in this.target
        ? { path: this.target.path }
        : {
            host: this.target.host ?? '127.0.0.1',
            port: this.bound && 'port' in this.bound ? this.bound.port : (this.target.port ?? 0),
          };
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(listenOn, () => {
        server.off('error', reject);
        resolve();
      });
    });
    const address = server.address();
    this.bound =
      typeof address === 'object' && address
        ? { host: address.address, port: address.port }
        : { path: String(address) };
    this.server = server;
  }

  /** Writes to the current connection; throws when there is none. */
  send(bytes: Buffer | string): void {
    if (!this.current) throw new Error('no connection from consoled');
    this.current.write(bytes);
  }

  /** Waits until `n` connections were accepted in all and one is open now. */
  waitForConnections(n: number, timeoutMs = 15_000): Promise<Socket> {
    return waitFor(
      `connection #${n} to the peer`,
      () => (this.connections >= n && this.current) || undefined,
      { timeoutMs },
    );
  }

  /** The guest side goes away: stop listening and close every connection (FIN). */
  async close(): Promise<void> {
    const server = this.server;
    this.server = null;
    // Only the connections open now: a reopen may accept new ones before these are gone.
    const open = [...this.sockets];
    for (const s of open) s.end();
    const closing = open.map((s) =>
      s.destroyed ? Promise.resolve() : once(s, 'close').then(() => undefined),
    );
    const timer = setTimeout(() => {
      for (const s of open) s.destroy();
    }, 500);
    if (server) await new Promise<void>((resolve) => server.close(() => resolve()));
    await Promise.all(closing);
    clearTimeout(timer);
  }
}

const peers = new Set<SocketPeer>();

/** Closes every peer this file started (stopping their floods first). */
export async function closeAllPeers(): Promise<void> {
  for (const p of peers) p.flood?.stop();
  await Promise.all([...peers].map((p) => p.close()));
  peers.clear();
}

/**
 * One line of the counter pattern: `L<10 digits>:<20 × (n mod 10)>\n`, 33 bytes, so
 * that a torn, shifted, repeated or corrupted line is recognisable.
 */
/** A capture gap marker's text (common/marker.ts) as the local log writes it: group 1 is the count. */
export const CAPTURE_GAP_MARKER = /^capture gap: (\d+) bytes lost \((disk-error|queue-overflow)\)$/;

export function counterLine(n: number): string {
  return `L${String(n).padStart(10, '0')}:${String(n % 10).repeat(20)}\n`;
}
export const COUNTER_LINE_BYTES = counterLine(0).length;

/**
 * Writes counter lines to every connection the peer accepts, each connection starting
 * on a fresh line with the next number: as fast as the socket takes them (honouring
 * backpressure), or paced at `bytesPerSec`. `linesPerConnection` bounds each
 * connection's burst; `stop()` ends the writing but keeps the connection.
 */
export class CounterFlood {
  /** The number of the next line to write. */
  next = 0;
  /** Bytes handed to sockets. */
  sentBytes = 0;
  /** Bursts written to the end (`linesPerConnection` reached). */
  burstsDone = 0;
  /** Whether the newest connection's burst was written to the end. */
  latestBurstDone = false;
  private generation = 0;
  private running = true;
  private readonly timers = new Set<NodeJS.Timeout>();
  private readonly batchLines: number;
  private readonly linesPerConnection: number;
  private readonly bytesPerSec: number;

  constructor(
    peer: SocketPeer,
    options: { batchLines?: number; linesPerConnection?: number; bytesPerSec?: number } = {},
  ) {
    this.batchLines = options.batchLines ?? 64;
    this.linesPerConnection = options.linesPerConnection ?? Number.POSITIVE_INFINITY;
    this.bytesPerSec = options.bytesPerSec ?? 0;
    peer.onConnection = (socket) => this.pump(socket);
    peer.flood = this;
    if (peer.current) this.pump(peer.current);
  }

  private batch(upTo: number): string {
    let batch = '';
    for (; this.next < upTo; this.next++) batch += counterLine(this.next);
    this.sentBytes += batch.length;
    return batch;
  }

  private pump(socket: Socket): void {
    const stopAt = this.next + this.linesPerConnection;
    const generation = ++this.generation;
    this.latestBurstDone = false;
    const usable = () => this.running && !socket.destroyed && socket.writable && this.next < stopAt;
    const finished = () => {
      if (this.next < stopAt) return;
      this.burstsDone++;
      if (generation === this.generation) this.latestBurstDone = true;
    };
    if (this.bytesPerSec > 0) {
      const tickMs = 10;
      const linesPerTick = Math.max(1, Math.round((this.bytesPerSec * tickMs) / 1000 / COUNTER_LINE_BYTES));
      const timer = setInterval(() => {
        if (!usable()) {
          clearInterval(timer);
          this.timers.delete(timer);
          finished();
          return;
        }
        if (socket.writableLength > 1024 * 1024) return; // the reader is behind: skip a tick
        socket.write(this.batch(Math.min(this.next + linesPerTick, stopAt)));
      }, tickMs);
      this.timers.add(timer);
      return;
    }
    const write = () => {
      while (usable()) {
        if (!socket.write(this.batch(Math.min(this.next + this.batchLines, stopAt)))) {
          socket.once('drain', write);
          return;
        }
      }
      finished();
    };
    write();
  }

  stop(): void {
    this.running = false;
    for (const t of this.timers) clearInterval(t);
    this.timers.clear();
  }
}

/** What `checkCounterLog` found. */
export interface CounterLogReport {
  /** The numbers of the whole counter lines, in log order. */
  readonly lines: number[];
  /** The markers, in order, without their frame: `boot 1 started at …`. */
  readonly markers: string[];
  /** Places where the numbering jumps (always right after a marker). */
  readonly jumps: Array<{ after: number; to: number; marker: string }>;
}

const LINE_RE = /^L(\d{10}):(\d{20})$/;
const FRAMED_MARKER = /(\r\n\[consoled\] [^\r\n]*\r\n)/;

/**
 * Checks a log made of counter lines and markers: every line is a whole counter line,
 * a marker, a prefix of a line cut where a marker (or the end of the log) follows, or
 * the rest of such a line just after a marker. Numbers strictly increase; without a
 * marker between them, consecutive whole lines differ by exactly one. Throws on the
 * first violation, naming the byte offset (within `log`).
 */
export function checkCounterLog(log: Buffer): CounterLogReport {
  const parts = log.toString('latin1').split(FRAMED_MARKER);
  const lines: number[] = [];
  const markers: string[] = [];
  const jumps: Array<{ after: number; to: number; marker: string }> = [];
  let lastMarker = '';
  let markerSinceLine = false;
  let suffix: string | null = null; // the rest of a cut line, verified against the next whole line
  let pos = 0;
  const fail = (what: string, at: number): never => {
    throw new Error(`${what} at byte ${at} of the log`);
  };
  for (let i = 0; i < parts.length; i++) {
    const part = parts[i]!;
    const partStart = pos;
    pos += part.length;
    if (i % 2 === 1) {
      lastMarker = part.slice('\r\n[consoled] '.length, -2);
      markers.push(lastMarker);
      markerSinceLine = true;
      continue;
    }
    const pieces = part.split('\n');
    const tail = pieces.pop()!; // no newline after it: a marker or the end of the log follows
    let at = partStart;
    for (let j = 0; j < pieces.length; j++) {
      const piece = pieces[j]!;
      const m = LINE_RE.exec(piece);
      if (!m) {
        if (j === 0 && i > 0) suffix = piece;
        else fail(`corrupt line ${JSON.stringify(piece.slice(0, 80))}`, at);
      } else {
        const n = Number(m[1]);
        if (m[2] !== String(n % 10).repeat(20)) fail(`corrupt line ${piece}`, at);
        if (suffix !== null) {
          if (!counterLine(n - 1).endsWith(`${suffix}\n`))
            fail(`${JSON.stringify(suffix)} is not the rest of line ${n - 1}`, at);
          suffix = null;
        }
        const prev = lines[lines.length - 1];
        if (prev !== undefined) {
          if (n <= prev) fail(`line ${n} after line ${prev} (repeated or out of order)`, at);
          if (n !== prev + 1) {
            if (!markerSinceLine) fail(`line ${n} follows line ${prev} with no marker between`, at);
            jumps.push({ after: prev, to: n, marker: lastMarker });
          }
        }
        lines.push(n);
        markerSinceLine = false;
      }
      at += piece.length + 1;
    }
    if (tail.length > 0) {
      const whole = pieces.length > 0 && LINE_RE.test(pieces[pieces.length - 1]!);
      const prev = lines[lines.length - 1];
      if (whole && prev !== undefined) {
        if (!counterLine(prev + 1).startsWith(tail))
          fail(`partial line ${JSON.stringify(tail.slice(0, 80))} is not the start of line ${prev + 1}`, at);
      } else if (!/^[L\d:]*$/.test(tail) || tail.length >= COUNTER_LINE_BYTES) {
        fail(`corrupt fragment ${JSON.stringify(tail.slice(0, 80))}`, at);
      }
    }
  }
  if (suffix !== null && !/^[L\d:]*$/.test(suffix))
    fail(`corrupt fragment ${JSON.stringify(suffix.slice(0, 80))}`, pos);
  return { lines, markers, jumps };
}
