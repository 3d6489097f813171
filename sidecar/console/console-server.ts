import type { IncomingMessage, Server } from 'node:http';
import type { Duplex } from 'node:stream';
import type { Logger } from 'pino';
import { type RawData, WebSocket, WebSocketServer } from 'ws';
import { asConsoledError, ConsoledError } from '../../common/errors.js';
import { assertGuestId } from '../../common/guest-id.js';
import { bearerToken } from '../http/admin-token.js';
import { rawErrorResponse } from '../http/api-server.js';
import { addressBudgetKey, type TrustedProxies } from '../http/forwarded.js';
import type { AuditLog } from './audit-log.js';
import type { ConsoleAuth, ConsoleGrant } from './console-auth.js';
import type { ConsoleCluster, OwnerAddress } from './console-cluster.js';
import type { ConsoleConfig } from './console-config.js';
import { HOST_CREDENTIAL_HEADER, type HostCredential, PROXIED_CLIENT_HEADER } from './host-credential.js';
import { type ConsoleHub, closeViewer } from './hub.js';
import { checkOrigin, isAllowedHost } from './origin-check.js';
import { type ClientRequest, parseAuthFrame, parseClientMessage, sendErrorAndClose } from './protocol.js';
import { TokenSessions } from './token-sessions.js';
import { type LinkCounters, UpstreamLink } from './upstream-link.js';
import { socketOf, type Viewer } from './viewer.js';
import type { ViewerMode } from './viewer-token.js';

/** `GET /v1/guests/{id}/console`. */
const CONSOLE_PATH = /^\/v1\/guests\/([^/]+)\/console$/;
/** Room for an auth frame (tokens are at most 2048 characters) whatever the keystroke limit. */
const MIN_PAYLOAD_BYTES = 4096;

/** Counters across all guests, for metrics. */
export interface ServerCounters {
  accepted: number;
  refused: Map<string, number>;
  keepaliveTimeouts: number;
  idleTimeouts: number;
  oversizedFrames: number;
  /** Connections this host proxied to the guest's owner (docs/design.md "Console across hosts"). */
  proxy: LinkCounters;
  /** Connections proxied here by another host, with a valid host credential. */
  proxiedIn: number;
}

/** One WebSocket on the console endpoint, from the upgrade to its close. */
interface Connection {
  readonly ws: WebSocket;
  readonly guestId: string;
  readonly from: number | null;
  readonly wantMode: ViewerMode | undefined;
  readonly remote: string;
  /** The client's address without port (forwarded behind a trusted proxy). */
  readonly address: string;
  readonly origin: string | undefined;
  /** Frees this connection's place in the pending budget; null once admitted or when it had none. */
  releasePending: (() => void) | null;
  /** Counted under `maxConnections` (admitted with a viewer token). */
  counted: boolean;
  viewer: Viewer | null;
  hub: ConsoleHub | null;
  /**
   * The host that served the guest when the upgrade came, when that is another host:
   * this connection is proxied there once admitted. Null: served here.
   */
  readonly owner: OwnerAddress | null;
  /** The viewer's token as presented (null: none), for the owner when proxied. */
  token: string | null;
  link: UpstreamLink | null;
  alive: boolean;
  lastActivityMs: number;
  authTimer: NodeJS.Timeout | null;
}

export interface ConsoleServerOptions {
  readonly config: Readonly<ConsoleConfig>;
  readonly auth: ConsoleAuth;
  readonly audit: AuditLog;
  readonly logger: Logger;
  /** The hub of an attached guest. */
  readonly hubOf: (guestId: string) => ConsoleHub | undefined;
  /** Aborted on shutdown: no more upgrades, connections not yet admitted are closed. */
  readonly shutdown: AbortSignal;
  /** True while an upgrade hands the guests over: new consoles are refused with UPGRADING. */
  readonly upgrading: () => boolean;
  /** Whose forwarded headers to believe for the client's address, scheme and host. */
  readonly proxies: TrustedProxies;
  /** The cluster, once replication is up; null without Redis (every console is served locally). */
  readonly cluster: () => ConsoleCluster | null;
  /** Signs this host's proxied requests and checks other hosts' (host-credential.ts). */
  readonly credential: HostCredential;
  /**
   * Throws GUEST_ARRIVING while a guest arriving in a migration cannot serve a resume
   * (`from`) yet: its log is not in the stream's numbering, or the writer lock its
   * source kept is not loaded.
   */
  readonly checkArrival: (guestId: string, from: number | null) => void;
}

