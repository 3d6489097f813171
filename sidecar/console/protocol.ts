/**
 * The WebSocket console's wire protocol, defined once: every JSON control message
 * in both directions, the parsing of what a client sends, and what each close code
 * means. The server (console-server.ts, hub.ts, viewer.ts) and the CLI client
 * (cli/console-client.ts) import it; the browser page, which has no bundler, gets
 * the close table as `protocol-table.js`, written from this module at build time
 * (scripts/gen-protocol-table.mjs). README.md "WebSocket console" explains it.
 *
 * Binary frames carry console bytes (guest output one way, keystrokes the other)
 * and have no shape to define here.
 */
import type { WebSocket } from 'ws';
import { ConsoledError, ERROR_CODES, type ErrorCode } from '../../common/errors.js';
import type { ViewerMode } from './viewer-token.js';

/**
 * The keystroke frame every server accepts unless configured lower
 * (`console.maxKeystrokeFrameBytes`): clients split what they send into frames no
 * larger, since a larger one closes the connection (1009).
 */
export const DEFAULT_MAX_KEYSTROKE_FRAME_BYTES = 4096;

// Server → client ---------------------------------------------------------------

/** Who holds the writer lock. */
export interface WriterInfo {
  readonly viewerId: string;
  readonly name: string | null;
}

/** The guest side as a viewer is told it. */
export type GuestState = 'connected' | 'disconnected' | 'detached';

/** First message, once: where the stream starts and who writes. */
export interface WelcomeMessage {
  readonly type: 'welcome';
  readonly guest: string;
  readonly viewerId: string;
  readonly mode: ViewerMode;
  readonly name: string | null;
  readonly boot: number;
  /** Offset of the next binary byte. */
  readonly offset: number;
  /** `from` was older than the oldest byte kept; the stream starts there instead. */
  readonly clamped: boolean;
  readonly writer: WriterInfo | null;
  readonly viewers: number;
  readonly canTakeover: boolean;
  /** The source has a window size (`exec`, `pty`). */
  readonly resizable: boolean;
  readonly guestState: Exclude<GuestState, 'detached'>;
}

/**
 * A new token for this connection: the successor of the single-use token it spent,
 * or (`renewed`) the answer to `renew`, which is also its successor when the token
 * is single-use.
 */
export interface TokenMessage {
  readonly type: 'token';
  readonly token: string;
  readonly id: string;
  readonly expiresAt: string;
  /** Present and true on the answer to `renew`: the connection now expires at `expiresAt`. */
  readonly renewed?: true;
}

/** The lock holder or the number of viewers changed. */
export interface LockMessage {
  readonly type: 'lock';
  readonly writer: WriterInfo | null;
  readonly viewers: number;
}

/** This viewer fell behind: `bytes` were not sent, the next binary byte is at `offset`. */
export interface SkippedMessage {
  readonly type: 'skipped';
  readonly bytes: number;
  readonly offset: number;
}

/** A boot started at `offset`; sent right before the byte there. */
export interface BootMessage {
  readonly type: 'boot';
  readonly boot: number;
  readonly offset: number;
}

/** The guest side closed, came back, or was detached. */
export interface GuestMessage {
  readonly type: 'guest';
  readonly state: GuestState;
  readonly reason: string;
}

/** A request was refused; a close follows only when the connection ends. */
export interface ErrorMessage {
  readonly type: 'error';
  readonly code: ErrorCode;
  readonly message: string;
}

export interface PongMessage {
  readonly type: 'pong';
}

/**
 * The guest was live-migrated to `host` (docs/design.md "Console across hosts"):
 * every byte before `offset` was sent, and the destination's log goes on from
 * `offset`. From a host that serves the guest itself, a close with GUEST_MOVED
 * follows and the client reconnects with `from=offset` (to the same URL: that host
 * now proxies to `host`). From a proxying host (`proxied: true`) the connection
 * stays: the proxy follows the guest itself and a new `welcome` follows at `offset`.
 */
export interface MovedMessage {
  readonly type: 'moved';
  readonly host: string;
  readonly offset: number;
  readonly proxied?: true;
}

/**
 * The log this viewer reads was renumbered (a migration's destination adopted the
 * stream at the source's final offset): the byte that was to come at `from` comes at
 * `to`, and every offset after it moved by `to - from`. Sent before any byte in the
 * new numbering.
 */
export interface RenumberedMessage {
  readonly type: 'renumbered';
  readonly from: number;
  readonly to: number;
}

