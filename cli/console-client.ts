/**
 * The interactive console client behind `consolectl console`, in the manner of
 * `virsh console`: the local terminal goes raw, guest output goes to stdout byte
 * for byte, keystrokes go to the guest while this viewer holds the writer lock, and
 * the escape character (Ctrl-] by default, as in virsh and telnet) leaves and
 * restores the terminal. Speaks the protocol of console/protocol.ts.
 *
 * Status lines go to stderr framed as `\r\n[consolectl] ...\r\n`, so that in a raw
 * terminal they start on a fresh line and leave the cursor at column 0 instead of
 * staircasing across the guest's screen.
 *
 * A renewable token (one with `ren`) is renewed in band before it expires
 * (`renewalDelayMs`), so the session lasts until `ren` (README "Tokens").
 */
import type { Readable, Writable } from 'node:stream';
import { type RawData, WebSocket } from 'ws';
import {
  DEFAULT_MAX_KEYSTROKE_FRAME_BYTES,
  encodeClientMessage,
  explainClose,
  parseServerMessage,
  renewalDelayMs,
  type WriterInfo,
} from '../sidecar/console/protocol.js';
import { readUnverifiedClaims, type ViewerMode } from '../sidecar/console/viewer-token.js';

/** Ctrl-]: the escape of virsh console and telnet. */
export const DEFAULT_ESCAPE_CHAR = '\x1d';
// Keystrokes queued toward the server beyond this pause stdin (the pattern of ws'
// createWebSocketStream); a paste into a slow link then waits instead of piling up.
const KEYSTROKE_HIGH_WATER_BYTES = 64 * 1024;

/** A readable that may be a TTY (process.stdin). */
export type ConsoleInput = Readable & { isTTY?: boolean; setRawMode?: (raw: boolean) => unknown };
/** A writable that may be a TTY (process.stdout). */
export type ConsoleOutput = Writable & { isTTY?: boolean; columns?: number; rows?: number };

export interface ConsoleClientOptions {
  /**
   * The console endpoint: `ws(s)://host:port/v1/guests/<id>/console`, or
   * `ws+unix:///run/consoled.sock:/v1/guests/<id>/console` for a unix socket.
   */
  url: string;
  /** Viewer or admin token, sent in an `Authorization` header; none: anonymous. */
  token?: string | undefined;
  /** Mode asked for (`ro` needs only a read-only token). */
  mode: ViewerMode;
  /** Resume from this offset (the first byte wanted). @default the server's recent output */
  from?: number | undefined;
  /** One character that leaves the console. @default '\x1d' (Ctrl-]) */
  escapeChar?: string | undefined;
  /** Take the writer lock over at start (like `virsh console --force`). @default false */
  takeover?: boolean | undefined;
  stdin: ConsoleInput;
  stdout: ConsoleOutput;
  /** Where status lines go. @default process.stderr */
  stderr?: Writable | undefined;
  /** Aborting closes the connection and resolves with reason 'aborted'. */
  signal?: AbortSignal | undefined;
}

export interface ConsoleClientResult {
  /** 0 on escape, end of input, abort or a normal close; 1 otherwise. */
  exitCode: number;
  reason: 'escape' | 'eof' | 'aborted' | 'closed' | 'error';
  /** Error code from the close reason, an `error` body, or the close code. */
  code?: string;
  /** WebSocket close code, when the server closed. */
  closeCode?: number;
  message?: string;
  /** The offset of the next byte not shown (to resume from), once welcomed. */
  next?: number;
  /** The newest token the server gave this session (a successor, a renewal): the key to resume with. */
  token?: string;
}

/** `^]` for Ctrl-], `^C` for Ctrl-C: how a control character is typed. */
export function describeEscapeChar(ch: string): string {
  const code = ch.charCodeAt(0);
  if (code < 0x20) return `^${String.fromCharCode(code + 0x40)}`;
  if (code === 0x7f) return '^?';
  return ch;
}

