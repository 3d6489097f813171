/**
 * The Redis of the ownership fault test: a primary on a fixed port with an AOF
 * (fsync always) and a replica, both real `redis-server` processes, with the faults
 * the test injects: a restart that comes back empty, a SIGKILL and restart that
 * replays the AOF, a SIGSTOP for a while, and a failover to the replica (which may
 * have missed the last writes), after which the primary's port serves the replica's
 * data, as a Sentinel-managed address would.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import { copyFile, mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import { freePort } from '../support/free-port.js';
import { sleep, waitFor } from '../support/wait.js';

const HOST = '127.0.0.1';

class RedisProcess {
  private child: ChildProcess | null = null;
  private readonly log: string[] = [];

  constructor(
    readonly port: number,
    readonly dir: string,
  ) {}

  get running(): boolean {
    return this.child !== null && this.child.exitCode === null && this.child.signalCode === null;
  }

  get pid(): number {
    if (!this.child?.pid) throw new Error('redis-server is not running');
    return this.child.pid;
  }

  async start(args: string[]): Promise<void> {
    await mkdir(this.dir, { recursive: true });
    const child = spawn(
      'redis-server',
      [
        '--port',
        String(this.port),
        '--bind',
        HOST,
        '--dir',
        this.dir,
        '--save',
        '',
        '--protected-mode',
        'no',
        '--repl-diskless-sync-delay',
        '0',
        '--logfile',
        '',
        ...args,
      ],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    this.child = child;
    let resolveReady!: () => void;
    const ready = new Promise<void>((resolve) => {
      resolveReady = resolve;
    });
    const onData = (chunk: Buffer): void => {
      for (const line of chunk.toString('utf8').split('\n')) {
        if (line) this.log.push(line);
        if (/Ready to accept connections/.test(line)) resolveReady();
      }
      if (this.log.length > 200) this.log.splice(0, this.log.length - 200);
    };
    child.stdout?.on('data', onData);
    child.stderr?.on('data', onData);
    const exited = once(child, 'exit').then(() => {
      throw new Error(`redis-server on ${this.port} exited before ready:\n${this.log.join('\n')}`);
    });
    await Promise.race([ready, exited]);
    exited.catch(() => undefined);
  }

  async kill(): Promise<void> {
    const child = this.child;
    if (!child || !this.running) return;
    const exited = once(child, 'exit');
    child.kill('SIGCONT');
    child.kill('SIGKILL');
    await exited;
  }

  signal(sig: 'SIGSTOP' | 'SIGCONT'): void {
    if (this.running) this.child!.kill(sig);
  }

  client(): Redis {
    const client = new Redis({ host: HOST, port: this.port, maxRetriesPerRequest: 2, lazyConnect: false });
    client.on('error', () => undefined);
    return client;
  }
}

const PRIMARY_ARGS = ['--appendonly', 'yes', '--appendfsync', 'always'];

export class FaultRedis {
  private constructor(
    private readonly primary: RedisProcess,
    private replica: RedisProcess,
    private readonly base: string,
  ) {}

  static async start(): Promise<FaultRedis> {
    const base = await mkdtemp(join(tmpdir(), 'consoled-fault-redis-'));
    const primary = new RedisProcess(await freePort(), join(base, 'primary'));
    await primary.start(PRIMARY_ARGS);
    const replica = new RedisProcess(await freePort(), join(base, 'replica-0'));
    const redis = new FaultRedis(primary, replica, base);
    await redis.startReplica();
    return redis;
  }

  get url(): string {
    return `redis://${HOST}:${this.primary.port}`;
  }

  get up(): boolean {
    return this.primary.running;
  }

  client(): Redis {
    return this.primary.client();
  }

  /** SIGTERM-free stop and start with the AOF gone: Redis comes back empty. */
  async restartEmpty(): Promise<void> {
    await this.primary.kill();
    await rm(this.primary.dir, { recursive: true, force: true });
    await this.primary.start(PRIMARY_ARGS);
    await this.restartReplica();
  }

  /** SIGKILL and start again: the AOF (fsync always) brings back every acknowledged write. */
  async crashAndRecover(): Promise<void> {
    await this.primary.kill();
    await this.primary.start(PRIMARY_ARGS);
  }

  /** SIGSTOP for `ms`, then SIGCONT: every client waits, then times out or continues. */
  async pause(ms: number): Promise<void> {
    this.primary.signal('SIGSTOP');
    await sleep(ms);
    this.primary.signal('SIGCONT');
  }

  /**
   * A failover: the replica stops following for `lagMs` (it misses the writes made
   * meanwhile), the primary dies, and the replica's data comes up on the primary's
   * address; a new replica follows it.
   */
  async failover(lagMs: number): Promise<void> {
    this.replica.signal('SIGSTOP');
    await sleep(lagMs);
    await this.primary.kill();
    this.replica.signal('SIGCONT');
    const client = this.replica.client();
    try {
      await client.replicaof('NO', 'ONE');
      await client.save();
    } finally {
      client.disconnect();
    }
    await rm(this.primary.dir, { recursive: true, force: true });
    await mkdir(this.primary.dir, { recursive: true });
    await copyFile(join(this.replica.dir, 'dump.rdb'), join(this.primary.dir, 'dump.rdb'));
    // Loaded from the replica's RDB, then written to a new AOF from memory.
    await this.primary.start(['--appendonly', 'no', '--dbfilename', 'dump.rdb']);
    const promoted = this.primary.client();
    try {
      await promoted.config('SET', 'appendfsync', 'always');
      await promoted.config('SET', 'appendonly', 'yes');
      await waitFor('the AOF rewrite', async () =>
        /aof_rewrite_in_progress:0/.test(await promoted.info('persistence')),
      );
    } finally {
      promoted.disconnect();
    }
    await this.restartReplica();
  }

  async stop(): Promise<void> {
    await this.primary.kill();
    await this.replica.kill();
    await rm(this.base, { recursive: true, force: true });
  }

  private async restartReplica(): Promise<void> {
    await this.replica.kill();
    await rm(this.replica.dir, { recursive: true, force: true });
    this.replica = new RedisProcess(this.replica.port, this.replica.dir);
    await this.startReplica();
  }

  private async startReplica(): Promise<void> {
    await this.replica.start(['--appendonly', 'no', '--replicaof', HOST, String(this.primary.port)]);
    const client = this.replica.client();
    try {
      await waitFor('the replica to sync', async () => {
        const info = await client.info('replication');
        return /master_link_status:up/.test(info) && /master_sync_in_progress:0/.test(info);
      });
    } finally {
      client.disconnect();
    }
  }
}