/** What an upgrade request says about the connection to be. */
interface UpgradeRequest {
  guestId: string;
  from: number | null;
  wantMode: ViewerMode | undefined;
  remote: string;
  address: string;
  origin: string | undefined;
  owner: OwnerAddress | null;
  token: string | null;
}

/** Answers an upgrade request with an HTTP error and the error JSON, without upgrading. */
function rejectUpgrade(socket: Duplex, err: ConsoledError): void {
  socket.on('error', () => undefined);
  socket.end(rawErrorResponse(err));
  setTimeout(() => socket.destroy(), 1000).unref();
}

/** A close code a server may send: the owner's, unless it is one only a peer may report. */
function sendableCloseCode(code: number): number {
  const valid =
    (code >= 1000 && code <= 1014 && ![1004, 1005, 1006].includes(code)) || (code >= 3000 && code <= 4999);
  return valid ? code : 1011;
}

function parseFrom(raw: string | null): number | null {
  if (raw === null) return null;
  if (!/^\d{1,16}$/.test(raw) || !Number.isSafeInteger(Number(raw))) {
    throw new ConsoledError('BAD_PARAMETER', 'from must be a non-negative integer offset');
  }
  return Number(raw);
}

function parseMode(raw: string | null): ViewerMode | undefined {
  if (raw === null) return undefined;
  if (raw === 'ro' || raw === 'rw') return raw;
  throw new ConsoledError('BAD_PARAMETER', 'mode must be ro or rw');
}

/**
 * The WebSocket side of the console: upgrades on `GET /v1/guests/{id}/console`,
 * checks Origin, limits and credentials, then hands each authenticated socket to
 * its guest's hub and relays frames: binary as keystrokes, text as control messages.
 * It also keeps connections honest: ping/pong keepalive, an idle timeout, `maxPayload`.
 */
export class ConsoleServer {
  readonly counters: ServerCounters = {
    accepted: 0,
    refused: new Map(),
    keepaliveTimeouts: 0,
    idleTimeouts: 0,
    oversizedFrames: 0,
    proxy: { opened: 0, follows: 0, failures: 0, droppedHeldBytes: 0 },
    proxiedIn: 0,
  };
  private readonly wss: WebSocketServer;
  private readonly connections = new Set<Connection>();
  /** Connections waiting for their auth frame, per client address. */
  private readonly pendingByAddress = new Map<string, number>();
  private pendingTotal = 0;
  /** Connections admitted with a viewer token (the admin's are not counted). */
  private authenticated = 0;
  private keepaliveTimer: NodeJS.Timeout | null = null;
  /** The viewer tokens of admitted connections: expiry, renewal, revocation (README "Tokens"). */
  readonly sessions: TokenSessions;

  constructor(private readonly options: ConsoleServerOptions) {
    this.sessions = new TokenSessions(options);
    this.wss = new WebSocketServer({
      noServer: true,
      clientTracking: false,
      // Console output is mostly already-dense escape sequences and the cost is per frame: no deflate.
      perMessageDeflate: false,
      maxPayload: Math.max(options.config.maxKeystrokeFrameBytes, MIN_PAYLOAD_BYTES),
    });
    options.shutdown.addEventListener('abort', () => this.onShutdown(), { once: true });
  }

  /** Connections open now, authenticated or not. */
  get connectionCount(): number {
    return this.connections.size;
  }

  /** Connections waiting for their auth frame now. */
  get pendingCount(): number {
    return this.pendingTotal;
  }

  /**
   * Takes a place in the pending budget for `address` (an IPv6 /64 counts as one
   * address), or throws TOO_MANY_PENDING.
   * Returns its release, which is idempotent.
   */
  private takePending(address: string): () => void {
    const c = this.options.config;
    const mine = this.pendingByAddress.get(address) ?? 0;
    if (mine >= c.maxPendingPerAddress) {
      throw new ConsoledError(
        'TOO_MANY_PENDING',
        `at most ${c.maxPendingPerAddress} console connections from one address may wait for their auth frame`,
      );
    }
    if (this.pendingTotal >= c.maxPendingConnections) {
      throw new ConsoledError(
        'TOO_MANY_PENDING',
        `at most ${c.maxPendingConnections} console connections may wait for their auth frame`,
      );
    }
    this.pendingByAddress.set(address, mine + 1);
    this.pendingTotal++;
    let held = true;
    return () => {
      if (!held) return;
      held = false;
      this.pendingTotal--;
      const left = (this.pendingByAddress.get(address) ?? 1) - 1;
      if (left > 0) this.pendingByAddress.set(address, left);
      else this.pendingByAddress.delete(address);
    };
  }

