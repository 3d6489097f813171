import { parseArgs } from 'node:util';
import { ConsoledError } from '../common/errors.js';
import { assertGuestId } from '../common/guest-id.js';
import type { RevocationAnswer } from '../sidecar/console/console-routes.js';
import { TOKEN_ID_PATTERN } from '../sidecar/console/viewer-token.js';
import { type ApiTarget, apiRequest } from './api-client.js';

/** What `POST /v1/guests/{id}/tokens` answers. */
export interface TokenAnswer {
  token: string;
  id: string;
  expiresAt: string;
  /** Present when the token can be renewed in band. */
  renewableUntil?: string;
}

/** Mints a viewer token through the admin API. */
export async function mintViewerToken(
  target: ApiTarget,
  guest: string,
  options: {
    mode: 'ro' | 'rw';
    ttl: string;
    singleUse?: boolean;
    name?: string | undefined;
    /** Renewable in band for this long (`12h`). */
    renewableFor?: string | undefined;
  },
): Promise<TokenAnswer> {
  const body = {
    mode: options.mode,
    ttl: options.ttl,
    ...(options.singleUse ? { singleUse: true } : {}),
    ...(options.name ? { name: options.name } : {}),
    ...(options.renewableFor ? { renewableFor: options.renewableFor } : {}),
  };
  const res = await apiRequest(target, 'POST', `/v1/guests/${encodeURIComponent(guest)}/tokens`, body);
  return (await res.json()) as TokenAnswer;
}

export function parseMode(raw: string | undefined, fallback: 'ro' | 'rw'): 'ro' | 'rw' {
  if (raw === undefined) return fallback;
  if (raw === 'ro' || raw === 'rw') return raw;
  throw new ConsoledError('BAD_PARAMETER', '--mode must be ro or rw');
}

/**
 * `consolectl token GUEST --mode rw --ttl 10m [--single-use] [--name N]
 * [--renewable-for 12h] [--json]`: prints a viewer token (stdout, one line), and on
 * stderr its id, expiry and the console page URL that uses it.
 */
export async function tokenCommand(target: ApiTarget, args: string[]): Promise<void> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      mode: { type: 'string' },
      ttl: { type: 'string' },
      'single-use': { type: 'boolean' },
      name: { type: 'string' },
      'renewable-for': { type: 'string' },
      json: { type: 'boolean' },
    },
  });
  const guest = assertGuestId(positionals[0]);
  const answer = await mintViewerToken(target, guest, {
    mode: parseMode(values.mode, 'ro'),
    ttl: values.ttl ?? '10m',
    singleUse: values['single-use'] ?? false,
    name: values.name,
    renewableFor: values['renewable-for'],
  });
  if (values.json) {
    process.stdout.write(`${JSON.stringify(answer, null, 2)}\n`);
    return;
  }
  process.stdout.write(`${answer.token}\n`);
  const renewable = answer.renewableUntil ? `, renewable until ${answer.renewableUntil}` : '';
  process.stderr.write(
    `token ${answer.id} for ${guest}, expires ${answer.expiresAt}${renewable}\n  page: ${target.url}/console/${encodeURIComponent(guest)}#token=${answer.token}\n`,
  );
}

/**
 * `consolectl revoke JTI [--json]`: revokes a viewer token, or a whole chain by its
 * first token's id (`DELETE /v1/tokens/{jti}`; README "Tokens"), and says how many
 * sessions ended on this host and whether the other hosts were told (through Redis).
 */
export async function revokeCommand(target: ApiTarget, args: string[]): Promise<void> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: { json: { type: 'boolean' } },
  });
  const id = positionals[0] ?? '';
  if (!TOKEN_ID_PATTERN.test(id)) throw new ConsoledError('BAD_PARAMETER', 'revoke takes a token id (jti)');
  const res = await apiRequest(target, 'DELETE', `/v1/tokens/${id}`);
  const answer = (await res.json()) as RevocationAnswer;
  if (values.json) {
    process.stdout.write(`${JSON.stringify(answer, null, 2)}\n`);
    return;
  }
  process.stdout.write(
    `revoked ${answer.revoked} until ${answer.until}: ${answer.endedSessions} session(s) ended here; ` +
      `${answer.shared ? 'shared through Redis with every host' : 'this host only (no Redis)'}\n`,
  );
}
