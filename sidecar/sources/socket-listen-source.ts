import { randomBytes } from 'node:crypto';
import { chmod, chown, readFile, rename, unlink } from 'node:fs/promises';
import { createServer, type Server, type Socket } from 'node:net';
import { dirname, join } from 'node:path';
import type { Logger } from 'pino';
import { z } from 'zod';
import {
  type ChardevHandle,
  type Continuation,
  type InheritedChardev,
  stopReading,
} from './chardev-handle.js';
import { type ReconnectOptions, Source, sourceType, specFields } from './source.js';

/** Mode of a `unix-listen` socket file unless `socketMode` says otherwise: the daemon's user and group. */
export const DEFAULT_SOCKET_MODE = '0660';

export type ListenTarget =
  | { readonly host: string; readonly port: number }
  | {
      readonly path: string;
      /** Mode of the socket file (connecting needs write permission on it). */
      readonly mode: number;
      /** Group of the socket file: a name or a gid; the daemon's own group when absent. */
      readonly group?: string | number;
    };

/** A group name's gid, from /etc/group (Node has no getgrnam). */
async function gidOf(group: string | number): Promise<number> {
  if (typeof group === 'number') return group;
  const text = await readFile('/etc/group', 'utf8');
  for (const line of text.split('\n')) {
    const [name, , gid] = line.split(':');
    if (name === group && gid !== undefined && /^\d+$/.test(gid)) return Number(gid);
  }
  throw Object.assign(new Error(`no group named ${group} in /etc/group`), { code: 'ENOGROUP' });
}

/**
 * `tcp-listen` and `unix-listen`: QEMU dials us (`-chardev socket,server=off,reconnect=N`).
 *
 * One guest connection at a time, and the first one keeps it: while it is up every
 * further connection is closed at once (and the episode logged once), so a local
 * process that dials the port can neither read the writer's keystrokes nor write into
 * the log. QEMU only redials after it lost its connection, and we see that close (or
 * at least its FIN, which ends the connection for us too), so a real reconnect is
 * never refused.
 *
 * `unix-listen` also limits who may connect at all: Node has no SO_PEERCRED, so the
 * socket file's owner, group and mode do it (connecting needs write permission). The
 * socket is bound under a random temporary name, given its mode and group, and only
 * then renamed into place; a connection that reached it before that is closed.
 */
export class SocketListenSource extends Source {
  readonly kind: 'tcp-listen' | 'unix-listen';
  private server: Server | null = null;
  private socket: Socket | null = null;
  /** False until a unix socket file has its final mode, group and name. */
  private ready = false;
  /** Connections refused since the current one came up (one log line per episode). */
  private refusedInEpisode = 0;

  constructor(
    private readonly target: ListenTarget,
    logger: Logger,
    reconnect: ReconnectOptions,
    inherited?: InheritedChardev,
  ) {
    super(logger, reconnect, inherited);
    this.kind = 'path' in target ? 'unix-listen' : 'tcp-listen';
  }

  private describe(): string {
    return 'path' in this.target ? this.target.path : `${this.target.host}:${this.target.port}`;
  }

  start(): void {
    const inherited = this.takeInherited();
    if (inherited?.handle?.kind === 'listen') this.adopt(inherited.handle, inherited.continuation);
    else void this.listen();
  }

  /** Takes over a listening socket (and the guest's connection) that is bound and in place already. */
  private adopt(handle: Extract<ChardevHandle, { kind: 'listen' }>, continuation: Continuation): void {
    const { server } = handle;
    server.removeAllListeners('connection');
    server.on('connection', (socket) => this.accept(socket));
    server.on('error', (err: NodeJS.ErrnoException) =>
      this.logger.warn({ source: this.kind, err: err.code ?? err.message }, 'listening socket error'),
    );
    this.server = server;
    this.ready = true;
    this.setState('listening', `waiting for the guest on ${this.describe()}`);
    if (handle.socket && !handle.socket.destroyed) this.accept(handle.socket, continuation);
  }

  protected letGo(): ChardevHandle | null {
    const server = this.server;
    this.server = null;
    const socket = this.socket;
    this.socket = null;
    if (!server) {
      socket?.destroy();
      return null;
    }
    // Until another source adopts it, a connection reaching the server is closed at once.
    server.removeAllListeners('connection');
    server.removeAllListeners('error');
    server.on('connection', (late: Socket) => late.destroy());
    server.on('error', () => undefined);
    if (socket && !socket.destroyed) {
      // The guest's further bytes wait in the kernel; what the socket had read is logged now.
      for (const chunk of stopReading(socket)) this.received(chunk);
      this.unwire();
      return { kind: 'listen', server, socket };
    }
    return { kind: 'listen', server, socket: null };
  }

