import { constants, open } from 'node:fs';
import { ReadStream } from 'node:tty';
import { promisify } from 'node:util';
import type { Logger } from 'pino';
import { z } from 'zod';
import { type ReconnectOptions, Source, sourceType, specFields } from './source.js';

const openRaw = promisify(open);

/**
 * `pty`: an existing pseudo-terminal such as libvirt's `<serial type='pty'>`, where
 * QEMU holds the master and we open the slave path. The line discipline is put in raw
 * mode at once: in cooked mode the kernel would echo the guest's output back to it.
 * EIO on read means QEMU closed the master (it exited); we reopen with backoff.
 */
export class PtySource extends Source {
  readonly kind = 'pty';
  private tty: ReadStream | null = null;
  private size: { cols: number; rows: number } | null = null;

  constructor(
    private readonly path: string,
    logger: Logger,
    reconnect: ReconnectOptions,
  ) {
    super(logger, reconnect);
  }

  start(): void {
    void this.openPty();
  }

  private async openPty(): Promise<void> {
    this.setState('connecting', `opening ${this.path}`);
    let fd: number;
    try {
      // A raw descriptor (not a FileHandle): the tty handle below takes ownership of it.
      fd = await openRaw(this.path, constants.O_RDWR | constants.O_NOCTTY | constants.O_NONBLOCK);
    } catch (err) {
      this.retry(
        `cannot open ${this.path}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`,
        () => void this.openPty(),
      );
      return;
    }
    if (this.stopped) return;
    let tty: ReadStream;
    try {
      tty = new ReadStream(fd);
      tty.setRawMode(true);
    } catch (err) {
      this.retry(`${this.path} is not a terminal: ${String(err)}`, () => void this.openPty());
      return;
    }
    this.tty = tty;
    let lastError: NodeJS.ErrnoException | null = null;
    tty.on('data', (chunk: Buffer) => this.received(chunk));
    if (this.readingPaused) tty.pause();
    tty.on('drain', () => this.wroteToGuest());
    tty.on('error', (err: NodeJS.ErrnoException) => {
      lastError = err;
    });
    tty.on('close', () => {
      if (this.tty === tty) this.tty = null;
      if (this.stopped) return;
      // EIO: the master side is gone, i.e. the QEMU process exited.
      const reason =
        lastError?.code === 'EIO' || !lastError
          ? 'guest closed the pty'
          : (lastError.code ?? lastError.message);
      this.closed(lastError && lastError.code !== 'EIO' ? 'error' : 'guest', reason);
      this.retry(reason, () => void this.openPty());
    });
    if (this.size) this.applySize(this.size);
    this.opened(`opened ${this.path}`);
  }

  protected applyReading(reading: boolean): void {
    const tty = this.tty;
    if (!tty || tty.destroyed) return;
    if (reading) tty.resume();
    else tty.pause();
  }

  protected sendToGuest(bytes: Buffer): boolean {
    const tty = this.tty;
    if (!tty || tty.destroyed) return false;
    tty.write(bytes);
    return true;
  }

  /**
   * What the tty stream holds (libuv writes the slave with poll, not a busy loop); the
   * kernel's pty buffer beyond it is bounded.
   */
  protected get guestWritePending(): number {
    return this.tty?.writableLength ?? 0;
  }

  override get resizable(): boolean {
    return true;
  }

  override resize(cols: number, rows: number): void {
    this.size = { cols, rows };
    this.applySize(this.size);
  }

  private applySize(size: { cols: number; rows: number }): void {
    // Node's tty.ReadStream has no setter for the window size; the handle does
    // (the same call tty.WriteStream makes for getWindowSize, inverted).
    const handle = (
      this.tty as unknown as { _handle?: { setWindowSize?: (c: number, r: number) => void } } | null
    )?._handle;
    handle?.setWindowSize?.(size.cols, size.rows);
  }

  protected async close(): Promise<void> {
    const tty = this.tty;
    this.tty = null;
    if (tty && !tty.destroyed) {
      const closed = new Promise((resolve) => tty.once('close', resolve));
      tty.destroy();
      await closed;
    }
  }
}

/** `pty`: the slave side of a pty QEMU (or libvirt) made. */
export const ptySourceType = sourceType(
  z.object({ type: z.literal('pty'), path: specFields.path }).strict(),
  (spec, { logger, reconnect }) => new PtySource(spec.path, logger, reconnect),
);
