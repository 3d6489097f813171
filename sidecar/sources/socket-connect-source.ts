import type { Socket } from 'node:net';
import type { Logger } from 'pino';
import { z } from 'zod';
import { type ChardevHandle, type InheritedChardev, stopReading } from './chardev-handle.js';
import { type ConnectTarget, dialChardev, setChardevReader } from './chardev-socket.js';
import { type CloseCause, type ReconnectOptions, Source, sourceType, specFields } from './source.js';

export type { ConnectTarget };

/** Errors that mean the guest side went away rather than that we could not reach it. */
const PEER_GONE = new Set(['ECONNRESET', 'EPIPE']);

/**
 * `tcp` and `unix`: consoled dials a chardev that QEMU serves
 * (`-chardev socket,server=on,wait=off`), and redials with backoff when it is gone.
 */
export class SocketConnectSource extends Source {
  readonly kind: 'tcp' | 'unix';
  private socket: Socket | null = null;
  /** Removes this source's listeners from the current socket. */
  private unwire: () => void = () => undefined;

  constructor(
    private readonly target: ConnectTarget,
    logger: Logger,
    reconnect: ReconnectOptions,
    inherited?: InheritedChardev,
  ) {
    super(logger, reconnect, inherited);
    this.kind = 'path' in target ? 'unix' : 'tcp';
  }

  private describe(): string {
    return 'path' in this.target ? this.target.path : `${this.target.host}:${this.target.port}`;
  }

  start(): void {
    const inherited = this.takeInherited();
    const socket = inherited?.handle?.kind === 'socket' ? inherited.handle.socket : null;
    if (!inherited || !socket || socket.destroyed) {
      this.dial();
      return;
    }
    // Dialled early at start (lifecycle/pre-dial.ts) it may still be connecting.
    if (socket.connecting) this.setState('connecting', `dialling ${this.describe()}`);
    this.use(socket, !socket.connecting, inherited.continuation);
  }

  private dial(): void {
    this.setState('connecting', `dialling ${this.describe()}`);
    this.use(dialChardev(this.target), false, 'new');
  }

  /** Reads `socket`: one this source dialled, or an adopted one that is connected already. */
  private use(
    socket: Socket,
    connectedAlready: boolean,
    continuation: InheritedChardev['continuation'],
  ): void {
    setChardevReader(socket, (chunk) => this.received(chunk));
    let connected = false;
    let peerEnded = false;
    let lastError: NodeJS.ErrnoException | null = null;
    const onConnect = () => {
      connected = true;
      if ('port' in this.target) socket.setNoDelay(true);
      this.socket = socket;
      this.opened(`connected to ${this.describe()}`, continuation);
      // One dialled early or adopted was paused; the overflow policy may hold it still.
      if (this.readingPaused) socket.pause();
      else socket.resume();
    };
    const onEnd = () => {
      peerEnded = true;
      socket.end();
    };
    const onDrain = () => this.wroteToGuest();
    const onError = (err: NodeJS.ErrnoException) => {
      lastError = err;
    };
    const onClose = () => {
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
    };
    socket.on('end', onEnd).on('drain', onDrain).on('error', onError).on('close', onClose);
    this.unwire = () => {
      socket.off('end', onEnd).off('drain', onDrain).off('error', onError).off('close', onClose);
      socket.off('connect', onConnect);
      socket.on('error', () => undefined);
    };
    if (connectedAlready) onConnect();
    else socket.on('connect', onConnect);
  }

  protected letGo(): ChardevHandle | null {
    const socket = this.socket;
    this.socket = null;
    if (!socket || socket.destroyed) return null;
    // The guest's further bytes wait in the kernel (a socket with a read callback holds none back).
    for (const chunk of stopReading(socket)) this.received(chunk);
    setChardevReader(socket, null);
    this.unwire();
    return { kind: 'socket', socket };
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
  (spec, { logger, reconnect, inherited }) =>
    new SocketConnectSource({ host: spec.host, port: spec.port }, logger, reconnect, inherited),
);

/** `unix`: consoled dials QEMU's unix socket chardev. */
export const unixSourceType = sourceType(
  z.object({ type: z.literal('unix'), path: specFields.path }).strict(),
  (spec, { logger, reconnect, inherited }) =>
    new SocketConnectSource({ path: spec.path }, logger, reconnect, inherited),
);
