import * as pty from 'node-pty';
import type { Logger } from 'pino';
import { type ReconnectOptions, Source } from './source.js';

export interface ExecOptions {
  readonly command: readonly string[];
  readonly cwd?: string;
  readonly env?: Readonly<Record<string, string>>;
  readonly cols: number;
  readonly rows: number;
}

/**
 * `exec`: a program run under a pseudo-terminal (node-pty), for consoles that are a
 * command (`virsh console --force`, `ipmitool sol activate`, the demo guest). The
 * program exiting is the guest side closing; it is started again with backoff, and
 * that new run is a new boot.
 */
export class ExecSource extends Source {
  readonly kind = 'exec';
  private child: pty.IPty | null = null;
  private size: { cols: number; rows: number };

  constructor(
    private readonly options: ExecOptions,
    logger: Logger,
    reconnect: ReconnectOptions,
  ) {
    super(logger, reconnect);
    this.size = { cols: options.cols, rows: options.rows };
  }

  start(): void {
    this.spawn();
  }

  private spawn(): void {
    const [file, ...args] = this.options.command;
    if (!file) throw new Error('exec source without a command');
    this.setState('connecting', `starting ${file}`);
    let child: pty.IPty;
    try {
      child = pty.spawn(file, args, {
        name: 'xterm-256color',
        cols: this.size.cols,
        rows: this.size.rows,
        cwd: this.options.cwd ?? process.cwd(),
        env: { ...(this.options.env ?? { PATH: process.env['PATH'] ?? '/usr/bin:/bin' }) },
        // Bytes are bytes: no decoding, Buffers in and out.
        encoding: null,
      } as pty.IPtyForkOptions);
    } catch (err) {
      this.retry(`cannot start ${file}: ${String(err)}`, () => this.spawn());
      return;
    }
    this.child = child;
    // With `encoding: null` node-pty hands over Buffers although its typings say string.
    child.onData((data: string | Buffer) =>
      this.received(typeof data === 'string' ? Buffer.from(data, 'utf8') : data),
    );
    child.onExit(({ exitCode, signal }) => {
      if (this.child === child) this.child = null;
      if (this.stopped) return;
      const reason = `${file} exited (code ${exitCode}${signal ? `, signal ${signal}` : ''})`;
      this.emit('close', { cause: 'guest', reason });
      this.retry(reason, () => this.spawn());
    });
    this.opened(`started ${file} (pid ${child.pid})`);
  }

  get pid(): number | null {
    return this.child?.pid ?? null;
  }

  write(bytes: Buffer): boolean {
    const child = this.child;
    if (!child) return true;
    this.counters.bytesOut += bytes.length;
    // node-pty writes synchronously to the master; it has no drain signal of its own.
    (child.write as (data: string | Buffer) => void)(bytes);
    return true;
  }

  override get resizable(): boolean {
    return true;
  }

  override resize(cols: number, rows: number): void {
    this.size = { cols, rows };
    this.child?.resize(cols, rows);
  }

  protected async close(): Promise<void> {
    const child = this.child;
    this.child = null;
    if (!child) return;
    const exited = new Promise<void>((resolve) => child.onExit(() => resolve()));
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), 2000);
    await exited;
    clearTimeout(timer);
  }
}