/** Every JSON control message the server sends. Clients ignore types they do not know. */
export type ServerMessage =
  | WelcomeMessage
  | TokenMessage
  | LockMessage
  | SkippedMessage
  | BootMessage
  | GuestMessage
  | ErrorMessage
  | PongMessage
  | MovedMessage
  | RenumberedMessage;

/**
 * A text frame from the server; null when it is not a JSON object with a string
 * `type`. The fields are trusted as far as their shape goes: a client still
 * checks what it relies on, and lets a type it does not know fall through.
 */
export function parseServerMessage(text: string): ServerMessage | null {
  let message: unknown;
  try {
    message = JSON.parse(text);
  } catch {
    return null;
  }
  if (typeof message !== 'object' || message === null) return null;
  return typeof (message as { type?: unknown }).type === 'string' ? (message as ServerMessage) : null;
}

// Client → server ---------------------------------------------------------------

/** First frame, when no `Authorization` header was used; no token: anonymous. */
export interface AuthMessage {
  readonly type: 'auth';
  readonly token?: string;
}

/** Writer-lock requests: take it if free, take it from its holder, give it up. */
export interface LockRequest {
  readonly type: 'acquire' | 'takeover' | 'release';
}

/** The writer sets the guest terminal's size (1 to 1000 each). */
export interface ResizeMessage {
  readonly type: 'resize';
  readonly cols: number;
  readonly rows: number;
}

export interface PingMessage {
  readonly type: 'ping';
}

/**
 * Renews the connection's token in band (README "Tokens"): answered with a `token`
 * message (`renewed: true`), or an `error` TOKEN_NOT_RENEWABLE.
 */
export interface RenewMessage {
  readonly type: 'renew';
}

/** Every JSON control message a client sends. */
export type ClientMessage = AuthMessage | LockRequest | ResizeMessage | PingMessage | RenewMessage;

/**
 * A client message after the first, as `parseClientMessage` returns it. A resize's
 * size is checked by `resizeSize` only after the hub checked who asks, so a
 * watcher's resize is NOT_WRITER whatever its size.
 */
export type ClientRequest =
  | LockRequest
  | PingMessage
  | RenewMessage
  | { readonly type: 'resize'; readonly cols: unknown; readonly rows: unknown };

const LOCK_REQUESTS: ReadonlySet<string> = new Set(['acquire', 'takeover', 'release']);
const SHAPE = 'a text frame must be a JSON object with a type';
const AUTH_FIRST = 'the first frame must be {"type":"auth","token":...}';
const MAX_TERMINAL_SIZE = 1000;

/** The text of a server message as it goes on the wire. */
export function encodeServerMessage(message: ServerMessage): string {
  return JSON.stringify(message);
}

/** The text of a client message as it goes on the wire. */
export function encodeClientMessage(message: ClientMessage): string {
  return JSON.stringify(message);
}

/**
 * The token of a connection's first frame (undefined: anonymous). Throws
 * UNAUTHORIZED for anything but an auth message, BAD_JSON for a text frame that
 * is not JSON, TOKEN_INVALID for a token that is not a string.
 */
export function parseAuthFrame(bytes: Buffer, isBinary: boolean): string | undefined {
  if (isBinary) throw new ConsoledError('UNAUTHORIZED', AUTH_FIRST);
  let message: unknown;
  try {
    message = JSON.parse(bytes.toString('utf8'));
  } catch {
    throw new ConsoledError('BAD_JSON', 'the auth frame is not valid JSON');
  }
  const m = message as { type?: unknown; token?: unknown } | null;
  if (typeof m !== 'object' || m === null || m.type !== 'auth')
    throw new ConsoledError('UNAUTHORIZED', AUTH_FIRST);
  if (m.token !== undefined && typeof m.token !== 'string')
    throw new ConsoledError('TOKEN_INVALID', 'token must be a string');
  return m.token;
}

/**
 * A text frame after authentication. Throws BAD_JSON (not JSON), BAD_REQUEST (no
 * `type`, a second `auth`, an unknown type); the server answers those with an
 * `error` message and keeps the connection.
 */
export function parseClientMessage(text: string): ClientRequest {
  let message: unknown;
  try {
    message = JSON.parse(text);
  } catch {
    throw new ConsoledError('BAD_JSON', SHAPE);
  }
  if (typeof message !== 'object' || message === null) throw new ConsoledError('BAD_REQUEST', SHAPE);
  const m = message as { type?: unknown; cols?: unknown; rows?: unknown };
  const type = m.type;
  if (typeof type !== 'string') throw new ConsoledError('BAD_REQUEST', SHAPE);
  if (type === 'auth') throw new ConsoledError('BAD_REQUEST', 'already authenticated');
  if (type === 'ping' || type === 'renew') return { type };
  if (type === 'resize') return { type, cols: m.cols, rows: m.rows };
  if (LOCK_REQUESTS.has(type)) return { type: type as LockRequest['type'] };
  throw new ConsoledError('BAD_REQUEST', `unknown message type ${JSON.stringify(type.slice(0, 40))}`);
}

