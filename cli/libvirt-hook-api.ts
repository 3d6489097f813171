/**
 * The hook's calls to the daemon (README "libvirt"): the address and the admin token
 * come from the daemon's own configuration file, each call is bounded in time, and
 * the answer is only ever a status and a body: a daemon that is down is an answer too.
 */

import { readFile } from 'node:fs/promises';
import { request } from 'node:http';
import { join } from 'node:path';
import type { Config } from '../sidecar/config.js';

export interface HookApi {
  call(method: string, path: string, body: unknown, timeoutMs: number): Promise<HookApiAnswer>;
}

/** `status` 0: no answer (`error` says why). */
export interface HookApiAnswer {
  readonly status: number;
  readonly body: string;
  readonly error: string | null;
}

/** The admin token the daemon uses: inline, from its file, or the one it generated. */
export async function adminTokenOf(config: Readonly<Config>): Promise<string> {
  if (config.adminToken) return config.adminToken;
  const file = config.adminTokenFile ?? join(config.stateDir, 'admin-token');
  return (await readFile(file, 'utf8')).trim();
}

/** A wildcard the daemon listens on is reached on loopback. */
function connectHost(host: string): string {
  if (host === '0.0.0.0' || host === '') return '127.0.0.1';
  if (host === '::') return '::1';
  return host;
}

export function hookApi(config: Readonly<Config>, token: string): HookApi {
  const where = config.listen.socketPath
    ? { socketPath: config.listen.socketPath }
    : { host: connectHost(config.listen.host), port: config.listen.port };
  return {
    call(method, path, body, timeoutMs) {
      return new Promise((resolve) => {
        const payload = body === undefined ? null : Buffer.from(JSON.stringify(body));
        const req = request({
          ...where,
          method,
          path,
          headers: {
            authorization: `Bearer ${token}`,
            ...(payload ? { 'content-type': 'application/json', 'content-length': payload.length } : {}),
          },
          timeout: timeoutMs,
        });
        const timer = setTimeout(() => req.destroy(new Error(`no answer within ${timeoutMs} ms`)), timeoutMs);
        req.on('timeout', () => req.destroy(new Error(`no answer within ${timeoutMs} ms`)));
        req.on('error', (err: NodeJS.ErrnoException) => {
          clearTimeout(timer);
          resolve({ status: 0, body: '', error: err.code ?? err.message });
        });
        req.on('response', (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('error', () => undefined);
          res.on('end', () => {
            clearTimeout(timer);
            resolve({
              status: res.statusCode ?? 0,
              body: Buffer.concat(chunks).toString('utf8'),
              error: null,
            });
          });
        });
        req.end(payload ?? undefined);
      });
    },
  };
}
