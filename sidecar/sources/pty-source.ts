import { constants, open } from 'node:fs';
import { ReadStream } from 'node:tty';
import { promisify } from 'node:util';
import type { Logger } from 'pino';
import { z } from 'zod';
import {
  type ChardevHandle,
  type Continuation,
  type InheritedChardev,
  stopReading,
} from './chardev-handle.js';
import {
  PTY_MAX_COALESCING_WINDOW_MS,
  type ReconnectOptions,
  Source,
  sourceType,
  specFields,
} from './source.js';

const openRaw = promisify(open);

/**
 * `pty`: an existing pseudo-terminal such as libvirt's `<serial type='pty'>`, where
 * QEMU holds the master and we open the slave path. The line discipline is put in raw
 * mode at once: in cooked mode the kernel would echo the guest's output back to it.
 * EIO on read means QEMU closed the master (it exited); we reopen with backoff.
 */
export class PtySource extends Source {
  readonly kind = 'pty';
  protected override readonly maxCoalescingWindowMs = PTY_MAX_COALESCING_WINDOW_MS;
  private tty: ReadStream | null = null;
  private size: { cols: number; rows: number } | null = null;

  constructor(
    private readonly path: string,
    logger: Logger,
    reconnect: ReconnectOptions,
    inherited?: InheritedChardev,
  ) {
    super(logger, reconnect, inherited);
  }

  /** Removes this source's listeners from the current tty. */
  private unwire: () => void = () => undefined;

  start(): void {
    const inherited = this.takeInherited();
    if (inherited?.handle?.kind === 'tty') this.use(inherited.handle.tty, inherited.continuation);
    else void this.openPty();
  }

  protected letGo(): ChardevHandle | null {
    const tty = this.tty;
    this.tty = null;
    if (!tty || tty.destroyed) return null;
    // The guest's further bytes wait in the pty; what the tty had read is logged now.
    for (const chunk of stopReading(tty)) this.received(chunk);
    this.unwire();
    return { kind: 'tty', tty };
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
    this.use(tty, 'new');
  }

  /** Reads `tty`, in raw mode: one this source opened, or an adopted one. */
  private use(tty: ReadStream, continuation: Continuation): void {
    if (continuation !== 'new') {
      try {
        tty.setRawMode(true); // the same settings again: the process before set them
      } catch {
        // not a terminal any more: its close follows
      }
    }
    this.tty = tty;
    let lastError: NodeJS.ErrnoException | null = null;
    const onData = (chunk: Buffer) => this.received(chunk);
    const onDrain = () => this.wroteToGuest();
    const onError = (err: NodeJS.ErrnoException) => {
      lastError = err;
    };
    const onClose = () => {
      if (this.tty === tty) this.tty = null;
      if (this.stopped) return;
      // EIO: the master side is gone, i.e. the QEMU process exited.
      const reason =
        lastError?.code === 'EIO' || !lastError
          ? 'guest closed the pty'
          : (lastError.code ?? lastError.message);
      this.closed(lastError && lastError.code !== 'EIO' ? 'error' : 'guest', reason);
      this.retry(reason, () => void this.openPty());
    };
    tty.on('data', onData).on('drain', onDrain).on('error', onError).on('close', onClose);
    this.unwire = () => {
      tty.off('data', onData).off('drain', onDrain).off('close', onClose);
    };
    if (this.size) this.applySize(this.size);
    this.opened(`opened ${this.path}`, continuation);
    // One dialled early or adopted was paused; the overflow policy may hold it still.
    if (this.readingPaused) tty.pause();
    else tty.resume();
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
  (spec, { logger, reconnect, inherited }) => new PtySource(spec.path, logger, reconnect, inherited),
);