  private async listen(): Promise<void> {
    this.setState('connecting', `binding ${this.describe()}`);
    const target = this.target;
    this.ready = false;
    // Short, so that it fits wherever the final name does (a unix socket path has 107 bytes).
    const bindPath =
      'path' in target ? join(dirname(target.path), `.${randomBytes(4).toString('hex')}`) : null;
    const server = createServer((socket) => this.accept(socket));
    const fail = (why: string) => {
      server.close();
      if (this.server === server) this.server = null;
      if (bindPath) void unlink(bindPath).catch(() => undefined);
      this.retry(`cannot listen on ${this.describe()}: ${why}`, () => void this.listen());
    };
    server.on('error', (err: NodeJS.ErrnoException) => fail(err.code ?? err.message));
    const listening = new Promise<boolean>((resolve) => {
      server.once('listening', () => resolve(true));
      server.once('error', () => resolve(false));
    });
    server.listen(bindPath ? { path: bindPath } : (target as { host: string; port: number }));
    if (!(await listening)) return;
    if (this.stopped) {
      server.close();
      return;
    }
    this.server = server;
    if ('path' in target && bindPath) {
      try {
        await chmod(bindPath, target.mode);
        if (target.group !== undefined) await chown(bindPath, -1, await gidOf(target.group));
        if (this.stopped) {
          await unlink(bindPath).catch(() => undefined); // stopped meanwhile: leave no socket file
          return;
        }
        await rename(bindPath, target.path); // replaces a stale socket file atomically
      } catch (err) {
        fail((err as Error).message);
        return;
      }
      if (this.stopped) return;
    }
    this.ready = true;
    this.setState('listening', `waiting for the guest on ${this.describe()}`);
  }

  /** The bound TCP port (useful when configured as 0). */
  get boundPort(): number | null {
    const address = this.server?.address();
    return address && typeof address === 'object' ? address.port : null;
  }

  /** Removes this source's listeners from the guest's connection. */
  private unwire: () => void = () => undefined;

  private accept(socket: Socket, continuation: Continuation = 'new'): void {
    if (this.stopped || !this.ready) {
      socket.destroy();
      return;
    }
    const current = this.socket;
    if (current) {
      // The guest closed its side (FIN) and ours is still finishing: that connection is over.
      if (current.readableEnded) this.forget(current);
      else {
        this.refuse(socket);
        return;
      }
    }
    this.socket = socket;
    this.refusedInEpisode = 0;
    if ('port' in this.target) socket.setNoDelay(true);
    const onData = (chunk: Buffer) => this.received(chunk);
    const onEnd = () => socket.end();
    const onDrain = () => this.wroteToGuest();
    const onError = () => undefined;
    const onClose = () => {
      if (this.socket !== socket) return;
      this.forget(socket);
      if (!this.stopped) this.setState('listening', `waiting for the guest on ${this.describe()}`);
    };
    socket.on('data', onData).on('end', onEnd).on('drain', onDrain).on('error', onError).on('close', onClose);
    this.unwire = () => {
      socket.off('data', onData).off('end', onEnd).off('drain', onDrain).off('close', onClose);
    };
    this.opened(`guest connected from ${socket.remoteAddress ?? 'unix socket'}`, continuation);
    // One dialled early or adopted was paused; the overflow policy may hold it still.
    if (this.readingPaused) socket.pause();
    else socket.resume();
  }

  protected applyReading(reading: boolean): void {
    const socket = this.socket;
    if (!socket || socket.destroyed) return;
    if (reading) socket.resume();
    else socket.pause();
  }

  /** The guest's connection is over: forget it, and say so. */
  private forget(socket: Socket): void {
    this.socket = null;
    socket.destroy();
    if (this.refusedInEpisode > 0) {
      this.logger.info(
        { source: this.kind, refused: this.refusedInEpisode },
        'guest connection closed; further connections are accepted again',
      );
    }
    this.refusedInEpisode = 0;
    if (!this.stopped) this.closed('guest', 'guest closed the chardev');
  }

  /** A second connection while the guest's is up: closed at once, logged once per episode. */
  private refuse(socket: Socket): void {
    socket.on('error', () => undefined);
    socket.destroy();
    this.counters.refusedConnections++;
    if (this.refusedInEpisode++ === 0) {
      this.logger.warn(
        { source: this.kind, remote: socket.remoteAddress ?? 'unix socket', listen: this.describe() },
        'refused a connection to a guest chardev that is already connected (further refusals in this episode are not logged)',
      );
    }
  }

  protected sendToGuest(bytes: Buffer): boolean {
    const socket = this.socket;
    if (!socket || socket.destroyed) return false;
    socket.write(bytes);
    return true;
  }

  protected get guestWritePending(): number {
    return this.socket?.writableLength ?? 0;
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

/** `tcp-listen`: QEMU dials consoled on a TCP port. */
export const tcpListenSourceType = sourceType(
  z.object({ type: z.literal('tcp-listen'), host: specFields.host, port: specFields.port }).strict(),
  (spec, { logger, reconnect, inherited }) =>
    new SocketListenSource({ host: spec.host, port: spec.port }, logger, reconnect, inherited),
);

/** `unix-listen`: QEMU dials consoled on a unix socket, whose owner, group and mode say who else may. */
export const unixListenSourceType = sourceType(
  z
    .object({
      type: z.literal('unix-listen'),
      path: specFields.path,
      /** Mode of the socket file: connecting needs write permission on it. @default "0660" */
      socketMode: z
        .string()
        .regex(/^0?[0-7]{3}$/)
        .optional(),
      /** Group of the socket file (a name or a numeric gid); the daemon's own group when absent. */
      socketGroup: z
        .union([z.string().regex(/^[A-Za-z_][A-Za-z0-9_.-]{0,63}$/), z.number().int().min(0)])
        .optional(),
    })
    .strict(),
  (spec, { logger, reconnect, inherited }) =>
    new SocketListenSource(
      {
        path: spec.path,
        mode: Number.parseInt(spec.socketMode ?? DEFAULT_SOCKET_MODE, 8),
        ...(spec.socketGroup !== undefined ? { group: spec.socketGroup } : {}),
      },
      logger,
      reconnect,
      inherited,
    ),
);
