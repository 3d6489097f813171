/**
 * Real `redis-server` processes for tests: each on a free port in
 * its own temp dir, never the Redis that may already run on 6379. Every process is
 * its own process group, so killing the group also ends the children Redis forks
 * (AOF rewrite, replication sync); `stopAllRedis()` in `afterAll` and an exit hook
 * make sure nothing is left behind.
 */
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { Cluster, type ClusterOptions, Redis, type RedisOptions } from 'ioredis';
import { freePort } from './free-port.js';
import { waitFor } from './wait.js';

const execFileAsync = promisify(execFile);

const HOST = '127.0.0.1';
const READY_TIMEOUT_MS = 15_000;
const STOP_TIMEOUT_MS = 5_000;
/** How many log lines of a server we keep to explain a failed start. */
const LOG_LINES_KEPT = 200;

/** ioredis options for test clients (the reply mapping stays the default, `legacy`). */
export type ClientOptions = Omit<RedisOptions, 'replyMapping'>;

/** ioredis Cluster options for test clients (default reply mapping). */
export type ClusterClientOptions = Omit<ClusterOptions, 'redisOptions'> & {
  redisOptions?: Omit<NonNullable<ClusterOptions['redisOptions']>, 'replyMapping'>;
};

export interface StartRedisOptions {
  /** `aof`: append-only file, so `restart()` and `kill()`+`restart()` keep acknowledged writes. @default 'none' */
  persistence?: 'none' | 'aof';
  /** Start as a replica of this server; resolves once the link is up and the first sync is done. */
  replicaOf?: { host: string; port: number };
  /** Extra `redis-server` arguments, appended last so they win. */
  args?: string[];
}

export interface RedisHandle {
  readonly host: string;
  readonly port: number;
  /** `redis://127.0.0.1:<port>` */
  readonly url: string;
  /** The server's working directory (AOF, nodes.conf, sentinel.conf live here). */
  readonly dir: string;
  /** True between a successful start and the process' exit. */
  readonly running: boolean;
  /** The server's process id while it runs. */
  readonly pid: number | undefined;
  /** A new ioredis client to this server, disconnected by `destroy()` and `stopAllRedis()`. */
  client(options?: ClientOptions): Redis;
  /** SIGTERM and wait: Redis shuts down cleanly (the AOF is flushed). */
  stop(): Promise<void>;
  /** SIGKILL the process group and wait: a crash. */
  kill(): Promise<void>;
  /** Start again on the same port and dir (stopping first if running). */
  restart(): Promise<void>;
  /** Start again on the same port and dir after `stop()` or `kill()`. */
  start(): Promise<void>;
  /** Stop, disconnect this handle's clients, remove the dir. */
  destroy(): Promise<void>;
}

export interface RedisClusterHandle {
  readonly nodes: RedisHandle[];
  readonly startupNodes: { host: string; port: number }[];
  /** A new ioredis Cluster client, disconnected by `destroy()` and `stopAllRedis()`. */
  client(options?: ClusterClientOptions): Cluster;
  destroy(): Promise<void>;
}

const live = new Set<RedisProcess>();
let exitHookInstalled = false;

/** Last resort if a test forgets `stopAllRedis()`: no redis-server outlives the worker. */
function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.once('exit', () => {
    for (const server of live) server.killSync();
  });
}

interface LaunchSpec {
  /** Arguments for one launch; called again on restart with the same port. */
  args: (port: number) => string[];
  ready: RegExp;
}

class RedisProcess implements RedisHandle {
  readonly host = HOST;
  readonly url: string;
  private child: ChildProcess | undefined;
  private readonly log: string[] = [];
  private readonly clients = new Set<Redis>();
  private readonly extraClients = new Set<{ disconnect(): void }>();

  constructor(
    readonly port: number,
    readonly dir: string,
    private readonly spec: LaunchSpec,
  ) {
    this.url = `redis://${HOST}:${port}`;
  }

  get running(): boolean {
    return this.child !== undefined && this.child.exitCode === null && this.child.signalCode === null;
  }

  get pid(): number | undefined {
    return this.child?.pid;
  }