function describeWriter(writer: WriterInfo | null, me: string | undefined): string {
  if (writer === null) return 'nobody';
  if (writer.viewerId === me) return 'you';
  return writer.name ?? writer.viewerId;
}

function toBuffer(data: RawData): Buffer {
  if (Buffer.isBuffer(data)) return data;
  if (Array.isArray(data)) return Buffer.concat(data);
  return Buffer.from(data);
}

/**
 * Runs one interactive console session until the escape character, the end of
 * stdin, an abort, or the server closing; the terminal is always restored. Never
 * rejects: failures come back as a non-zero `exitCode` with a `code`.
 */
export function runConsoleClient(options: ConsoleClientOptions): Promise<ConsoleClientResult> {
  const { stdin, stdout } = options;
  const stderr = options.stderr ?? process.stderr;
  const escapeChar = options.escapeChar ?? DEFAULT_ESCAPE_CHAR;
  const say = (text: string): void => {
    stderr.write(`\r\n[consolectl] ${text}\r\n`);
  };

  if (escapeChar.length !== 1 || escapeChar.charCodeAt(0) > 0xff) {
    return Promise.resolve({
      exitCode: 1,
      reason: 'error',
      code: 'BAD_PARAMETER',
      message: 'the escape character must be one byte',
    });
  }
  const escapeByte = escapeChar.charCodeAt(0);

  let url: URL;
  try {
    url = new URL(options.url);
    if (options.from !== undefined) url.searchParams.set('from', String(options.from));
    url.searchParams.set('mode', options.mode);
  } catch {
    return Promise.resolve({
      exitCode: 1,
      reason: 'error',
      code: 'BAD_PARAMETER',
      message: 'bad console URL',
    });
  }

  return new Promise<ConsoleClientResult>((resolve) => {
    const headers: Record<string, string> = {};
    if (options.token !== undefined) headers['Authorization'] = `Bearer ${options.token}`;
    const ws = new WebSocket(url, { headers, perMessageDeflate: false });

    let finished = false;
    let rawSet = false;
    let stdinPaused = false;
    let viewerId: string | undefined;
    let writer: WriterInfo | null = null;
    let resizable = false;
    let watchingHintShown = false;
    let latestToken: string | undefined;
    let renewTimer: NodeJS.Timeout | null = null;

    /** Renews `token` in band when it is due; nothing for a token that cannot be renewed further. */
    const scheduleRenewal = (token: string | undefined, fresh: boolean): void => {
      if (renewTimer) clearTimeout(renewTimer);
      renewTimer = null;
      const claims = token === undefined ? null : readUnverifiedClaims(token);
      const delay = claims === null ? null : renewalDelayMs(claims, Date.now(), fresh);
      if (delay === null) return;
      renewTimer = setTimeout(() => {
        renewTimer = null;
        if (ws.readyState === WebSocket.OPEN) ws.send(encodeClientMessage({ type: 'renew' }));
      }, delay);
    };

    const isWriter = (): boolean => writer !== null && writer.viewerId === viewerId;

    /** The offset of the next output byte (welcome's, plus what arrived or was skipped). */
    let next: number | undefined;
    const finish = (outcome: ConsoleClientResult): void => {
      if (finished) return;
      finished = true;
      if (renewTimer) clearTimeout(renewTimer);
      const withNext = next === undefined ? outcome : { ...outcome, next };
      const result = latestToken === undefined ? withNext : { ...withNext, token: latestToken };
      stdin.off('data', onInput);
      stdin.off('end', onEnd);
      stdout.off('resize', onResize);
      options.signal?.removeEventListener('abort', onAbort);
      if (rawSet) stdin.setRawMode?.(false);
      // Stop reading so that the process can exit once we return.
      stdin.pause();
      if (ws.readyState === WebSocket.OPEN) ws.close(1000);
      else if (ws.readyState === WebSocket.CONNECTING) ws.terminate();
      resolve(result);
    };

    const sendKeys = (bytes: Buffer): void => {
      // Before the welcome nobody knows who writes; those keys are dropped like a watcher's.
      if (bytes.length === 0 || ws.readyState !== WebSocket.OPEN || viewerId === undefined) return;
      if (!isWriter()) {
        if (!watchingHintShown) {
          watchingHintShown = true;
          say(
            options.mode === 'rw'
              ? `watching: ${describeWriter(writer, viewerId)} holds the writer lock; keystrokes are not sent`
              : 'read-only: keystrokes are not sent',
          );
        }
        return;
      }
      for (let i = 0; i < bytes.length; i += DEFAULT_MAX_KEYSTROKE_FRAME_BYTES) {
        ws.send(bytes.subarray(i, i + DEFAULT_MAX_KEYSTROKE_FRAME_BYTES), { binary: true }, () => {
          if (stdinPaused && ws.bufferedAmount < KEYSTROKE_HIGH_WATER_BYTES / 4) {
            stdinPaused = false;
            stdin.resume();
          }
        });
      }
      if (ws.bufferedAmount > KEYSTROKE_HIGH_WATER_BYTES && !stdinPaused) {
        stdinPaused = true;
        stdin.pause();
      }
    };

    function onInput(chunk: Buffer | string): void {
      const bytes = typeof chunk === 'string' ? Buffer.from(chunk, 'utf8') : chunk;
      const at = bytes.indexOf(escapeByte);
      if (at === -1) {
        sendKeys(bytes);
        return;
      }
      sendKeys(bytes.subarray(0, at));
      finish({ exitCode: 0, reason: 'escape' });
    }

    function onEnd(): void {
      finish({ exitCode: 0, reason: 'eof' });
    }

    function onAbort(): void {
      finish({ exitCode: 0, reason: 'aborted' });
    }

    function sendResize(): void {
      if (!isWriter() || !resizable || !stdout.isTTY) return;
      const { columns, rows } = stdout;
      if (columns !== undefined && rows !== undefined && ws.readyState === WebSocket.OPEN) {
        ws.send(encodeClientMessage({ type: 'resize', cols: columns, rows }));
      }
    }

    function onResize(): void {
      sendResize();
    }

    const onControl = (text: string): void => {
      const msg = parseServerMessage(text);
      if (msg === null) return;
      switch (msg.type) {
        case 'welcome': {
          viewerId = typeof msg.viewerId === 'string' ? msg.viewerId : undefined;
          if (typeof msg.offset === 'number') next = msg.offset;
          writer = msg.writer ?? null;
          resizable = msg.resizable === true;
          const granted = msg.mode === 'rw' ? 'rw' : 'ro';
          const lock = isWriter()
            ? 'you hold the writer lock'
            : `watching (writer: ${describeWriter(writer, viewerId)})`;
          say(
            `connected to ${String(msg.guest ?? '?')} (boot ${String(msg.boot ?? '?')}, ${granted}): ${lock}. ` +
              `Escape character is ${describeEscapeChar(escapeChar)}`,
          );
          if (msg.clamped === true)
            say('the requested offset is no longer held; output starts at the oldest byte kept');
          if (options.takeover && granted === 'rw' && !isWriter())
            ws.send(encodeClientMessage({ type: 'takeover' }));
          sendResize();
          scheduleRenewal(options.token, false);
          break;
        }
        case 'token':
          // A successor (the key to the next reconnect) or a renewal: the session's token from now on.
          if (typeof msg.token !== 'string') break;
          latestToken = msg.token;
          scheduleRenewal(msg.token, msg.renewed === true);
          break;
        case 'lock': {
          const was = isWriter();
          const before = writer?.viewerId;
          writer = msg.writer ?? null;
          if (writer?.viewerId !== before) {
            watchingHintShown = false;
            if (isWriter()) say('you hold the writer lock');
            else if (was) say(`${describeWriter(writer, viewerId)} took the writer lock`);
            else say(`writer: ${describeWriter(writer, viewerId)}`);
          }
          if (!was && isWriter()) sendResize();
          break;
        }
        case 'skipped':
          if (next !== undefined && typeof msg.bytes === 'number') next += msg.bytes;
          say(`output too fast for this terminal: ${String(msg.bytes)} bytes skipped`);
          break;
        case 'guest':
          say(`guest ${String(msg.state)}${typeof msg.reason === 'string' ? `: ${msg.reason}` : ''}`);
          break;
        case 'moved':
          // Live-migrated: from a proxying host the connection follows the guest by
          // itself; else this connection closes (GUEST_MOVED) and the caller resumes here.
          if (msg.proxied !== true && typeof msg.offset === 'number') next = msg.offset;
          say(
            `the guest moved to host ${String(msg.host)}${msg.proxied === true ? '; following it' : '; reconnecting'}`,
          );
          break;
        case 'renumbered':
          if (next !== undefined && typeof msg.from === 'number' && typeof msg.to === 'number')
            next += msg.to - msg.from;
          break;
        case 'error':
          say(`${String(msg.code)}: ${String(msg.message ?? '')}`);
          break;
        default:
          // boot (the log carries its own marker), pong, and types added later.
          break;
      }
    };

    ws.on('open', () => {
      // No token: an anonymous auth frame, which a server running without auth accepts.
      if (options.token === undefined) ws.send(encodeClientMessage({ type: 'auth' }));
      if (stdin.isTTY && typeof stdin.setRawMode === 'function') {
        stdin.setRawMode(true);
        rawSet = true;
      }
      stdin.on('data', onInput);
      stdin.on('end', onEnd);
      stdin.resume();
      stdout.on('resize', onResize);
    });

    ws.on('message', (data: RawData, isBinary: boolean) => {
      if (finished) return;
      const bytes = toBuffer(data);
      if (!isBinary) {
        onControl(bytes.toString('utf8'));
        return;
      }
      if (next !== undefined) next += bytes.length;
      // Never buffer without bound: if the terminal is slow, stop reading the socket;
      // the server then skips this viewer ahead and says so.
      if (!stdout.write(bytes)) {
        ws.pause();
        stdout.once('drain', () => ws.resume());
      }
    });

    // The upgrade was refused with an HTTP error (bad guest id, unknown route, ...).
    ws.on('unexpected-response', (_req, res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => {
        if (chunks.length < 16) chunks.push(c);
      });
      res.on('end', () => {
        let code = `HTTP_${res.statusCode ?? 0}`;
        let message = res.statusMessage ?? '';
        try {
          const body = JSON.parse(Buffer.concat(chunks).toString('utf8')) as {
            error?: { code?: string; message?: string };
          };
          code = body.error?.code ?? code;
          message = body.error?.message ?? message;
        } catch {
          // Not our JSON error body.
        }
        say(`refused: ${code}${message ? ` (${message})` : ''}`);
        finish({ exitCode: 1, reason: 'error', code, message });
      });
    });

    ws.on('error', (err: Error & { code?: string }) => {
      if (finished) return;
      say(`connection failed: ${err.message}`);
      finish({ exitCode: 1, reason: 'error', code: err.code ?? 'CONNECTION_FAILED', message: err.message });
    });

    ws.on('close', (closeCode: number, reasonBuf: Buffer) => {
      if (finished) return;
      const explained = explainClose(closeCode, reasonBuf.toString('utf8'));
      if (explained === null) {
        say('connection closed');
        finish({ exitCode: 0, reason: 'closed', closeCode });
        return;
      }
      const { code, text } = explained;
      say(`connection closed: ${code}${text ? ` (${text})` : ''}`);
      finish({ exitCode: 1, reason: 'closed', code, closeCode, ...(text ? { message: text } : {}) });
    });

    if (options.signal?.aborted) onAbort();
    else options.signal?.addEventListener('abort', onAbort, { once: true });
  });
}
