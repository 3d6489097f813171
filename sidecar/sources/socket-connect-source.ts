import { connect, type Socket } from 'node:net';
import type { Logger } from 'pino';
import { z } from 'zod';
import { type CloseCause, type ReconnectOptions, Source, sourceType, specFields } from './source.js';

export type ConnectTarget = { readonly host: string; readonly port: number } | { readonly path: string };

/** Size of the read buffer shared by every connected source. */
const READ_BUFFER_BYTES = 1024 * 1024;
/** A read at least this large takes the shared buffer itself (a fresh one replaces it) instead of a copy. */
const HAND_OVER_BYTES = 256 * 1024;

/**
 * One read buffer shared by every connected source: libuv reads into it, so a flooding
 * guest is read in large bites (one syscall and one callback per up to 1 MiB, not per
 * 64 KiB) and idle guests cost no buffer of their own. A small read is copied out
 * before the callback returns; a large one (a flood) is handed on as it is and a fresh
 * buffer takes its place, which saves copying every byte of a flood once more.
 */
let sharedReadBuffer = Buffer.allocUnsafe(READ_BUFFER_BYTES);

/** Errors that mean the guest side went away rather than that we could not reach it. */
const PEER_GONE = new Set(['ECONNRESET', 'EPIPE']);

/**
 * `tcp` and `unix`: consoled dials a chardev that QEMU serves
 * (`-chardev socket,server=on,wait=off`), and redials with backoff when it is gone.
 */
export class SocketConnectSource extends Source {
  readonly kind: 'tcp' | 'unix';
  private socket: Socket | null = null;

  constructor(
    private readonly target: ConnectTarget,
    logger: Logger,
    reconnect: ReconnectOptions,
  ) {
    super(logger, reconnect);
    this.kind = 'path' in target ? 'unix' : 'tcp';
  }

  private describe(): string {
    return 'path' in this.target ? this.target.path : `${this.target.host}:${this.target.port}`;
  }

  start(): void {
    this.dial();
  }

  private dial(): void {
    this.setState('connecting', `dialling ${this.describe()}`);
    const target = this.target;
    const onread = {
      buffer: () => sharedReadBuffer,
      callback: (nread: number, buffer: Buffer): boolean => {
        let chunk: Buffer;
        if (nread >= HAND_OVER_BYTES) {
          chunk = buffer.subarray(0, nread);
          if (buffer === sharedReadBuffer) sharedReadBuffer = Buffer.allocUnsafe(READ_BUFFER_BYTES);
        } else {
          chunk = Buffer.allocUnsafe(nread); // one copy out of the shared buffer, no intermediate view
          buffer.copy(chunk, 0, 0, nread);
        }
        this.received(chunk);
        return true; // reading stops only through pauseReading (the overflow policy)
      },
    };
    const socket =
      'path' in target
        ? connect({ path: target.path, onread })
        : connect({ host: target.host, port: target.port, onread });
    let connected = false;
    let peerEnded = false;
    let lastError: NodeJS.ErrnoException | null = null;
    socket.on('connect', () => {
      connected = true;
      if ('port' in this.target) socket.setNoDelay(true);
      this.socket = socket;
      if (this.readingPaused) socket.pause();
      this.opened(`connected to ${this.describe()}`);
    });
    socket.on('end', () => {
      peerEnded = true;
      socket.end();
    });
    socket.on('drain', () => this.wroteToGuest());
    socket.on('error', (err: NodeJS.ErrnoException) => {
      lastError = err;
    });
    socket.on('close', () => {
      if (this.socket === socket) this.socket = null;
      if (this.stopped) return;
      const reason = lastError
        ? `${lastError.code ?? lastError.message}`
        : peerEnded
          ? 'guest closed the chardev'
          : 'closed';
      if (connected) {
        const cause: CloseCause =
          peerEnded || (lastError?.code && PEER_GONE.has(lastError.code)) ? 'guest' : 'error';
        this.closed(cause, reason);
      }
      this.retry(reason, () => this.dial());
    });
  }

  protected applyReading(reading: boolean): void {
    const socket = this.socket;
    if (!socket || socket.destroyed) return;
    if (reading) socket.resume();
    else socket.pause();
  }

  protected sendToGuest(bytes: Buffer): boolean {
    const socket = this.socket;
    if (!socket || socket.destroyed) return false;
    socket.write(bytes);
    return true;
  }

  /** What the socket holds beyond the kernel's buffers (the kernel's own are bounded). */
  protected get guestWritePending(): number {
    return this.socket?.writableLength ?? 0;
  }

  protected async close(): Promise<void> {
    const socket = this.socket;
    this.socket = null;
    if (socket && !socket.destroyed) {
      const closed = new Promise((resolve) => socket.once('close', resolve));
      socket.destroy();
      await closed;
    }
  }
}

/** `tcp`: consoled dials QEMU's TCP chardev. */
export const tcpSourceType = sourceType(
  z.object({ type: z.literal('tcp'), host: specFields.host, port: specFields.port }).strict(),
  (spec, { logger, reconnect }) =>
    new SocketConnectSource({ host: spec.host, port: spec.port }, logger, reconnect),
);

/** `unix`: consoled dials QEMU's unix socket chardev. */
export const unixSourceType = sourceType(
  z.object({ type: z.literal('unix'), path: specFields.path }).strict(),
  (spec, { logger, reconnect }) => new SocketConnectSource({ path: spec.path }, logger, reconnect),
);
