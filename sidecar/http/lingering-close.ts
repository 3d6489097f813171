/**
 * The close of a connection whose request body the server did not read (refused before
 * it was read, cut off at its deadline, or not wanted by the route).
 *
 * Closing a TCP socket while the peer's bytes wait unread in it makes the kernel answer
 * with a reset and throw away what it had not sent yet: the answer itself, when it was
 * still queued. A client that keeps sending (an upload without a token, an attacker's
 * endless body) then sees a reset instead of its 401: a probe with 2000 such clients lost
 * 27 answers. Node's server closes that way as soon as the answer is written.
 *
 * Instead the server ends its side (the answer, then FIN), lets the parser go on
 * discarding what arrives, and closes once the client ends its side or after
 * LINGER_MS, whichever is first: a client that stops sending when answered closes at
 * once, and one that never stops holds the connection no longer than that, or until
 * the connection guard needs its place (http/connection-guard.ts).
 */
import type { Socket } from 'node:net';

/** How long a connection may go on sending after its answer before it is cut. */
export const LINGER_MS = 1000;

/** Sockets answered and lingering now; the connection guard closes them first when full. */
const lingering = new WeakSet<Socket>();

export function isLingering(socket: Socket): boolean {
  return lingering.has(socket);
}

/**
 * Makes the server's close of `socket` after the current answer a lingering one.
 * `budgeted` is the socket the connection guard counts (the TCP socket under a TLS one).
 */
export function lingerOnClose(socket: Socket, budgeted: Socket): void {
  if (socket.destroyed) return;
  // Node's server closes a connection it will not keep with `destroySoon` once the
  // answer is written: this replaces that one call on this socket only.
  socket.destroySoon = function lingeringClose(this: Socket): void {
    if (this.writable) this.end();
    // Everything the client sent was read already: nothing is left to reset over.
    if (this.readableEnded) {
      this.destroy();
      return;
    }
    lingering.add(budgeted);
    const cut = setTimeout(() => this.destroy(), LINGER_MS);
    cut.unref();
    this.once('close', () => clearTimeout(cut));
    // The client ended its side: nothing more can arrive, close now.
    this.once('end', () => this.destroy());
    this.resume();
  };
}
