import { hostname, userInfo } from 'node:os';
import { parseArgs } from 'node:util';
import { ConsoledError } from '../common/errors.js';
import { assertGuestId } from '../common/guest-id.js';
import type { ApiTarget } from './api-client.js';
import { DEFAULT_ESCAPE_CHAR, runConsoleClient } from './console-client.js';
import { mintViewerToken, parseMode } from './token-command.js';

/** Refusals that mean the successor of an upgrade is not serving yet. */
const RESUMABLE = new Set([
  'UPGRADING',
  'ECONNREFUSED',
  'ECONNRESET',
  'HTTP_503',
  'GUEST_MOVED',
  'GUEST_ARRIVING',
  'UPSTREAM_UNAVAILABLE',
]);
/** How long a console resumes after an upgrade closed it, and how often it tries. */
const RESUME_WINDOW_MS = 30_000;
const RESUME_RETRY_MS = 200;
/**
 * The token consolectl mints for itself: single-use, 5 minutes to connect, renewed in
 * band for up to 12 hours, so an interactive session lasts (README "Command line").
 */
const MINTED_TTL = '5m';
const MINTED_RENEWABLE_FOR = '12h';

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
 * `consolectl console GUEST [--mode ro|rw] [--token T] [--ttl 5m] [--renewable-for 12h]
 * [--escape ^]] [--from O] [--force]`: the interactive client. Without `--token` it
 * mints a short single-use token, renewable for `--renewable-for`, with the admin
 * token (so the audit log names the operator), or fails UNAUTHORIZED. A renewable
 * token is renewed in band before it expires (console-client.ts).
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
      ttl: { type: 'string' },
      'renewable-for': { type: 'string' },
    },
  });
  const guest = assertGuestId(positionals[0]);
  const mode = parseMode(values.mode, 'rw');
  const mint = async (): Promise<string> =>
    (
      await mintViewerToken(target, guest, {
        mode,
        ttl: values.ttl ?? MINTED_TTL,
        singleUse: true,
        name: operatorName(),
        renewableFor: values['renewable-for'] ?? MINTED_RENEWABLE_FOR,
      })
    ).token;
  let token = values.token;
  if (token === undefined) {
    if (!target.token)
      throw new ConsoledError('UNAUTHORIZED', 'console needs --token, or the admin token to mint one');
    token = await mint();
  }
  let from: number | undefined;
  if (values.from !== undefined) {
    from = Number(values.from);
    if (!Number.isSafeInteger(from) || from < 0)
      throw new ConsoledError('BAD_PARAMETER', '--from must be an offset');
  }
  const minted = values.token === undefined;
  const escapeChar = parseEscapeChar(values.escape);
  let takeover = values.force ?? false;
  // One session with what the loop below has made current (token, offset, takeover).
  const connect = () =>
    runConsoleClient({
      url: consoleUrl(target.url, guest),
      token,
      mode,
      from,
      escapeChar,
      takeover,
      stdin: process.stdin,
      stdout: process.stdout,
    });
  let result = await connect();
  // The daemon was upgraded under us (close 1012): resume at the next byte, with the
  // newest token of the session's chain, so the writer lock comes back (docs/design.md
  // "Upgrade"); refusals while the successor comes up are retried.
  let deadline = 0;
  /** Whether `token` is one the server gave this session (its chain), not one minted here. */
  let chained = false;
  // A live migration closes it with GUEST_MOVED: the same, to the same host, which
  // proxies to the new owner (docs/design.md "Console across hosts").
  const seam = (r: typeof result): boolean => r.closeCode === 1012 || r.code === 'GUEST_MOVED';
  while (seam(result) || (deadline > Date.now() && RESUMABLE.has(result.code ?? ''))) {
    if (seam(result)) deadline = Date.now() + RESUME_WINDOW_MS;
    from = result.next ?? from;
    takeover = false;
    // The token goes on as the server last renewed it (or its successor): the same chain,
    // so the writer lock kept for it comes back (docs/design.md "Upgrade"). A minted
    // token that left no successor is minted again.
    if (result.token !== undefined) {
      token = result.token;
      chained = true;
    }
    await new Promise((r) => setTimeout(r, RESUME_RETRY_MS));
    if (minted && !chained) {
      try {
        token = await mint();
      } catch (err) {
        if (Date.now() > deadline) throw err;
        result = {
          exitCode: 1,
          reason: 'error',
          code: 'UPGRADING',
          ...(from !== undefined ? { next: from } : {}),
        };
        continue;
      }
    }
    const resumed = await connect();
    result = resumed.next === undefined && from !== undefined ? { ...resumed, next: from } : resumed;
  }
  process.exitCode = result.exitCode;
  // A paused stdin pipe still holds the event loop open after the escape character.
  process.stdin.destroy();
}
