import { chmod, unlink } from 'node:fs/promises';
import { createServer, type Server, type Socket } from 'node:net';
import type { Logger } from 'pino';
import { type ReconnectOptions, Source } from './source.js';

export type ListenTarget = { readonly host: string; readonly port: number } | { readonly path: string };

/**
 * `tcp-listen` and `unix-listen`: QEMU dials us (`-chardev socket,server=off,reconnect=N`).
 * One guest connection at a time; a new one supersedes the old (QEMU only redials
 * after it lost the old one, so the old one is half-open at best).
 */
export class SocketListenSource extends Source {
  readonly kind: 'tcp-listen' | 'unix-listen';
  private server: Server | null = null;
  private socket: Socket | null = null;

  constructor(
    private readonly target: ListenTarget,
    logger: Logger,
    reconnect: ReconnectOptions,
  ) {
    super(logger, reconnect);
    this.kind = 'path' in target ? 'unix-listen' : 'tcp-listen';
  }

  private describe(): string {
    return 'path' in this.target ? this.target.path : `${this.target.host}:${this.target.port}`;
  }

  start(): void {
    void this.listen();
  }

  private async listen(): Promise<void> {
    this.setState('connecting', `binding ${this.describe()}`);
    if ('path' in this.target) await unlink(this.target.path).catch(() => undefined); // a stale socket file
    const server = createServer((socket) => this.accept(socket));
    server.on('error', (err: NodeJS.ErrnoException) => {
      server.close();
      if (this.server === server) this.server = null;
      this.retry(`cannot listen on ${this.describe()}: ${err.code ?? err.message}`, () => void this.listen());
    });
    server.listen(this.target as { host: string; port: number }, () => {
      if (this.stopped) {
        server.close();
        return;
      }
      this.server = server;
      if ('path' in this.target) void chmod(this.target.path, 0o660).catch(() => undefined);
      this.setState('listening', `waiting for the guest on ${this.describe()}`);
    });
  }

  /** The bound TCP port (useful when configured as 0). */
  get boundPort(): number | null {
    const address = this.server?.address();
    return address && typeof address === 'object' ? address.port : null;
  }

  private accept(socket: Socket): void {
    if (this.stopped) {
      socket.destroy();
      return;
    }
    const previous = this.socket;
    if (previous) {
      this.socket = null;
      previous.destroy();
      this.emit('close', { cause: 'guest', reason: 'superseded by a new guest connection' });
    }
    this.socket = socket;
    if ('port' in this.target) socket.setNoDelay(true);
    socket.on('data', (chunk: Buffer) => this.received(chunk));
    socket.on('end', () => socket.end());
    socket.on('drain', () => this.emit('drain'));
    socket.on('error', () => undefined);
    socket.on('close', () => {
      if (this.socket !== socket) return;
      this.socket = null;
      if (this.stopped) return;
      this.emit('close', { cause: 'guest', reason: 'guest closed the chardev' });
      this.setState('listening', `waiting for the guest on ${this.describe()}`);
    });
    this.opened(`guest connected from ${socket.remoteAddress ?? 'unix socket'}`);
  }

  write(bytes: Buffer): boolean {
    const socket = this.socket;
    if (!socket || socket.destroyed) return true;
    this.counters.bytesOut += bytes.length;
    return socket.write(bytes);
  }

  protected async close(): Promise<void> {
    const socket = this.socket;
    this.socket = null;
    socket?.destroy();
    const server = this.server;
    this.server = null;
    if (server) await new Promise((resolve) => server.close(resolve));
    if ('path' in this.target) await unlink(this.target.path).catch(() => undefined);
  }
}
