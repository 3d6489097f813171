import { hostname, userInfo } from 'node:os';
import { parseArgs } from 'node:util';
import { ConsoledError } from '../common/errors.js';
import { assertGuestId } from '../common/guest-id.js';
import type { ApiTarget } from './api-client.js';
import { DEFAULT_ESCAPE_CHAR, runConsoleClient } from './console-client.js';
import { mintViewerToken, parseMode } from './token-command.js';

/** `^]` → Ctrl-], `^C` → Ctrl-C; a single character stands for itself. */
export function parseEscapeChar(raw: string | undefined): string {
  if (raw === undefined) return DEFAULT_ESCAPE_CHAR;
  if (raw.length === 1) return raw;
  const m = /^\^([@-_?a-z])$/.exec(raw);
  if (m) {
    const c = m[1]!.toUpperCase();
    return c === '?' ? '\x7f' : String.fromCharCode(c.charCodeAt(0) - 0x40);
  }
  throw new ConsoledError('BAD_PARAMETER', '--escape takes one character or ^X');
}

function consoleUrl(apiUrl: string, guest: string): string {
  const url = new URL(`/v1/guests/${encodeURIComponent(guest)}/console`, apiUrl);
  url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
  return url.href;
}

/** Who the audit log names when consolectl mints its own token. */
function operatorName(): string {
  try {
    return `${userInfo().username}@${hostname()}`.slice(0, 64);
  } catch {
    return `consolectl@${hostname()}`.slice(0, 64);
  }
}

/**
 * `consolectl console GUEST [--mode ro|rw] [--token T] [--escape ^]] [--from O] [--force]`:
 * the interactive client. Without `--token` it mints a short single-use token with
 * the admin token (so the audit log names the operator), or fails UNAUTHORIZED.
 */
export async function consoleCommand(target: ApiTarget, args: string[]): Promise<void> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      mode: { type: 'string' },
      token: { type: 'string' },
      escape: { type: 'string' },
      from: { type: 'string' },
      force: { type: 'boolean' },
    },
  });
  const guest = assertGuestId(positionals[0]);
  const mode = parseMode(values.mode, 'rw');
  let token = values.token;
  if (token === undefined) {
    if (!target.token)
      throw new ConsoledError('UNAUTHORIZED', 'console needs --token, or the admin token to mint one');
    token = (await mintViewerToken(target, guest, { mode, ttl: '5m', singleUse: true, name: operatorName() }))
      .token;
  }
  let from: number | undefined;
  if (values.from !== undefined) {
    from = Number(values.from);
    if (!Number.isSafeInteger(from) || from < 0)
      throw new ConsoledError('BAD_PARAMETER', '--from must be an offset');
  }
  const result = await runConsoleClient({
    url: consoleUrl(target.url, guest),
    token,
    mode,
    from,
    escapeChar: parseEscapeChar(values.escape),
    takeover: values.force ?? false,
    stdin: process.stdin,
    stdout: process.stdout,
  });
  process.exitCode = result.exitCode;
  // A paused stdin pipe still holds the event loop open after the escape character.
  process.stdin.destroy();
}
