import { existsSync, readFileSync } from 'node:fs';
import { ConsoledError, type ErrorCode } from '../common/errors.js';

/** Where consolectl finds the daemon and its admin token. */
export interface ApiTarget {
  readonly url: string;
  readonly token: string | null;
}

const TOKEN_FILES = ['/var/lib/consoled/admin-token', '.consoled-demo/admin-token'];

export function resolveApiTarget(options: {
  url?: string | undefined;
  token?: string | undefined;
  tokenFile?: string | undefined;
}): ApiTarget {
  const url = (options.url ?? process.env['CONSOLED_URL'] ?? 'http://127.0.0.1:7070').replace(/\/+$/, '');
  let token = options.token ?? process.env['CONSOLED_TOKEN'] ?? null;
  if (!token) {
    const file =
      options.tokenFile ?? process.env['CONSOLED_TOKEN_FILE'] ?? TOKEN_FILES.find((f) => existsSync(f));
    if (file) {
      try {
        token = readFileSync(file, 'utf8').trim();
      } catch (err) {
        if (options.tokenFile)
          throw new ConsoledError(
            'UNAUTHORIZED',
            `cannot read ${file}: ${(err as NodeJS.ErrnoException).code}`,
          );
      }
    }
  }
  return { url, token };
}

/** Turns an error answer into a ConsoledError carrying the server's code. */
export async function errorFromResponse(res: Response): Promise<ConsoledError> {
  try {
    const body = (await res.json()) as { error?: { code?: string; message?: string } };
    if (body.error?.code) return new ConsoledError(body.error.code as ErrorCode, body.error.message ?? '');
  } catch {
    // not JSON: fall through
  }
  return new ConsoledError('INTERNAL', `HTTP ${res.status}`);
}

export async function apiRequest(
  target: ApiTarget,
  method: string,
  path: string,
  body?: unknown,
  signal?: AbortSignal,
): Promise<Response> {
  const headers: Record<string, string> = {};
  if (target.token) headers['authorization'] = `Bearer ${target.token}`;
  if (body !== undefined) headers['content-type'] = 'application/json';
  let res: Response;
  try {
    res = await fetch(`${target.url}${path}`, {
      method,
      headers,
      ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
      ...(signal ? { signal } : {}),
    });
  } catch (err) {
    throw new ConsoledError(
      'INTERNAL',
      `cannot reach ${target.url}: ${(err as Error).cause ?? (err as Error).message}`,
    );
  }
  if (!res.ok) throw await errorFromResponse(res);
  return res;
}
