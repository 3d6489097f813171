import { write as fsWrite } from 'node:fs';
import * as pty from 'node-pty';
import type { Logger } from 'pino';
import { z } from 'zod';
import type { InheritedChardev } from './chardev-handle.js';
import {
  PTY_MAX_COALESCING_WINDOW_MS,
  type ReconnectOptions,
  Source,
  sourceType,
  specFields,
} from './source.js';

export interface ExecOptions {
  readonly command: readonly string[];
  readonly cwd?: string;
  readonly env?: Readonly<Record<string, string>>;
  readonly cols: number;
  readonly rows: number;
}

/** First and longest wait before writing again to a pty that was full. */
const FULL_RETRY_FIRST_MS = 2;
const FULL_RETRY_MAX_MS = 50;
/** Queued keystrokes are written together up to this much (a flood of 1-byte frames is one write). */
const MAX_PTY_WRITE_BYTES = 16 * 1024;

/** node-pty's master descriptor: a getter of UnixTerminal that its typings leave out. */
function masterFd(child: pty.IPty): number {
  const fd = (child as unknown as { fd?: unknown }).fd;
  if (typeof fd !== 'number' || !Number.isInteger(fd) || fd < 0)
    throw new Error('node-pty no longer exposes the master descriptor (fd)');
  return fd;
}

/**
 * `exec`: a program run under a pseudo-terminal (node-pty), for consoles that are a
 * command (`virsh console --force`, `ipmitool sol activate`, the demo guest). The
 * program exiting is the guest side closing; it is started again with backoff, and
 * that new run is a new boot, once it ran for `minUptimeMs` (a program that exits at
 * once is a reconnect storm, see Source; its output alone does not establish it).
 *
 * Keystrokes do not go through node-pty's `write`: node-pty 1.1.0 queues without a
 * bound, has no queue size or drain event, and retries a full pty with `setImmediate`,
 * a busy loop for as long as the program does not read. We keep our own count instead:
 * our queue is the bytes handed over and not yet taken, and `fs.write` on the master
 * descriptor tells exactly how many the pty took. A full pty (EAGAIN) is retried on a
 * timer that backs off to 50 ms, so a program that never reads costs no CPU, and
 * `write` returns false past MAX_KEYSTROKE_INFLIGHT_BYTES until the queue drains.
 */
export class ExecSource extends Source {
  readonly kind = 'exec';
  protected override readonly maxCoalescingWindowMs = PTY_MAX_COALESCING_WINDOW_MS;
  private child: pty.IPty | null = null;
  private fd = -1;
  /** Keystrokes handed to us and not yet taken by the pty, oldest first. */
  private readonly queue: Buffer[] = [];
  private queuedBytes = 0;
  private writing = false;
  private fullTimer: NodeJS.Timeout | null = null;
  private fullDelayMs = FULL_RETRY_FIRST_MS;
  private size: { cols: number; rows: number };

  constructor(
    private readonly options: ExecOptions,
    logger: Logger,
    reconnect: ReconnectOptions,
    inherited?: InheritedChardev,
  ) {
    super(logger, reconnect, inherited);
    this.size = { cols: options.cols, rows: options.rows };
  }

  start(): void {
    // Nothing of a program can be handed over (node-pty owns the master and the
    // child): after an upgrade it starts again, and the log says so.
    const restarted = this.takeInherited()?.continuation === 'restarted';
    this.spawn(restarted);
  }

  /** Nothing to hand over: `release` stops the program. */
  protected letGo(): null {
    return null;
  }

  private spawn(restarted = false): void {
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
    try {
      this.fd = masterFd(child);
    } catch (err) {
      child.kill('SIGKILL');
      this.retry(String(err), () => this.spawn());
      return;
    }
    this.child = child;
    // With `encoding: null` node-pty hands over Buffers although its typings say string.
    child.onData((data: string | Buffer) =>
      this.received(typeof data === 'string' ? Buffer.from(data, 'utf8') : data),
    );
    if (this.readingPaused) child.pause();
    // node-pty closes the master when its read side ends, before `onExit`: stop
    // writing to the descriptor at once, so no retry can hit a reused number.
    (child as unknown as { on(event: 'close', listener: () => void): void }).on('close', () => {
      if (this.child === child) this.dropConnection();
    });
    child.onExit(({ exitCode, signal }) => {
      if (this.child === child) this.dropConnection();
      if (this.stopped) return;
      const reason = `${file} exited (code ${exitCode}${signal ? `, signal ${signal}` : ''})`;
      this.closed('guest', reason);
      this.retry(reason, () => this.spawn());
    });
    this.opened(`started ${file} (pid ${child.pid})`, restarted ? 'restarted' : 'new');
  }

