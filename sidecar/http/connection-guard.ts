/**
 * The API server's connection budget. Every accepted socket is in one class:
 * - `general`: ordinary requests, at most `http.maxConnections`;
 * - `reserved`: accepted while the general budget is full, at most
 *   `http.reservedConnections`, and serving only `GET /healthz` and admin calls, so
 *   that a flood of unauthenticated connections cannot lock the operator out. When
 *   the reserve is full too, a new connection takes the place of the oldest reserved
 *   one that has not sent a whole request yet (a flood's sockets never do; a health
 *   check sends its request at once and is then never evicted);
 * - `follower`: a `follow=1` log reader, at most `http.maxFollowers`, long-lived by design;
 * - `upgraded`: a WebSocket console, which the console server budgets itself.
 * A socket beyond the general and reserved budgets is closed as soon as it is accepted.
 * A connection that was answered and lingers before its close (http/lingering-close.ts)
 * keeps its place only while nobody needs it: a new connection with no room takes the
 * place of the oldest one first, as it already has its answer.
 */
import type { Socket } from 'node:net';
import { isLingering } from './lingering-close.js';

type SocketClass = 'general' | 'reserved' | 'follower' | 'upgraded';

export interface ConnectionGuardLimits {
  readonly maxConnections: number;
  readonly reservedConnections: number;
  readonly maxFollowers: number;
}

export interface ConnectionGuardCounters {
  /** Sockets closed at accept: both budgets were full, and no reserved socket could be evicted. */
  droppedAtAccept: number;
  /** Reserved sockets closed, before sending a request, to make room for a new one. */
  evicted: number;
  /** Answered sockets closed before their linger ended, to make room for a new one. */
  lingerCut: number;
  /** Requests refused on a reserved socket (not health, not admin). */
  refusedOnReserved: number;
  /** `follow=1` requests refused: `maxFollowers` reached. */
  refusedFollowers: number;
}

export class ConnectionGuard {
  private readonly classes = new Map<Socket, SocketClass>();
  /** Reserved sockets that have not sent a whole request yet, oldest first. */
  private readonly idleReserved = new Set<Socket>();
  private readonly counts: Record<SocketClass, number> = {
    general: 0,
    reserved: 0,
    follower: 0,
    upgraded: 0,
  };
  readonly counters: ConnectionGuardCounters = {
    droppedAtAccept: 0,
    evicted: 0,
    lingerCut: 0,
    refusedOnReserved: 0,
    refusedFollowers: 0,
  };

  constructor(private readonly limits: ConnectionGuardLimits) {}

  /** Classifies a new socket, or destroys it when there is no room. */
  accept(socket: Socket): void {
    let cls: SocketClass = 'general';
    if (this.counts.general >= this.limits.maxConnections) this.cutLingering('general');
    if (this.counts.general >= this.limits.maxConnections) {
      if (
        this.counts.reserved >= this.limits.reservedConnections &&
        !this.cutLingering('reserved') &&
        !this.evictIdleReserved()
      ) {
        this.counters.droppedAtAccept++;
        socket.destroy();
        return;
      }
      cls = 'reserved';
      this.idleReserved.add(socket);
    }
    this.set(socket, cls);
    socket.once('close', () => this.forget(socket));
  }

  /** A whole request arrived on `socket`: a reserved socket is no longer evictable. */
  requestArrived(socket: Socket): void {
    this.idleReserved.delete(socket);
  }

  /** Closes the oldest answered socket of `cls` still lingering; false when there is none. */
  private cutLingering(cls: SocketClass): boolean {
    for (const [socket, current] of this.classes) {
      if (current !== cls || !isLingering(socket)) continue;
      this.counters.lingerCut++;
      this.forget(socket);
      socket.destroy();
      return true;
    }
    return false;
  }

  private evictIdleReserved(): boolean {
    const [oldest] = this.idleReserved;
    if (oldest === undefined) return false;
    this.counters.evicted++;
    this.forget(oldest);
    oldest.destroy();
    return true;
  }

  private forget(socket: Socket): void {
    const current = this.classes.get(socket);
    if (current !== undefined) this.counts[current]--;
    this.classes.delete(socket);
    this.idleReserved.delete(socket);
  }

  /** Whether `socket` was accepted into the reserved room (health checks and admin calls only). */
  isReserved(socket: Socket): boolean {
    return this.classes.get(socket) === 'reserved';
  }

  /** Moves `socket` to the followers; false when `maxFollowers` are open already. */
  toFollower(socket: Socket): boolean {
    const current = this.classes.get(socket);
    if (current === 'follower') return true;
    if (this.counts.follower >= this.limits.maxFollowers) {
      this.counters.refusedFollowers++;
      return false;
    }
    this.set(socket, 'follower');
    return true;
  }

  /** `socket` became a WebSocket: the console server budgets it from now on. */
  toUpgraded(socket: Socket): void {
    this.idleReserved.delete(socket);
    if (this.classes.has(socket)) this.set(socket, 'upgraded');
  }

  /** Open sockets per class. */
  snapshot(): Readonly<Record<SocketClass, number>> {
    return { ...this.counts };
  }

  private set(socket: Socket, cls: SocketClass): void {
    const current = this.classes.get(socket);
    if (current !== undefined) this.counts[current]--;
    this.classes.set(socket, cls);
    this.counts[cls]++;
  }
}
