/**
 * A live chardev connection that a source let go of without closing it, for another
 * source to adopt: the successor at an upgrade, the old process itself when an upgrade
 * fails, or a guest adopting a connection made early at start (docs/design.md
 * "Upgrade"). Only node: imports, so that the early start (lifecycle/pre-dial.ts)
 * stays light.
 */
import type { Server, Socket } from 'node:net';
import type { ReadStream } from 'node:tty';
import type { RateLimitState } from '../capture/rate-limiter.js';

export type ChardevHandle =
  /** `tcp`, `unix`: the connection consoled dialled. */
  | { readonly kind: 'socket'; readonly socket: Socket }
  /** `tcp-listen`, `unix-listen`: the listening socket, and the guest's connection when up. */
  | { readonly kind: 'listen'; readonly server: Server; readonly socket: Socket | null }
  /** `pty`: the slave consoled opened. */
  | { readonly kind: 'tty'; readonly tty: ReadStream };

/**
 * How an adopted chardev continues:
 * - `continued`: the same connection goes on (an upgrade): no marker, no boot, as if
 *   nothing happened;
 * - `restarted`: it could not be handed over (`exec`): the program starts again and the
 *   log says so with a `restarted` marker;
 * - `new`: a connection made early at start: an ordinary (re)connect.
 */
export type Continuation = 'continued' | 'restarted' | 'new';

/** What a guest is given to adopt: its chardev, instead of dialling, listening or opening. */
export interface InheritedChardev {
  readonly handle: ChardevHandle | null;
  readonly continuation: Continuation;
  /** At an upgrade: the guest's rate-limit bucket and episode, carried on. */
  readonly rateLimit?: RateLimitState | undefined;
}

/** What a daemon adopts at start: each guest's chardev, and the API's listening socket. */
export interface InheritedHandles {
  readonly guests: Map<string, InheritedChardev>;
  /** The API's listening socket's descriptor, or null to listen as configured. */
  readonly apiFd: number | null;
  /** The TLS listener's socket's descriptor (`listen.tls`), or null. */
  readonly apiTlsFd?: number | null | undefined;
}

/** The file descriptor under a socket, server or tty (Unix), or null when it has none. */
export function fdOf(stream: Socket | Server | ReadStream): number | null {
  const handle = (stream as unknown as { _handle?: { fd?: number } | null })._handle;
  const fd = handle?.fd;
  return typeof fd === 'number' && fd >= 0 ? fd : null;
}

/**
 * Stops reading `stream` now and returns what it had read but not yet delivered.
 * `pause()` alone stops the delivery, not the reads: the stream goes on filling its
 * buffer from the kernel up to its high-water mark, and those bytes would be lost
 * with this process's copy of the descriptor. The reads are stopped on the handle,
 * the buffer is taken, and the reads are stopped again (taking the buffer may ask for
 * more); nothing can arrive in between, since that happens on a later turn of the loop.
 */
export function stopReading(stream: Socket | ReadStream): Buffer[] {
  const handle = (stream as unknown as { _handle?: { reading?: boolean; readStop?: () => number } | null })
    ._handle;
  const stop = () => {
    if (handle?.reading) {
      handle.reading = false;
      handle.readStop?.();
    }
  };
  stream.pause();
  stop();
  const left: Buffer[] = [];
  for (let chunk = stream.read() as Buffer | null; chunk !== null; chunk = stream.read() as Buffer | null)
    left.push(chunk);
  stop();
  return left;
}

/** Destroys every stream of `handle` without ending it: the peer sees no hang-up while another copy lives. */
export function dropHandle(handle: ChardevHandle): void {
  switch (handle.kind) {
    case 'socket':
      handle.socket.destroy();
      return;
    case 'listen':
      handle.socket?.destroy();
      handle.server.close();
      return;
    case 'tty':
      handle.tty.destroy();
      return;
  }
}
