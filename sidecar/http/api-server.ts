import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Logger } from 'pino';
import { asConsoledError, ConsoledError } from '../../common/errors.js';
import { bearerToken, tokenMatches } from '../admin-token.js';
import type { JsonReply, RequestContext, Router } from './router.js';

export interface ApiServerOptions {
  readonly router: Router;
  readonly adminToken: string;
  readonly maxBodyBytes: number;
  readonly logger: Logger;
  /** Aborted on shutdown: long-lived responses (follow) end. */
  readonly shutdown: AbortSignal;
}

export function sendJson(
  res: ServerResponse,
  status: number,
  body: unknown,
  headers: Record<string, string> = {},
): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'no-store', ...headers });
  res.end(text);
}

export function sendError(res: ServerResponse, err: ConsoledError): void {
  if (res.headersSent) {
    res.destroy(err);
    return;
  }
  const headers: Record<string, string> =
    err.code === 'UNAUTHORIZED' || err.code === 'FORBIDDEN' ? { 'www-authenticate': 'Bearer' } : {};
  sendJson(res, err.httpStatus, err.toJSON(), headers);
}

async function readBody(req: IncomingMessage, limit: number): Promise<Buffer> {
  const declared = Number(req.headers['content-length'] ?? '0');
  if (declared > limit) throw new ConsoledError('PAYLOAD_TOO_LARGE', `body larger than ${limit} bytes`);
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > limit) throw new ConsoledError('PAYLOAD_TOO_LARGE', `body larger than ${limit} bytes`);
    chunks.push(chunk);
  }
  return Buffer.concat(chunks);
}

/** The HTTP API: routing, admin auth, bounded JSON bodies, errors as `{"error":{code,message}}`. */
export class ApiServer {
  readonly server: Server;

  constructor(private readonly options: ApiServerOptions) {
    this.server = createServer((req, res) => void this.handle(req, res));
    this.server.headersTimeout = 10_000;
    this.server.requestTimeout = 0; // follow=1 responses are long-lived
    this.server.keepAliveTimeout = 5_000;
  }

  async listen(target: { host: string; port: number } | { path: string }): Promise<void> {
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

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const started = performance.now();
    const url = new URL(req.url ?? '/', 'http://consoled');
    const abort = new AbortController();
    const onShutdown = () => abort.abort();
    this.options.shutdown.addEventListener('abort', onShutdown, { once: true });
    res.on('close', () => {
      abort.abort();
      this.options.shutdown.removeEventListener('abort', onShutdown);
    });
    try {
      if (this.options.shutdown.aborted) throw new ConsoledError('SHUTTING_DOWN');
      const matched = this.options.router.match(req.method ?? 'GET', url.pathname);
      if (!('route' in matched)) {
        if (matched.allowed.length > 0) {
          res.setHeader('allow', matched.allowed.join(', '));
          throw new ConsoledError('METHOD_NOT_ALLOWED', `${req.method} not allowed on ${url.pathname}`);
        }
        throw new ConsoledError('NOT_FOUND', `no route for ${url.pathname}`);
      }
      const { route, params } = matched;
      if (route.auth === 'admin') {
        const token = bearerToken(req.headers.authorization);
        if (token === null)
          throw new ConsoledError('UNAUTHORIZED', 'this call needs Authorization: Bearer <admin token>');
        if (!tokenMatches(token, this.options.adminToken))
          throw new ConsoledError('FORBIDDEN', 'the bearer token is not the admin token');
      }
      const ctx: RequestContext = {
        req,
        res,
        url,
        params,
        signal: abort.signal,
        json: async () => {
          const body = await readBody(req, this.options.maxBodyBytes);
          if (body.length === 0) throw new ConsoledError('BAD_JSON', 'a JSON body is required');
          try {
            return JSON.parse(body.toString('utf8')) as unknown;
          } catch (err) {
            throw new ConsoledError('BAD_JSON', `body is not valid JSON: ${(err as Error).message}`);
          }
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
    await new Promise<void>((resolve) => {
      this.server.close(() => resolve());
      this.server.closeIdleConnections();
    });
  }
}
