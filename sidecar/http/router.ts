import type { IncomingMessage, ServerResponse } from 'node:http';

/** Who may call a route. */
export type RouteAuth = 'none' | 'admin';

export interface RequestContext {
  readonly req: IncomingMessage;
  readonly res: ServerResponse;
  readonly url: URL;
  readonly params: Readonly<Record<string, string>>;
  /** Aborted when the client goes away or the daemon shuts down. */
  readonly signal: AbortSignal;
  /**
   * Reads and parses the JSON body: `Content-Type: application/json` (else 415
   * UNSUPPORTED_MEDIA_TYPE), bounded in size and in time.
   */
  json(): Promise<unknown>;
  /**
   * Marks the response long-lived (`follow=1`): counted under `http.maxFollowers`
   * instead of the ordinary connections; throws TOO_MANY_FOLLOWERS when full.
   */
  longLived(): void;
}

/** A JSON answer; a handler that streams its own body returns nothing. */
export interface JsonReply {
  readonly status: number;
  readonly body: unknown;
  readonly headers?: Record<string, string>;
}

export type Handler = (ctx: RequestContext) => Promise<JsonReply | undefined> | JsonReply | undefined;

interface Route {
  readonly method: string;
  readonly pattern: RegExp;
  readonly names: string[];
  readonly handler: Handler;
  readonly auth: RouteAuth;
}

/** Path patterns like `/v1/guests/:id/log`; each `:name` matches one path segment. */
export class Router {
  private readonly routes: Route[] = [];

  add(method: string, path: string, handler: Handler, options: { auth: RouteAuth }): void {
    const names: string[] = [];
    const source = path
      .split('/')
      .map((part) => {
        if (!part.startsWith(':')) return part.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
        names.push(part.slice(1));
        // An empty segment matches too, so `PUT /v1/guests/` is a bad guest id (400), not a 404.
        return '([^/]*)';
      })
      .join('/');
    this.routes.push({ method, pattern: new RegExp(`^${source}$`), names, handler, auth: options.auth });
  }

  /** The route for a request; `allowed` lists the methods of a path that matched with another method. */
  match(
    method: string,
    pathname: string,
  ): { route: Route; params: Record<string, string> } | { allowed: string[] } {
    const allowed: string[] = [];
    for (const route of this.routes) {
      const m = route.pattern.exec(pathname);
      if (!m) continue;
      if (route.method !== method && !(method === 'HEAD' && route.method === 'GET')) {
        allowed.push(route.method);
        continue;
      }
      const params: Record<string, string> = {};
      route.names.forEach((name, i) => {
        const raw = m[i + 1] ?? '';
        // A malformed escape (`%ZZ`) is the client's mistake: keep it raw so the
        // handler's validation answers 400, instead of a URIError becoming a 500.
        try {
          params[name] = decodeURIComponent(raw);
        } catch {
          params[name] = raw;
        }
      });
      return { route, params };
    }
    return { allowed };
  }
}