  get pid(): number | null {
    return this.child?.pid ?? null;
  }

  protected override get establishedByData(): boolean {
    return false;
  }

  protected applyReading(reading: boolean): void {
    const child = this.child;
    if (!child) return;
    if (reading) child.resume();
    else child.pause();
  }

  protected sendToGuest(bytes: Buffer): boolean {
    if (!this.child) return false;
    if (bytes.length === 0) return true;
    this.queue.push(bytes);
    this.queuedBytes += bytes.length;
    this.pumpKeystrokes();
    return true;
  }

  protected get guestWritePending(): number {
    return this.queuedBytes;
  }

  /** Writes the queue's head to the master; one write at a time, in order. */
  private pumpKeystrokes(): void {
    if (this.writing || this.fullTimer || this.queue.length === 0 || !this.child) return;
    const child = this.child;
    const head = this.takeHead();
    this.writing = true;
    fsWrite(this.fd, head, 0, head.length, null, (err, written) => {
      this.writing = false;
      if (this.child !== child) {
        this.pumpKeystrokes(); // the run ended meanwhile: its queue is gone; a new run's may wait
        return;
      }
      if (err) {
        if ((err as NodeJS.ErrnoException).code === 'EAGAIN') {
          // The pty is full (the program is not reading): try again later, not in a loop.
          this.fullTimer = setTimeout(() => {
            this.fullTimer = null;
            this.pumpKeystrokes();
          }, this.fullDelayMs);
          this.fullDelayMs = Math.min(this.fullDelayMs * 2, FULL_RETRY_MAX_MS);
          return;
        }
        // EIO: the program is gone; its exit follows. What was queued is not typed.
        this.logger.debug({ err: (err as NodeJS.ErrnoException).code }, 'writing to the pty failed');
        this.clearQueue();
        this.wroteToGuest();
        return;
      }
      this.fullDelayMs = FULL_RETRY_FIRST_MS;
      this.dropFront(written);
      this.wroteToGuest();
      this.pumpKeystrokes();
    });
  }

  /** The queue's first bytes, up to MAX_PTY_WRITE_BYTES, as one buffer (the queue is left as it is). */
  private takeHead(): Buffer {
    const first = this.queue[0]!;
    if (this.queue.length === 1 || first.length >= MAX_PTY_WRITE_BYTES) return first;
    const parts: Buffer[] = [];
    let size = 0;
    for (const b of this.queue) {
      if (size + b.length > MAX_PTY_WRITE_BYTES) break;
      parts.push(b);
      size += b.length;
    }
    return Buffer.concat(parts, size);
  }

  /** Removes the `n` bytes the pty took from the front of the queue. */
  private dropFront(n: number): void {
    this.queuedBytes -= n;
    while (n > 0) {
      const head = this.queue[0]!;
      if (head.length <= n) {
        this.queue.shift();
        n -= head.length;
      } else {
        this.queue[0] = head.subarray(n);
        n = 0;
      }
    }
  }

  private clearQueue(): void {
    this.queue.length = 0;
    this.queuedBytes = 0;
    if (this.fullTimer) clearTimeout(this.fullTimer);
    this.fullTimer = null;
    this.fullDelayMs = FULL_RETRY_FIRST_MS;
  }

  /** The run's descriptor is closed or closing: forget it and what was queued for it. */
  private dropConnection(): void {
    this.child = null;
    this.fd = -1;
    this.clearQueue();
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
    this.dropConnection();
    if (!child) return;
    const exited = new Promise<void>((resolve) => child.onExit(() => resolve()));
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), 2000);
    await exited;
    clearTimeout(timer);
  }
}

/** `exec`: a program run under a pseudo-terminal (`virsh console`, `ipmitool sol activate`). */
export const execSourceType = sourceType(
  z
    .object({
      type: z.literal('exec'),
      command: z.array(z.string().min(1)).min(1),
      cwd: specFields.path.optional(),
      env: z.record(z.string(), z.string()).optional(),
    })
    .strict(),
  (spec, { logger, reconnect, terminal, inherited }) =>
    new ExecSource(
      {
        command: spec.command,
        ...(spec.cwd ? { cwd: spec.cwd } : {}),
        ...(spec.env ? { env: spec.env } : {}),
        cols: terminal.cols,
        rows: terminal.rows,
      },
      logger,
      reconnect,
      inherited,
    ),
);