/** The size a resize asks for; BAD_PARAMETER unless both are integers from 1 to 1000. */
export function resizeSize(request: { readonly cols: unknown; readonly rows: unknown }): {
  cols: number;
  rows: number;
} {
  const valid = (n: unknown): n is number =>
    Number.isInteger(n) && (n as number) >= 1 && (n as number) <= MAX_TERMINAL_SIZE;
  const { cols, rows } = request;
  if (!valid(cols) || !valid(rows))
    throw new ConsoledError('BAD_PARAMETER', `cols and rows must be integers from 1 to ${MAX_TERMINAL_SIZE}`);
  return { cols, rows };
}

/**
 * Ends a connection for `err`: an `error` message, then a close with the error's
 * close code and the error code itself as the reason (clients read the reason
 * first, since several errors share a close code).
 */
export function sendErrorAndClose(ws: WebSocket, err: ConsoledError): void {
  if (ws.readyState !== ws.OPEN) return;
  ws.send(encodeServerMessage({ type: 'error', code: err.code, message: err.message }));
  ws.close(err.wsCloseCode, err.code);
}

// Renewal -----------------------------------------------------------------------

/**
 * When a client renews its token in band: once 80 % of the token's lifetime has
 * passed or 30 s before it expires, whichever is earlier, but never before half of
 * it (README "Tokens"). The page reads these from its table.
 */
export const RENEWAL_TIMING = { lifetimeFraction: 0.8, leadMs: 30_000, minLifetimeFraction: 0.5 } as const;

/**
 * How long a client waits before it sends `renew` for a token with these claims
 * (seconds, as in the token), or null when a renewal cannot extend it (no `ren`, or
 * `exp` reached it). `fresh`: the token was issued just now (a `renewed` token
 * message), so the wait is counted from its receipt; otherwise from `exp` by the
 * client's clock, and never longer than a fresh token's.
 */
export function renewalDelayMs(
  claims: { readonly iat: number; readonly exp: number; readonly ren?: number | undefined },
  nowMs: number,
  fresh: boolean,
): number | null {
  if (claims.ren === undefined || claims.ren <= claims.exp) return null;
  const lifetimeMs = Math.max(0, claims.exp - claims.iat) * 1000;
  const { lifetimeFraction, leadMs, minLifetimeFraction } = RENEWAL_TIMING;
  const lead = Math.min(
    Math.max((1 - lifetimeFraction) * lifetimeMs, leadMs),
    (1 - minLifetimeFraction) * lifetimeMs,
  );
  const fromReceipt = lifetimeMs - lead;
  return fresh ? fromReceipt : Math.min(Math.max(0, claims.exp * 1000 - lead - nowMs), fromReceipt);
}

// Close codes -------------------------------------------------------------------

/** What a close code means when the reason does not say. */
export interface CloseCodeInfo {
  /** The error code clients report: the error's own, or a name for a standard close. */
  readonly name: string;
  readonly text: string;
  /** The errors that close with this code (several share one). */
  readonly errors: readonly ErrorCode[];
}

/** Closes that are no error: a normal close, and one without a status code. */
export const NORMAL_CLOSE_CODES: readonly number[] = [1000, 1005];

/**
 * Standard close codes (RFC 6455 section 7.4.1; 1012 from the IANA registry) that
 * clients explain although no error of ours carries them. 1001 (SHUTTING_DOWN) and
 * 1011 (INTERNAL and others) come from common/errors.ts like every error's code.
 */
const STANDARD_CLOSES: Readonly<Record<number, { name: string; text: string }>> = {
  1000: { name: 'NORMAL_CLOSURE', text: 'The connection was closed normally.' },
  1005: { name: 'NO_STATUS', text: 'The connection was closed without a status code.' },
  1006: {
    name: 'CONNECTION_LOST',
    text: 'The connection ended without a close frame: the network failed, or the server refused the upgrade.',
  },
  1012: { name: 'SERVICE_RESTART', text: 'The server is restarting.' },
};

/**
 * The error a close code stands for when several share it and the reason is
 * missing: the one the console is likeliest to close with. A close code shared by
 * errors and missing here fails at module load (see `buildCloseCodes`).
 */
