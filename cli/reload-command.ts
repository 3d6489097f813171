/**
 * `consolectl reload [--config FILE]`: asks the daemon to re-read its configuration
 * file (`POST /v1/reload`) and returns once the reload is done, so that systemd's
 * `ExecReload=` ends with it (README "Reload"). With `--config`, the daemon's address
 * and admin token are taken from that file (`listen`, `adminToken`, `adminTokenFile`
 * or `<stateDir>/admin-token`), the way the unit runs it.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { ConsoledError } from '../common/errors.js';
import { loadConfig } from '../sidecar/config.js';
import { type ApiTarget, apiRequest } from './api-client.js';

/** The daemon's address and admin token as its configuration file gives them. */
export async function targetFromConfig(path: string): Promise<ApiTarget> {
  const config = await loadConfig(path);
  if (config.listen.socketPath)
    throw new ConsoledError(
      'BAD_REQUEST',
      `${path}: the daemon listens on a unix socket; give --url instead`,
    );
  const host = config.listen.host;
  const reachable = host === '0.0.0.0' ? '127.0.0.1' : host === '::' ? '::1' : host;
  const url = `http://${reachable.includes(':') ? `[${reachable}]` : reachable}:${config.listen.port}`;
  if (config.adminToken) return { url, token: config.adminToken };
  const file = config.adminTokenFile ?? join(config.stateDir, 'admin-token');
  try {
    return { url, token: readFileSync(file, 'utf8').trim() };
  } catch (err) {
    throw new ConsoledError('UNAUTHORIZED', `cannot read ${file}: ${(err as NodeJS.ErrnoException).code}`);
  }
}

export async function reloadCommand(target: ApiTarget, args: string[]): Promise<void> {
  const { values } = parseArgs({ args, options: { config: { type: 'string', short: 'c' } } });
  const to = values.config ? await targetFromConfig(values.config) : target;
  const res = await apiRequest(to, 'POST', '/v1/reload');
  const outcome = (await res.json()) as { failed?: unknown[] };
  process.stdout.write(`${JSON.stringify(outcome, null, 2)}\n`);
  // Guests the reload could not attach or detach: the reload stands, but say it failed.
  if (outcome.failed?.length) process.exitCode = 1;
}