  async start(): Promise<void> {
    installExitHook();
    const child = spawn('redis-server', this.spec.args(this.port), {
      cwd: this.dir,
      detached: true,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    this.child = child;
    live.add(this);
    child.once('exit', () => live.delete(this));
    let pending = '';
    let readyResolve: (() => void) | undefined;
    const ready = new Promise<void>((resolve) => {
      readyResolve = resolve;
    });
    const onData = (chunk: Buffer): void => {
      pending += chunk.toString('utf8');
      const lines = pending.split('\n');
      pending = lines.pop() ?? '';
      for (const line of lines) {
        this.log.push(line);
        if (this.log.length > LOG_LINES_KEPT) this.log.shift();
        if (this.spec.ready.test(line)) readyResolve?.();
      }
    };
    child.stdout?.on('data', onData);
    child.stderr?.on('data', onData);
    const exited = once(child, 'exit').then(([code, signal]) => {
      throw new Error(
        `redis-server on ${this.port} exited (${code ?? signal}) before ready:\n${this.logText()}`,
      );
    });
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () =>
          reject(
            new Error(`redis-server on ${this.port} not ready in ${READY_TIMEOUT_MS} ms:\n${this.logText()}`),
          ),
        READY_TIMEOUT_MS,
      );
    });
    try {
      await Promise.race([ready, exited, timeout]);
    } catch (err) {
      await this.kill();
      throw err;
    } finally {
      clearTimeout(timer);
      exited.catch(() => {});
    }
  }

  logText(): string {
    return this.log.join('\n');
  }

  client(options: ClientOptions = {}): Redis {
    const client = new Redis({ host: HOST, port: this.port, ...quietRetry, ...options });
    // Tests kill servers on purpose; the reconnect errors are expected, not failures.
    client.on('error', () => {});
    this.clients.add(client);
    client.once('end', () => this.clients.delete(client));
    return client;
  }

  /** Keeps a client built elsewhere (Sentinel-backed, Cluster) on this handle's cleanup list. */
  track(client: { disconnect(): void }): void {
    this.extraClients.add(client);
  }

  async stop(): Promise<void> {
    const child = this.child;
    if (!child || !this.running) return;
    const exited = once(child, 'exit');
    child.kill('SIGTERM');
    const timer = setTimeout(() => this.killSync(), STOP_TIMEOUT_MS);
    await exited;
    clearTimeout(timer);
    this.killGroup();
  }

  async kill(): Promise<void> {
    const child = this.child;
    if (!child || !this.running) {
      this.killGroup();
      return;
    }
    const exited = once(child, 'exit');
    this.killSync();
    await exited;
  }

  /** SIGKILL the whole process group, synchronously (usable in an exit hook). */
  killSync(): void {
    this.killGroup();
  }

  private killGroup(): void {
    const pid = this.child?.pid;
    if (pid === undefined) return;
    try {
      process.kill(-pid, 'SIGKILL');
    } catch {
      // ESRCH: the group is already gone.
    }
  }

  async restart(): Promise<void> {
    await this.stop();
    await this.start();
  }

  async destroy(): Promise<void> {
    for (const client of this.clients) client.disconnect();
    this.clients.clear();
    for (const client of this.extraClients) client.disconnect();
    this.extraClients.clear();
    await this.kill();
    await rm(this.dir, { recursive: true, force: true });
  }
}

/** Tests want a dead server noticed quickly and commands not queued for long. */
const quietRetry: ClientOptions = {
  retryStrategy: (attempt) => Math.min(attempt * 50, 500),
  maxRetriesPerRequest: 3,
};

const ALL_HANDLES = new Set<RedisProcess>();
const ALL_CLUSTERS = new Set<RedisClusterHandle>();

function isAddressInUse(err: unknown): boolean {
  return err instanceof Error && /Address already in use|bind: /i.test(err.message);
}

async function launchOnFreePort(dir: string, spec: LaunchSpec): Promise<RedisProcess> {
  // freePort() can race with another process taking the port: retry a few times.
  for (let attempt = 1; ; attempt++) {
    const server = new RedisProcess(await freePort(), dir, spec);
    try {
      await server.start();
      ALL_HANDLES.add(server);
      return server;
    } catch (err) {
      if (attempt >= 5 || !isAddressInUse(err)) {
        await rm(dir, { recursive: true, force: true });
        throw err;
      }
    }
  }
}

function baseArgs(port: number, dir: string, persistence: 'none' | 'aof'): string[] {
  return [
    '--port',
    String(port),
    '--bind',
    HOST,
    '--dir',
    dir,
    '--daemonize',
    'no',
    '--protected-mode',
    'no',
    '--save',
    '',
    '--appendonly',
    persistence === 'aof' ? 'yes' : 'no',
    // The AOF is written before the reply is sent, so a SIGKILL loses nothing
    // acknowledged; fsync only matters for a host crash, which tests do not do.
    '--appendfsync',
    'everysec',
    // A replica's first sync would otherwise wait 5 s for more replicas to join.
    '--repl-diskless-sync-delay',
    '0',
    '--logfile',
    '',
    '--loglevel',
    'notice',
  ];
}

/** Starts one `redis-server` on a free loopback port in a new temp dir. */
export async function startRedis(options: StartRedisOptions = {}): Promise<RedisHandle> {
  const dir = await mkdtemp(join(tmpdir(), 'consoled-redis-'));
  const persistence = options.persistence ?? 'none';
  const replicaOf = options.replicaOf;
  const server = await launchOnFreePort(dir, {
    args: (port) => [
      ...baseArgs(port, dir, persistence),
      ...(replicaOf ? ['--replicaof', replicaOf.host, String(replicaOf.port)] : []),
      ...(options.args ?? []),
    ],
    ready: /Ready to accept connections/,
  });
  if (replicaOf) await waitForReplicaLink(server);
  return server;
}

