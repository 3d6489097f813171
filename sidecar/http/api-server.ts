import {
  createServer,
  type IncomingMessage,
  type Server,
  type ServerResponse,
  STATUS_CODES,
} from 'node:http';
import { createServer as createTlsServer, type Server as TlsServer } from 'node:https';
import type { AddressInfo, Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import type { Logger } from 'pino';
import { asConsoledError, ConsoledError } from '../../common/errors.js';
import { authChallenge, bearerToken, INSUFFICIENT_SCOPE, tokenMatches } from './admin-token.js';
import { ConnectionGuard } from './connection-guard.js';
import type { HttpConfig } from './http-config.js';
import { LINGER_MS, lingerOnClose } from './lingering-close.js';
import type { JsonReply, RequestContext, Router } from './router.js';
import type { TlsMaterial } from './tls-files.js';

export interface ApiServerOptions {
  readonly router: Router;
  readonly adminToken: string;
  /**
   * Checks a bearer token that is not the admin token: returns when it is a valid
   * viewer token (an admin route then answers 403), throws TOKEN_INVALID or
   * TOKEN_EXPIRED otherwise (401). Absent: every other token is TOKEN_INVALID.
   */
  readonly checkViewerToken?: ((token: string) => void) | undefined;
  readonly maxBodyBytes: number;
  readonly http: Readonly<HttpConfig>;
  readonly logger: Logger;
  /** Aborted on shutdown: long-lived responses (follow) end. */
  readonly shutdown: AbortSignal;
  /** True while an upgrade hands over: every route but `/healthz` answers UPGRADING (docs/design.md "Upgrade"). */
  readonly upgrading?: () => boolean;
  /** With a certificate, a second listener serves the same API over TLS (README "TLS"). */
  readonly tls?: TlsMaterial | undefined;
}

/** Sent on every response: error bodies echo input, and no response is meant to be sniffed. */
const NOSNIFF = { 'x-content-type-options': 'nosniff' } as const;
const JSON_MEDIA_TYPE = /^application\/json\s*(?:;.*)?$/i;

export function sendJson(
  res: ServerResponse,
  status: number,
  body: unknown,
  headers: Record<string, string> = {},
): void {
  const text = JSON.stringify(body);
  // A body not read (refused before it was, cut off by its deadline, or not wanted)
  // is never read: the connection closes after the answer instead of draining what
  // may never end, with a lingering close so that the answer is not lost to a reset.
  if (!res.req.complete) {
    res.shouldKeepAlive = false;
    const socket = res.socket as Socket | null;
    if (socket) lingerOnClose(socket, tcpSocketOf(socket));
  }
  res.writeHead(status, {
    'content-type': 'application/json',
    'cache-control': 'no-store',
    ...NOSNIFF,
    ...headers,
  });
  res.end(text);
}

export function sendError(res: ServerResponse, err: ConsoledError): void {
  if (res.headersSent) {
    res.destroy(err);
    return;
  }
  const headers: Record<string, string> = {};
  const challenge = authChallenge(err.code, err.httpStatus);
  if (challenge !== undefined && !res.hasHeader('www-authenticate')) headers['www-authenticate'] = challenge;
  sendJson(res, err.httpStatus, err.toJSON(), headers);
}

/**
 * A whole HTTP error response as raw bytes, for a socket no ServerResponse serves (a
 * refused WebSocket upgrade, a request Node's parser refused): the JSON error body,
 * `nosniff`, the RFC 6750 challenge for a 401, and `Connection: close`.
 */
export function rawErrorResponse(err: ConsoledError): string {
  const body = JSON.stringify(err.toJSON());
  const status = err.httpStatus;
  const challenge = authChallenge(err.code, status);
  return (
    `HTTP/1.1 ${status} ${STATUS_CODES[status] ?? 'Error'}\r\n` +
    'Content-Type: application/json\r\n' +
    `Content-Length: ${Buffer.byteLength(body)}\r\n` +
    'Cache-Control: no-store\r\n' +
    'X-Content-Type-Options: nosniff\r\n' +
    `${challenge !== undefined ? `WWW-Authenticate: ${challenge}\r\n` : ''}` +
    'Connection: close\r\n\r\n' +
    body
  );
}

/** Reads a body of at most `limit` bytes that must arrive within `timeoutMs`. */
function readBody(req: IncomingMessage, limit: number, timeoutMs: number): Promise<Buffer> {
  const declared = Number(req.headers['content-length'] ?? '0');
  if (declared > limit)
    return Promise.reject(new ConsoledError('PAYLOAD_TOO_LARGE', `body larger than ${limit} bytes`));
  return new Promise<Buffer>((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const finish = (err: ConsoledError | null) => {
      clearTimeout(timer);
      req.off('data', onData);
      req.off('end', onEnd);
      req.off('error', onError);
      if (err) {
        req.pause();
        reject(err);
      } else resolve(Buffer.concat(chunks));
    };
    const onData = (chunk: Buffer) => {
      size += chunk.length;
      if (size > limit) finish(new ConsoledError('PAYLOAD_TOO_LARGE', `body larger than ${limit} bytes`));
      else chunks.push(chunk);
    };
    const onEnd = () => finish(null);
    const onError = (err: Error) => finish(new ConsoledError('BAD_REQUEST', `body: ${err.message}`));
    const timer = setTimeout(
      () => finish(new ConsoledError('REQUEST_TIMEOUT', `the body did not arrive within ${timeoutMs} ms`)),
      timeoutMs,
    );
    req.on('data', onData);
    req.on('end', onEnd);
    req.on('error', onError);
  });
}

/**
 * The TCP socket under `socket`: itself on the plain listener, the socket a TLS
 * connection runs over on the TLS one (the connection guard counts TCP sockets).
 */
export function tcpSocketOf(socket: Socket): Socket {
  return (socket as Socket & { _parent?: Socket | null })._parent ?? socket;
}

/**
 * The HTTP API: routing, admin auth (RFC 6750), bounded JSON bodies with a deadline,
 * connection budgets (connection-guard.ts), errors as `{"error":{code,message}}`.
 */
export class ApiServer {
  readonly server: Server;
  readonly guard: ConnectionGuard;

  /** The TLS listener, when `listen.tls` is configured: the same handler, guard and consoles. */
  readonly tlsServer: TlsServer | null;

  constructor(private readonly options: ApiServerOptions) {
    const h = options.http;
    // Node checks the header and request deadlines on this interval (30 s by default).
    const base = { connectionsCheckingInterval: Math.max(100, Math.min(1000, h.headersTimeoutMs / 4)) };
    const handler = (req: IncomingMessage, res: ServerResponse) => void this.handle(req, res);
    this.guard = new ConnectionGuard(h);
    this.server = createServer(base, handler);
    this.wire(this.server);
    this.tlsServer = options.tls
      ? createTlsServer(
          {
            ...base,
            cert: options.tls.cert,
            key: options.tls.key,
            // A handshake that does not finish is a slow client like any other.
            handshakeTimeout: h.headersTimeoutMs,
          },
          handler,
        )
      : null;
    if (this.tlsServer) this.wire(this.tlsServer);
  }

  /** Timeouts, the connection guard and error answers for `server` (either listener). */
  private wire(server: Server): void {
    const h = this.options.http;
    server.requestTimeout = h.requestTimeoutMs;
    server.headersTimeout = Math.min(h.headersTimeoutMs, h.requestTimeoutMs);
    server.keepAliveTimeout = h.keepAliveTimeoutMs;
    // On the TLS listener `connection` gives the TCP socket, before the handshake: the
    // budget counts it from its first byte, as on the plain one.
    server.on('connection', (socket: Socket) => this.guard.accept(socket));
    server.on('upgrade', (req: IncomingMessage) => this.guard.toUpgraded(tcpSocketOf(req.socket)));
    // What Node's parser refuses (malformed requests, header and request deadlines) is
    // answered like every other error instead of with Node's bare status line.
    server.on('clientError', (err: NodeJS.ErrnoException, socket: Duplex) => {
      if (err.code === 'ECONNRESET' || !socket.writable) {
        socket.destroy();
        return;
      }
      const error =
        err.code === 'ERR_HTTP_REQUEST_TIMEOUT'
          ? new ConsoledError('REQUEST_TIMEOUT', 'the request did not arrive in time')
          : new ConsoledError('BAD_REQUEST', `malformed HTTP request (${err.code ?? 'parse error'})`);
      socket.end(rawErrorResponse(error));
      setTimeout(() => socket.destroy(), LINGER_MS).unref();
    });
  }

  /** Serves new TLS connections with `material` (a reload; connections already up keep theirs). */
  setTlsMaterial(material: TlsMaterial): void {
    this.tlsServer?.setSecureContext({ cert: material.cert, key: material.key });
  }

  /** Listens on the TLS address, or on a listening socket inherited at an upgrade (`fd`). */
  async listenTls(target: { host: string; port: number } | { fd: number }): Promise<void> {
    const server = this.tlsServer;
    if (!server) throw new Error('no TLS listener configured');
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(target, () => {
        server.off('error', reject);
        resolve();
      });
    });
  }

  /** The https URL of the TLS listener, or null without one. */
  get tlsUrl(): string | null {
    const address = this.tlsServer?.address() as AddressInfo | string | null | undefined;
    if (!address || typeof address === 'string') return null;
    const host = address.family === 'IPv6' ? `[${address.address}]` : address.address;
    return `https://${host}:${address.port}`;
  }

  /** Closes the idle keep-alive connections of both listeners (an upgrade's start). */
  closeIdleConnections(): void {
    this.server.closeIdleConnections();
    this.tlsServer?.closeIdleConnections();
  }

  /** Closes every open connection of both listeners (shutdown, an upgrade's retirement). */
  closeAllConnections(): void {
    this.server.closeAllConnections();
    this.tlsServer?.closeAllConnections();
  }

  /** Listens on an address, a unix socket path, or a listening socket inherited at an upgrade (`fd`). */
  async listen(target: { host: string; port: number } | { path: string } | { fd: number }): Promise<void> {
    await new Promise<void>((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(target, () => {
        this.server.off('error', reject);
        resolve();
      });
    });
  }

  /** The URL clients use to reach the server (TCP only). */
  get url(): string {
    const address = this.server.address() as AddressInfo | string | null;
    if (!address || typeof address === 'string') return `unix:${String(address)}`;
    const host = address.family === 'IPv6' ? `[${address.address}]` : address.address;
    return `http://${host}:${address.port}`;
  }

  /** Whether a request carries the admin token. */
  isAdmin(req: IncomingMessage): boolean {
    const token = bearerToken(req.headers.authorization);
    return token !== null && tokenMatches(token, this.options.adminToken);
  }

  /**
   * RFC 6750: no token is 401 UNAUTHORIZED; a token that is neither the admin token
   * nor a valid viewer token is 401 TOKEN_INVALID (or TOKEN_EXPIRED); a valid viewer
   * token is 403 FORBIDDEN, with `error="insufficient_scope"`.
   */
  private requireAdmin(req: IncomingMessage, res: ServerResponse): void {
    const token = bearerToken(req.headers.authorization);
    if (token === null)
      throw new ConsoledError('UNAUTHORIZED', 'this call needs Authorization: Bearer <admin token>');
    if (tokenMatches(token, this.options.adminToken)) return;
    if (!this.options.checkViewerToken)
      throw new ConsoledError('TOKEN_INVALID', 'the bearer token is not the admin token');
    this.options.checkViewerToken(token);
    res.setHeader('www-authenticate', INSUFFICIENT_SCOPE);
    throw new ConsoledError('FORBIDDEN', 'a viewer token does not grant admin calls');
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const started = performance.now();
    this.guard.requestArrived(tcpSocketOf(req.socket));
    const url = new URL(req.url ?? '/', 'http://consoled');
    const abort = new AbortController();
    const onShutdown = () => abort.abort();
    this.options.shutdown.addEventListener('abort', onShutdown, { once: true });
    res.on('close', () => {
      abort.abort();
      this.options.shutdown.removeEventListener('abort', onShutdown);
    });
    res.setHeader('x-content-type-options', 'nosniff');
    // During an upgrade this process is about to go: no connection is kept for later.
    if (this.options.upgrading?.()) res.shouldKeepAlive = false;
    try {
      if (this.options.shutdown.aborted) throw new ConsoledError('SHUTTING_DOWN');
      if (this.options.upgrading?.() && url.pathname !== '/healthz') throw new ConsoledError('UPGRADING');
      const matched = this.options.router.match(req.method ?? 'GET', url.pathname);
      if (!('route' in matched)) {
        if (matched.allowed.length > 0) {
          res.setHeader('allow', matched.allowed.join(', '));
          throw new ConsoledError('METHOD_NOT_ALLOWED', `${req.method} not allowed on ${url.pathname}`);
        }
        throw new ConsoledError('NOT_FOUND', `no route for ${url.pathname}`);
      }
      const { route, params } = matched;
      if (route.auth === 'admin') this.requireAdmin(req, res);
      if (
        this.guard.isReserved(tcpSocketOf(req.socket)) &&
        route.auth !== 'admin' &&
        url.pathname !== '/healthz'
      ) {
        this.guard.counters.refusedOnReserved++;
        throw new ConsoledError(
          'TOO_MANY_CONNECTIONS',
          `at most ${this.options.http.maxConnections} HTTP connections; the rest are kept for health checks and admin calls`,
        );
      }
      const ctx: RequestContext = {
        req,
        res,
        url,
        params,
        signal: abort.signal,
        json: async () => {
          const type = req.headers['content-type'];
          const hasBody =
            req.headers['transfer-encoding'] !== undefined ||
            Number(req.headers['content-length'] ?? '0') > 0;
          if (!hasBody) throw new ConsoledError('BAD_JSON', 'a JSON body is required');
          if (type === undefined || !JSON_MEDIA_TYPE.test(type)) {
            throw new ConsoledError(
              'UNSUPPORTED_MEDIA_TYPE',
              `the body must be Content-Type: application/json, not ${JSON.stringify((type ?? '').slice(0, 100))}`,
            );
          }
          const body = await readBody(req, this.options.maxBodyBytes, this.options.http.bodyTimeoutMs);
          if (body.length === 0) throw new ConsoledError('BAD_JSON', 'a JSON body is required');
          try {
            return JSON.parse(body.toString('utf8')) as unknown;
          } catch (err) {
            throw new ConsoledError('BAD_JSON', `body is not valid JSON: ${(err as Error).message}`);
          }
        },
        longLived: () => {
          if (!this.guard.toFollower(tcpSocketOf(req.socket))) {
            throw new ConsoledError(
              'TOO_MANY_FOLLOWERS',
              `at most ${this.options.http.maxFollowers} follow=1 readers at once`,
            );
          }
          // The connection ends with the response: it is counted as a follower until then.
          res.shouldKeepAlive = false;
        },
      };
      const reply: JsonReply | undefined = await route.handler(ctx);
      if (reply && !res.headersSent) sendJson(res, reply.status, reply.body, reply.headers);
    } catch (err) {
      const error = asConsoledError(err);
      if (error.code === 'INTERNAL') this.options.logger.error({ err, url: url.pathname }, 'request failed');
      sendError(res, error);
    } finally {
      this.options.logger.debug(
        {
          method: req.method,
          path: url.pathname,
          status: res.statusCode,
          ms: Math.round(performance.now() - started),
        },
        'request',
      );
    }
  }

  async close(): Promise<void> {
    const closing = (server: Server) =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeIdleConnections();
      });
    await Promise.all([closing(this.server), ...(this.tlsServer ? [closing(this.tlsServer)] : [])]);
  }
}