  /** Throws TOO_MANY_CONNECTIONS when `grant` (not the admin's) would exceed `maxConnections`. */
  private checkConnectionLimit(grant: ConsoleGrant): void {
    if (grant.tokenId === 'admin') return;
    const max = this.options.config.maxConnections;
    if (this.authenticated >= max)
      throw new ConsoledError('TOO_MANY_CONNECTIONS', `at most ${max} console connections per host`);
  }

  /** Serves upgrades on `servers` (the plain listener, and the TLS one when configured). */
  listen(...servers: Server[]): void {
    for (const server of servers) {
      server.on(
        'upgrade',
        (req: IncomingMessage, socket: Duplex, head: Buffer) => void this.onUpgrade(req, socket, head),
      );
    }
    this.keepaliveTimer = setInterval(() => this.sweep(), this.options.config.keepaliveIntervalMs).unref();
  }

  private refuse(code: string): void {
    this.counters.refused.set(code, (this.counters.refused.get(code) ?? 0) + 1);
  }

  /**
   * The other host a proxied request comes from, when it carries a host credential
   * (throws HOST_AUTH_FAILED when that does not verify); null for a direct client.
   */
  private proxiedBy(req: IncomingMessage): { hostId: string; client: string } | null {
    const header = req.headers[HOST_CREDENTIAL_HEADER];
    if (header === undefined) return null;
    const client = req.headers[PROXIED_CLIENT_HEADER];
    if (typeof header !== 'string' || (client !== undefined && typeof client !== 'string'))
      throw new ConsoledError('HOST_AUTH_FAILED', 'one host credential and one client address, please');
    return this.options.credential.verify(header, req.url ?? '', client ?? '');
  }

  /**
   * Whether `guestId`'s console is served here or proxied to its owner; throws
   * GUEST_NOT_FOUND when neither (a request proxied here is served here or not at
   * all: one hop only).
   */
  private placeOf(guestId: string, proxiedIn: boolean): 'here' | 'proxy' {
    const cluster = this.options.cluster();
    const hub = this.options.hubOf(guestId);
    const place = cluster ? cluster.place(guestId) : hub ? 'here' : 'elsewhere';
    if (hub && place !== 'elsewhere') return 'here';
    if (cluster && !proxiedIn) return 'proxy';
    throw new ConsoledError('GUEST_NOT_FOUND', `guest ${guestId} is not attached here`);
  }