async function waitForReplicaLink(server: RedisHandle): Promise<void> {
  const client = server.client();
  try {
    await waitFor(`replica on ${server.port} to sync`, async () => {
      const info = await client.info('replication');
      return /master_link_status:up/.test(info) && /master_sync_in_progress:0/.test(info);
    });
  } finally {
    client.disconnect();
  }
}

/**
 * Starts `count` cluster-enabled primaries (no replicas), joins them with
 * `redis-cli --cluster create` and waits until every node reports `cluster_state:ok`.
 */
export async function startRedisCluster(count = 3): Promise<RedisClusterHandle> {
  const nodes: RedisProcess[] = [];
  try {
    for (let i = 0; i < count; i++) {
      const dir = await mkdtemp(join(tmpdir(), 'consoled-redis-cluster-'));
      // The bus port defaults to port + 10000, which may be taken or above 65535
      // for an ephemeral port; Redis 7 lets us pick it.
      const busPort = await freePort();
      nodes.push(
        await launchOnFreePort(dir, {
          args: (port) => [
            ...baseArgs(port, dir, 'none'),
            '--cluster-enabled',
            'yes',
            '--cluster-config-file',
            join(dir, 'nodes.conf'),
            '--cluster-node-timeout',
            '5000',
            '--cluster-port',
            String(busPort),
          ],
          ready: /Ready to accept connections/,
        }),
      );
    }
    await execFileAsync(
      'redis-cli',
      [
        '--cluster',
        'create',
        ...nodes.map((n) => `${HOST}:${n.port}`),
        '--cluster-replicas',
        '0',
        '--cluster-yes',
      ],
      { timeout: READY_TIMEOUT_MS },
    );
    const probes = nodes.map((n) => n.client());
    try {
      await waitFor('cluster_state:ok on every node', async () => {
        const infos = await Promise.all(probes.map((p) => p.cluster('INFO')));
        return infos.every(
          (info) => /cluster_state:ok/.test(info) && new RegExp(`cluster_known_nodes:${count}\\b`).test(info),
        );
      });
    } finally {
      for (const p of probes) p.disconnect();
    }
  } catch (err) {
    await Promise.all(nodes.map((n) => n.destroy()));
    throw err;
  }
  const startupNodes = nodes.map((n) => ({ host: HOST, port: n.port }));
  const clients = new Set<Cluster>();
  const handle: RedisClusterHandle = {
    nodes,
    startupNodes,
    client(options: ClusterClientOptions = {}): Cluster {
      const client = new Cluster(startupNodes, {
        clusterRetryStrategy: (attempt) => Math.min(attempt * 50, 500),
        ...options,
        redisOptions: { maxRetriesPerRequest: 3, ...options.redisOptions },
      });
      client.on('error', () => {});
      clients.add(client);
      return client;
    },
    async destroy(): Promise<void> {
      for (const c of clients) c.disconnect();
      clients.clear();
      await Promise.all(nodes.map((n) => n.destroy()));
      ALL_CLUSTERS.delete(handle);
    },
  };
  ALL_CLUSTERS.add(handle);
  return handle;
}

export interface SentinelHandle extends RedisHandle {
  readonly masterName: string;
  /** A Sentinel-backed ioredis client for the monitored master. */
  masterClient(options?: ClientOptions): Redis;
}

/** Starts one Sentinel (quorum 1, 1 s down-after) monitoring `master`. */
export async function startSentinel(master: RedisHandle, masterName = 'consoled'): Promise<SentinelHandle> {
  const dir = await mkdtemp(join(tmpdir(), 'consoled-sentinel-'));
  const conf = join(dir, 'sentinel.conf');
  // Sentinel rewrites this file with what it learns; a restart keeps that state.
  await writeFile(
    conf,
    [
      'daemonize no',
      'protected-mode no',
      `sentinel monitor ${masterName} ${HOST} ${master.port} 1`,
      `sentinel down-after-milliseconds ${masterName} 1000`,
      `sentinel failover-timeout ${masterName} 3000`,
      '',
    ].join('\n'),
  );
  const server = await launchOnFreePort(dir, {
    args: (port) => [conf, '--sentinel', '--port', String(port), '--bind', HOST, '--logfile', ''],
    ready: /\+monitor master/,
  });
  return Object.assign(server, {
    masterName,
    masterClient(options: ClientOptions = {}): Redis {
      const client = new Redis({
        sentinels: [{ host: HOST, port: server.port }],
        name: masterName,
        ...quietRetry,
        ...options,
      });
      client.on('error', () => {});
      server.track(client);
      return client;
    },
  });
}

/** Kills every server and cluster this worker started and removes their dirs. */
export async function stopAllRedis(): Promise<void> {
  await Promise.all([...ALL_CLUSTERS].map((c) => c.destroy()));
  await Promise.all([...ALL_HANDLES].map((h) => h.destroy()));
  ALL_HANDLES.clear();
}