export const SHARED_CLOSE_FALLBACK: Readonly<Record<number, ErrorCode>> = {
  1008: 'BAD_REQUEST',
  1011: 'INTERNAL',
  1013: 'TOO_MANY_VIEWERS',
  4401: 'UNAUTHORIZED',
  4403: 'FORBIDDEN',
  4404: 'TOKEN_WRONG_MODE',
};

function buildCloseCodes(): Readonly<Record<number, CloseCodeInfo>> {
  const byCode = new Map<number, ErrorCode[]>();
  for (const code of Object.keys(ERROR_CODES) as ErrorCode[]) {
    const ws = ERROR_CODES[code].ws;
    byCode.set(ws, [...(byCode.get(ws) ?? []), code]);
  }
  const table: Record<number, CloseCodeInfo> = {};
  for (const [ws, standard] of Object.entries(STANDARD_CLOSES))
    table[Number(ws)] = { ...standard, errors: [] };
  for (const [ws, errors] of [...byCode].sort(([a], [b]) => a - b)) {
    const name = errors.length === 1 ? errors[0] : SHARED_CLOSE_FALLBACK[ws];
    if (name === undefined || !errors.includes(name)) {
      throw new Error(
        `close code ${ws} is shared by ${errors.join(', ')}: name one in SHARED_CLOSE_FALLBACK`,
      );
    }
    table[ws] = { name, text: ERROR_CODES[name].text, errors };
  }
  return table;
}

/** Every close code a client may meet, with what it reports when the reason is missing. */
export const CLOSE_CODES: Readonly<Record<number, CloseCodeInfo>> = buildCloseCodes();

/** How a close reason that is an error code looks (`TOKEN_EXPIRED`). */
export const ERROR_CODE_PATTERN = /^[A-Z][A-Z0-9_]*$/;

/** A close as a client reports it. */
export interface CloseExplanation {
  /** The error code: from the reason, else from the close code, else `CLOSED_<code>`. */
  readonly code: string;
  /** What it means; the reason itself for a code not known here. */
  readonly text: string;
}

/**
 * Explains a close: the reason first (the server puts the error code there), then
 * the close code. Null for a normal close.
 */
export function explainClose(closeCode: number, reason: string): CloseExplanation | null {
  if (ERROR_CODE_PATTERN.test(reason)) {
    return { code: reason, text: reason in ERROR_CODES ? ERROR_CODES[reason as ErrorCode].text : '' };
  }
  if (NORMAL_CLOSE_CODES.includes(closeCode)) return null;
  const known = CLOSE_CODES[closeCode];
  return known ? { code: known.name, text: known.text } : { code: `CLOSED_${closeCode}`, text: reason };
}

/** What the browser page needs of this module, as data (`window.consoledProtocol`). */
export interface PageProtocolTable {
  /** Error code → its text. */
  readonly errors: Readonly<Record<string, string>>;
  /** Close code → the name and text reported when the reason is missing. */
  readonly closeCodes: Readonly<Record<string, { name: string; text: string }>>;
  readonly normalCloseCodes: readonly number[];
  readonly errorCodePattern: string;
  readonly maxKeystrokeFrameBytes: number;
  /** When to renew a token in band (`RENEWAL_TIMING`). */
  readonly renewal: typeof RENEWAL_TIMING;
}

export function pageProtocolTable(): PageProtocolTable {
  const errors: Record<string, string> = {};
  for (const code of Object.keys(ERROR_CODES) as ErrorCode[]) errors[code] = ERROR_CODES[code].text;
  const closeCodes: Record<string, { name: string; text: string }> = {};
  for (const [ws, { name, text }] of Object.entries(CLOSE_CODES)) closeCodes[ws] = { name, text };
  return {
    errors,
    closeCodes,
    normalCloseCodes: [...NORMAL_CLOSE_CODES],
    errorCodePattern: ERROR_CODE_PATTERN.source,
    maxKeystrokeFrameBytes: DEFAULT_MAX_KEYSTROKE_FRAME_BYTES,
    renewal: RENEWAL_TIMING,
  };
}

/** The file name of the page's table, beside console.js and served as /console/assets/<name>. */
export const PAGE_PROTOCOL_FILE = 'protocol-table.js';

/**
 * The page's `protocol-table.js`: a plain script (the page's CSP allows no inline
 * script and it has no bundler) that puts the table on `window.consoledProtocol`.
 */
export function pageProtocolScript(): string {
  return (
    '// Generated from sidecar/console/protocol.ts by scripts/gen-protocol-table.mjs; do not edit.\n' +
    `window.consoledProtocol = Object.freeze(${JSON.stringify(pageProtocolTable(), null, 2)});\n`
  );
}