  private async onUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://consoled');
    const client = this.options.proxies.client(req);
    let address = client.address;
    let remote = client.proxied
      ? client.address
      : `${req.socket.remoteAddress ?? '?'}:${req.socket.remotePort ?? '?'}`;
    const origin = req.headers.origin;
    let guestId: string | null = null;
    let jti: string | undefined;
    let releasePending: (() => void) | null = null;
    try {
      const match = CONSOLE_PATH.exec(url.pathname);
      if (!match) throw new ConsoledError('NOT_FOUND', `no WebSocket endpoint at ${url.pathname}`);
      const via = this.proxiedBy(req);
      if (via) {
        // Another host of the cluster proxies a viewer: its address is the viewer's.
        address = via.client || address;
        remote = `${address} via ${via.hostId}`;
        this.counters.proxiedIn++;
      }
      guestId = assertGuestId(decodeURIComponent(match[1] ?? ''));
      if (this.options.shutdown.aborted) throw new ConsoledError('SHUTTING_DOWN');
      if (this.options.upgrading()) throw new ConsoledError('UPGRADING');
      checkOrigin(origin, client, this.options.config.allowedOrigins);
      if (!this.options.auth.requireAuth && !isAllowedHost(client.host, this.options.config.allowedHosts)) {
        throw new ConsoledError(
          'FORBIDDEN',
          'without console auth only localhost, 127.0.0.1, [::1] or console.allowedHosts may be the Host',
        );
      }
      const proxied = this.placeOf(guestId, via !== null) === 'proxy';
      const from = parseFrom(url.searchParams.get('from'));
      const wantMode = parseMode(url.searchParams.get('mode'));
      const owner = proxied ? await this.locateOwner(guestId) : null;
      if (!proxied) this.options.checkArrival(guestId, from);
      // A token in the Authorization header is checked before upgrading; else the first
      // frame carries it, and until then the connection uses the pending budget.
      let grant: ConsoleGrant | null = null;
      let token: string | null = null;
      if (req.headers.authorization !== undefined) {
        token = bearerToken(req.headers.authorization) ?? null;
        grant = this.check(token, guestId, wantMode, proxied);
        jti = grant.tokenId;
        this.checkConnectionLimit(grant);
        if (!proxied) await this.checkShared(grant, address);
        if (socket.destroyed) return;
      } else {
        releasePending = this.takePending(addressBudgetKey(address));
        // A malformed handshake is answered by handleUpgrade itself, which then never calls back.
        socket.once('close', releasePending);
      }
      const request: UpgradeRequest = { guestId, from, wantMode, remote, address, origin, owner, token };
      const release = releasePending;
      this.wss.handleUpgrade(req, socket, head, (ws) => this.onConnection(ws, request, grant, release));
    } catch (err) {
      releasePending?.();
      const error = asConsoledError(err);
      this.refuse(error.code);
      if (error.code !== 'NOT_FOUND') {
        this.options.audit.refused({
          guest: guestId,
          code: error.code,
          jti,
          address,
          remote,
          origin,
        });
      }
      rejectUpgrade(socket, error);
    }
  }

  private onConnection(
    ws: WebSocket,
    request: UpgradeRequest,
    grant: ConsoleGrant | null,
    releasePending: (() => void) | null,
  ): void {
    const conn: Connection = {
      ws,
      ...request,
      releasePending,
      counted: false,
      viewer: null,
      hub: null,
      link: null,
      alive: true,
      lastActivityMs: Date.now(),
      authTimer: null,
    };
    this.connections.add(conn);
    ws.on('error', (err) => {
      if ((err as NodeJS.ErrnoException).code === 'WS_ERR_UNSUPPORTED_MESSAGE_LENGTH')
        this.counters.oversizedFrames++;
      this.options.logger.debug({ err: err.message, remote: conn.remote }, 'console socket error');
    });
    ws.on('pong', () => {
      conn.alive = true;
    });
    ws.on('close', (code, reason) => {
      this.connections.delete(conn);
      conn.releasePending?.();
      if (conn.counted) this.authenticated--;
      if (conn.authTimer) clearTimeout(conn.authTimer);
      if (conn.viewer) this.sessions.leave(conn.viewer);
      if (conn.viewer && conn.hub) conn.hub.leave(conn.viewer, code, reason.toString('utf8'));
      conn.link?.close();
    });
    ws.on('message', (data, isBinary) => this.onMessage(conn, data, isBinary));
    if (this.options.shutdown.aborted) {
      this.closeWith(conn, new ConsoledError('SHUTTING_DOWN'));
      return;
    }
    if (grant) {
      this.admit(conn, grant);
      return;
    }
    conn.authTimer = setTimeout(() => {
      conn.authTimer = null;
      this.refuseConnection(
        conn,
        new ConsoledError('AUTH_TIMEOUT', `no auth frame within ${this.options.config.authTimeoutMs} ms`),
      );
    }, this.options.config.authTimeoutMs);
  }

  private onMessage(conn: Connection, data: RawData, isBinary: boolean): void {
    conn.lastActivityMs = Date.now();
    const bytes = Array.isArray(data)
      ? Buffer.concat(data)
      : Buffer.isBuffer(data)
        ? data
        : Buffer.from(data);
    if (conn.link) {
      conn.link.fromViewer(bytes, isBinary);
      return;
    }
    if (!conn.viewer) {
      if (conn.authTimer === null) return; // refused or closing: ignore what is still in flight
      clearTimeout(conn.authTimer);
      conn.authTimer = null;
      this.authenticate(conn, bytes, isBinary);
      return;
    }
    const viewer = conn.viewer;
    const hub = conn.hub!;
    if (isBinary) {
      if (bytes.length > this.options.config.maxKeystrokeFrameBytes) {
        this.counters.oversizedFrames++;
        closeViewer(
          viewer,
          new ConsoledError(
            'PAYLOAD_TOO_LARGE',
            `keystroke frames are at most ${this.options.config.maxKeystrokeFrameBytes} bytes`,
          ),
        );
        return;
      }
      hub.keystrokes(viewer, bytes);
      return;
    }
    let request: ClientRequest;
    try {
      request = parseClientMessage(bytes.toString('utf8'));
    } catch (err) {
      const error = asConsoledError(err);
      viewer.sendError(error.code, error.message);
      return;
    }
    if (request.type === 'renew') this.sessions.renew(viewer);
    else hub.control(viewer, request);
  }

  private authenticate(conn: Connection, bytes: Buffer, isBinary: boolean): void {
    try {
      const token = parseAuthFrame(bytes, isBinary);
      conn.token = token ?? null;
      const proxied = conn.owner !== null;
      const grant = this.check(token, conn.guestId, conn.wantMode, proxied);
      if (proxied) {
        this.admit(conn, grant);
        return;
      }
      void this.checkShared(grant, conn.address).then(
        () => {
          if (conn.ws.readyState === WebSocket.OPEN) this.admit(conn, grant);
        },
        (err: unknown) => this.refuseConnection(conn, asConsoledError(err), grant.tokenId),
      );
    } catch (err) {
      this.refuseConnection(conn, asConsoledError(err));
    }
  }

  /**
   * The registered host that owns `guestId`'s stream, where the connection is proxied;
   * throws GUEST_NOT_FOUND when there is none (nothing to proxy to).
   */
  private async locateOwner(guestId: string): Promise<OwnerAddress> {
    let owner: OwnerAddress | null | undefined;
    try {
      owner = await this.options.cluster()?.locateOwner(guestId);
    } catch (err) {
      throw new ConsoledError(
        'UPSTREAM_UNAVAILABLE',
        `the owner of ${guestId} cannot be looked up: ${(err as Error).message}`,
      );
    }
    if (!owner) throw new ConsoledError('GUEST_NOT_FOUND', `no host of the cluster runs guest ${guestId}`);
    return owner;
  }

  /**
   * Checks a credential. For a guest served here it is spent (single use); for one
   * proxied to its owner it is checked in full but spent only by the owner.
   */
  private check(
    token: string | null | undefined,
    guestId: string,
    wantMode: ViewerMode | undefined,
    proxied: boolean,
  ): ConsoleGrant {
    return proxied
      ? this.options.auth.verifyAtEdge(token, guestId, wantMode)
      : this.options.auth.verify(token, guestId, wantMode);
  }

  /**
   * Redis' word on a token, where there is one (console-auth.ts): a revocation made
   * on another host, a single-use token spent there (and spent there now).
   */
  private async checkShared(grant: ConsoleGrant, address: string): Promise<void> {
    for (const missed of await this.options.auth.checkShared(grant)) {
      this.options.logger.warn(
        { jti: grant.tokenId, address },
        missed === 'spend'
          ? 'single-use token recorded on this host only: Redis did not answer'
          : 'token revocations checked on this host only: Redis did not answer',
      );
    }
  }

  /** Joins an admitted connection to the guest's owner (upstream-link.ts). */
  private proxy(conn: Connection, grant: ConsoleGrant): void {
    const cluster = this.options.cluster();
    if (!cluster) throw new ConsoledError('GUEST_NOT_FOUND', `guest ${conn.guestId} is not attached here`);
    this.checkConnectionLimit(grant);
    const ws = conn.ws;
    conn.link = new UpstreamLink(
      {
        guestId: conn.guestId,
        token: grant.tokenId === 'admin' ? this.options.auth.adminUpstreamToken(conn.guestId) : conn.token,
        wantMode: conn.wantMode,
        from: conn.from,
        client: conn.address,
        owner: conn.owner,
        cluster,
        credential: this.options.credential,
        logger: this.options.logger,
        downstream: {
          send: (data, isBinary) => {
            if (ws.readyState === WebSocket.OPEN) ws.send(data, { binary: isBinary });
          },
          writeRaw: (frames) => {
            // The owner's frames are server frames already: the viewer's socket takes them as
            // they are (as viewer.ts writes its own binary frames).
            if (ws.readyState === WebSocket.OPEN) socketOf(ws).write(frames);
          },
          get bufferedAmount() {
            return ws.bufferedAmount;
          },
          onDrain: (resume) => {
            const socket = socketOf(ws);
            const done = (): void => {
              socket.off('drain', done);
              socket.off('close', done);
              resume();
            };
            socket.on('drain', done);
            socket.on('close', done);
          },
          close: (code, reason, error) => {
            if (error) this.closeWith(conn, error);
            else if (ws.readyState === WebSocket.OPEN) {
              ws.close(sendableCloseCode(code), reason);
              setTimeout(() => ws.terminate(), 2000).unref();
            }
          },
        },
      },
      this.counters.proxy,
    );
    this.noteAdmitted(conn, grant);
    conn.link.start();
  }

  /** An admitted connection leaves the pending budget and counts under `maxConnections`. */
  private noteAdmitted(conn: Connection, grant: ConsoleGrant): void {
    conn.releasePending?.();
    conn.releasePending = null;
    if (grant.tokenId !== 'admin') {
      conn.counted = true;
      this.authenticated++;
    }
    this.counters.accepted++;
  }

  private admit(conn: Connection, grant: ConsoleGrant): void {
    if (conn.owner !== null) {
      try {
        this.proxy(conn, grant);
      } catch (err) {
        this.refuseConnection(conn, asConsoledError(err), grant.tokenId);
      }
      return;
    }
    const hub = this.options.hubOf(conn.guestId);
    try {
      if (!hub) throw new ConsoledError('GUEST_NOT_FOUND', `guest ${conn.guestId} is not attached here`);
      this.checkConnectionLimit(grant);
      this.options.auth.assertNotRevoked(grant); // revoked while Redis was asked
      const viewer = hub.join(
        conn.ws,
        {
          mode: grant.mode,
          name: grant.name,
          tokenId: grant.tokenId,
          chain: grant.token?.chain,
          remote: conn.remote,
          origin: conn.origin,
        },
        conn.from,
      );
      conn.viewer = viewer;
      conn.hub = hub;
      this.noteAdmitted(conn, grant);
      this.sessions.admit(viewer, grant, conn.address);
    } catch (err) {
      this.refuseConnection(conn, asConsoledError(err), grant.tokenId);
    }
  }

  private refuseConnection(conn: Connection, err: ConsoledError, jti?: string): void {
    this.refuse(err.code);
    this.options.audit.refused({
      guest: conn.guestId,
      code: err.code,
      jti,
      address: conn.address,
      remote: conn.remote,
      origin: conn.origin,
    });
    this.closeWith(conn, err);
  }

  private closeWith(conn: Connection, err: ConsoledError): void {
    const ws = conn.ws;
    sendErrorAndClose(ws, err);
    setTimeout(() => ws.terminate(), 2000).unref();
  }

  /** Keepalive and idle timeout, every `keepaliveIntervalMs`. */
  private sweep(): void {
    const now = Date.now();
    const idleMs = this.options.config.idleTimeoutMs;
    for (const conn of this.connections) {
      if (!conn.alive) {
        // No pong since the last ping: the peer is gone or wedged.
        this.counters.keepaliveTimeouts++;
        conn.ws.terminate();
        continue;
      }
      if (idleMs > 0 && (conn.viewer || conn.link) && now - conn.lastActivityMs > idleMs) {
        this.counters.idleTimeouts++;
        const idle = new ConsoledError('IDLE_TIMEOUT', `nothing received for ${idleMs} ms`);
        if (conn.viewer) closeViewer(conn.viewer, idle);
        else this.closeWith(conn, idle);
        continue;
      }
      conn.alive = false;
      conn.ws.ping();
    }
  }

  /** Stops accepting; connections not yet admitted close now, viewers close with their hubs. */
  private onShutdown(): void {
    this.options.audit.endEpisodes(true);
    if (this.keepaliveTimer) clearInterval(this.keepaliveTimer);
    this.keepaliveTimer = null;
    for (const conn of this.connections) {
      if (!conn.viewer) this.closeWith(conn, new ConsoledError('SHUTTING_DOWN'));
    }
  }

  /**
   * Ends the connections this host proxies (an upgrade hands over: the viewers
   * reconnect to the successor, with `from`, and it proxies them again).
   */
  closeProxied(err: ConsoledError): void {
    for (const conn of this.connections) if (conn.link) this.closeWith(conn, err);
  }
}
