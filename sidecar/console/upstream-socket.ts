/**
 * The client end of a proxied console connection, to the guest's owner (docs/design.md
 * "Console across hosts"), kept as close to the wire as the protocol allows: the
 * owner's frames (server frames, never masked, the very bytes the viewer expects) are
 * not parsed and framed again but passed on as they came, span by span, while a
 * scanner reads just their headers: it counts the output bytes, hands text frames
 * over whole (the control messages the link reads), answers the owner's pings, and
 * stops at a close. Frames to the owner are built here, masked with a zero key (RFC
 * 6455 requires the mask bit from a client; the key guards caches between a browser's
 * scripts and a server, which two daemons do not have), one write each.
 *
 * The handshake is Node's own HTTP client (an `Upgrade: websocket` request); a refusal
 * before the upgrade comes back as the owner's HTTP status and JSON error.
 */
import { createHash, randomBytes } from 'node:crypto';
import { type ClientRequest, request as httpRequest, type IncomingMessage } from 'node:http';
import { request as httpsRequest } from 'node:https';
import type { Socket } from 'node:net';

/** RFC 6455 section 1.3. */
const ACCEPT_GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';
const OP_CONTINUATION = 0x0;
const OP_TEXT = 0x1;
const OP_BINARY = 0x2;
const OP_CLOSE = 0x8;
const OP_PING = 0x9;
const OP_PONG = 0xa;
/** The largest control message taken whole (text frames are a few hundred bytes). */
const MAX_TEXT_BYTES = 1024 * 1024;

/** What the owner sent, as the link needs it. */
export interface UpstreamEvents {
  /** Raw bytes to pass to the viewer as they are; `outputBytes` of them are guest output. */
  pass(raw: Buffer, outputBytes: number): void;
  /** A whole text frame: its raw bytes (to pass on as they are) and its payload. */
  text(raw: Buffer, payload: string): void;
  /** The owner closed (a close frame), or the connection ended without one (1006). */
  closed(code: number, reason: string): void;
}

/** How the handshake ended when it did not upgrade. */
export type HandshakeFailure =
  | { readonly kind: 'refused'; readonly status: number; readonly body: Buffer }
  | { readonly kind: 'unreachable'; readonly message: string };

export interface UpstreamTarget {
  /** `http:` or `https:` base URL of the owner's API. */
  readonly apiUrl: string;
  /** Path and query of the console endpoint. */
  readonly path: string;
  readonly headers: Readonly<Record<string, string>>;
  readonly timeoutMs: number;
}

/** One connection to the owner's console endpoint, from the handshake to the close. */
export class UpstreamSocket {
  private socket: Socket | null = null;
  private done = false;
  private readonly scanner: ServerFrameScanner;

  private constructor(
    private readonly req: ClientRequest,
    private readonly events: UpstreamEvents,
  ) {
    this.scanner = new ServerFrameScanner({
      pass: (raw, outputBytes) => events.pass(raw, outputBytes),
      text: (raw, payload) => events.text(raw, payload),
      ping: (payload) => this.socket?.write(clientFrame(OP_PONG, payload)),
      close: (code, reason) => {
        this.finish(code, reason);
        this.socket?.end();
      },
      tooLarge: () => this.fail(1009),
    });
  }

  /** Starts the handshake; `opened` or `failed` follows, once. */
  static connect(
    target: UpstreamTarget,
    events: UpstreamEvents,
    opened: (upstream: UpstreamSocket) => void,
    failed: (why: HandshakeFailure) => void,
  ): UpstreamSocket {
    const base = new URL(target.apiUrl);
    const key = randomBytes(16).toString('base64');
    const request = base.protocol === 'https:' ? httpsRequest : httpRequest;
    const req = request({
      host: base.hostname.replace(/^\[|\]$/g, ''),
      port: base.port || (base.protocol === 'https:' ? 443 : 80),
      path: target.path,
      method: 'GET',
      agent: false,
      timeout: target.timeoutMs,
      headers: {
        ...target.headers,
        connection: 'Upgrade',
        upgrade: 'websocket',
        'sec-websocket-key': key,
        'sec-websocket-version': '13',
      },
    });
    const upstream = new UpstreamSocket(req, events);
    let settled = false;
    const fail = (why: HandshakeFailure): void => {
      if (settled) return;
      settled = true;
      req.destroy();
      failed(why);
    };
    req.on('timeout', () => fail({ kind: 'unreachable', message: 'the handshake timed out' }));
    req.on('error', (err) => fail({ kind: 'unreachable', message: err.message }));
    req.on('response', (res: IncomingMessage) => {
      const chunks: Buffer[] = [];
      let size = 0;
      res.on('data', (c: Buffer) => {
        size += c.length;
        if (size <= 64 * 1024) chunks.push(c);
      });
      res.on('end', () =>
        fail({ kind: 'refused', status: res.statusCode ?? 502, body: Buffer.concat(chunks) }),
      );
      res.on('error', (err) => fail({ kind: 'unreachable', message: err.message }));
    });
    req.on('upgrade', (res: IncomingMessage, socket: Socket, head: Buffer) => {
      const expected = createHash('sha1').update(`${key}${ACCEPT_GUID}`).digest('base64');
      if (res.headers['sec-websocket-accept'] !== expected) {
        socket.destroy();
        fail({
          kind: 'unreachable',
          message: 'the owner answered the upgrade with a wrong Sec-WebSocket-Accept',
        });
        return;
      }
      if (settled) {
        socket.destroy();
        return;
      }
      settled = true;
      req.setTimeout(0);
      upstream.attach(socket, head);
      opened(upstream);
    });
    req.end();
    return upstream;
  }

  private attach(socket: Socket, head: Buffer): void {
    this.socket = socket;
    socket.setNoDelay(true);
    socket.setTimeout(0);
    socket.on('data', (chunk: Buffer) => {
      if (!this.done) this.scanner.scan(chunk);
    });
    socket.on('error', () => undefined);
    socket.on('close', () => this.finish(1006, ''));
    if (head.length > 0)
      queueMicrotask(() => {
        if (!this.done) this.scanner.scan(head);
      });
  }

  /** Sends a frame to the owner (a keystroke, a control message). */
  send(payload: Buffer, isBinary: boolean): void {
    const socket = this.socket;
    if (!socket || this.done) return;
    socket.write(clientFrame(isBinary ? OP_BINARY : OP_TEXT, payload));
  }

  /** Stops reading the owner (the viewer is behind). */
  pause(): void {
    this.socket?.pause();
  }

  resume(): void {
    if (!this.done) this.socket?.resume();
  }

  /** Ends the connection: a close frame with `code`, then the socket; no `closed` event follows. */
  close(code = 1000): void {
    if (this.done) {
      this.socket?.destroy();
      return;
    }
    this.done = true;
    const socket = this.socket;
    if (!socket) {
      this.req.destroy();
      return;
    }
    const body = Buffer.alloc(2);
    body.writeUInt16BE(code, 0);
    socket.end(clientFrame(OP_CLOSE, body));
    setTimeout(() => socket.destroy(), 2000).unref();
  }

  private finish(code: number, reason: string): void {
    if (this.done) return;
    this.done = true;
    this.events.closed(code, reason);
  }

  private fail(code: number): void {
    this.finish(code, '');
    this.socket?.destroy();
  }
}

/** What a scanner finds in a server's frames. */
export interface ScannerEvents {
  /** Bytes to pass on as they came (output frames, headers included); `outputBytes` of them are payload. */
  pass(raw: Buffer, outputBytes: number): void;
  /** A whole text frame: its bytes as they came, and its payload. */
  text(raw: Buffer, payload: string): void;
  ping(payload: Buffer): void;
  /** A close frame; nothing after it is read. */
  close(code: number, reason: string): void;
  /** A frame other than output longer than MAX_TEXT_BYTES; nothing after it is read. */
  tooLarge(): void;
}

/**
 * Reads a server's WebSocket frames chunk by chunk without copying the output: spans
 * of binary frames (and their continuations), headers included, are handed on as
 * they came, cut only where another frame is taken out whole (text, ping, close,
 * pong). A header split across chunks waits for the next one.
 */
export class ServerFrameScanner {
  private stopped = false;
  /** Bytes of a frame header not complete at the end of the last chunk. */
  private stash: Buffer | null = null;
  /**
   * The frame being read: its opcode (a continuation takes its first frame's), payload
   * bytes left, and for a frame taken out (not output) its bytes so far.
   */
  private frame: {
    opcode: number;
    left: number;
    take: boolean;
    parts: Buffer[];
    payloadFrom: number;
  } | null = null;
  /** The opcode a continuation continues. */
  private messageOpcode = OP_BINARY;

  constructor(private readonly events: ScannerEvents) {}

  /**
   * Reads a chunk of the owner's frames: spans of output frames pass through as they
   * came (their headers with them); text, ping and close frames are taken out whole.
   */
  scan(input: Buffer): void {
    if (this.stopped) return;
    let chunk = input;
    if (this.stash) {
      chunk = Buffer.concat([this.stash, input]);
      this.stash = null;
    }
    let pos = 0;
    /** Start of the span to pass on; -1 inside a frame being taken out. */
    let passFrom = this.frame?.take ? -1 : 0;
    let passOutput = 0;
    const flush = (to: number): void => {
      if (passFrom >= 0 && to > passFrom) this.events.pass(chunk.subarray(passFrom, to), passOutput);
      passFrom = to;
      passOutput = 0;
    };
    while (pos < chunk.length && !this.stopped) {
      const frame = this.frame;
      if (frame) {
        const n = Math.min(frame.left, chunk.length - pos);
        if (frame.take) frame.parts.push(chunk.subarray(pos, pos + n));
        else passOutput += n;
        frame.left -= n;
        pos += n;
        if (frame.left === 0) {
          this.frame = null;
          if (frame.take) {
            passFrom = pos;
            this.taken(frame.opcode, frame.parts, frame.payloadFrom);
          }
        }
        continue;
      }
      const header = readHeader(chunk, pos);
      if (header === null) {
        flush(pos);
        this.stash = Buffer.from(chunk.subarray(pos));
        return;
      }
      const opcode = header.opcode === OP_CONTINUATION ? this.messageOpcode : header.opcode;
      if (header.opcode === OP_TEXT || header.opcode === OP_BINARY) this.messageOpcode = header.opcode;
      pos = header.payloadAt;
      if (opcode === OP_BINARY) {
        // Output passes through, header and all, with the span it is in.
        if (header.length > 0)
          this.frame = { opcode, left: header.length, take: false, parts: [], payloadFrom: 0 };
        continue;
      }
      // Everything else is taken out of the span: what came before it goes on first.
      if (header.length > MAX_TEXT_BYTES) {
        this.stopped = true;
        this.events.tooLarge();
        return;
      }
      flush(header.start);
      passFrom = -1;
      const parts = [chunk.subarray(header.start, pos)];
      if (header.length > 0) {
        this.frame = { opcode, left: header.length, take: true, parts, payloadFrom: pos - header.start };
        continue;
      }
      passFrom = pos;
      this.taken(opcode, parts, pos - header.start);
    }
    if (!this.stopped) flush(chunk.length);
  }

  /** A frame the scanner took whole: its bytes, the payload from `payloadFrom` on. */
  private taken(opcode: number, parts: Buffer[], payloadFrom: number): void {
    const raw = parts.length === 1 ? parts[0]! : Buffer.concat(parts);
    const body = raw.subarray(payloadFrom);
    if (opcode === OP_TEXT) this.events.text(raw, body.toString('utf8'));
    else if (opcode === OP_PING) this.events.ping(body);
    else if (opcode === OP_CLOSE) {
      this.stopped = true;
      const code = body.length >= 2 ? body.readUInt16BE(0) : 1005;
      this.events.close(code, body.length > 2 ? body.subarray(2).toString('utf8') : '');
    }
    // Pongs and unknown opcodes: nothing to do.
  }
}

/** A frame header at `pos`, or null when the chunk ends inside it. */
function readHeader(
  chunk: Buffer,
  pos: number,
): { opcode: number; length: number; start: number; payloadAt: number } | null {
  if (chunk.length - pos < 2) return null;
  const b0 = chunk[pos]!;
  const b1 = chunk[pos + 1]!;
  const masked = (b1 & 0x80) !== 0;
  let length = b1 & 0x7f;
  let at = pos + 2;
  if (length === 126) {
    if (chunk.length - at < 2) return null;
    length = chunk.readUInt16BE(at);
    at += 2;
  } else if (length === 127) {
    if (chunk.length - at < 8) return null;
    length = Number(chunk.readBigUInt64BE(at));
    at += 8;
  }
  if (masked) {
    // A server never masks (RFC 6455 section 5.1); take the key as part of the header.
    if (chunk.length - at < 4) return null;
    at += 4;
  }
  return { opcode: b0 & 0x0f, length, start: pos, payloadAt: at };
}

/** A final client frame masked with a zero key, header and payload in one buffer. */
function clientFrame(opcode: number, payload: Buffer): Buffer {
  const n = payload.length;
  const lengthBytes = n < 126 ? 0 : n < 65536 ? 2 : 8;
  const frame = Buffer.allocUnsafe(2 + lengthBytes + 4 + n);
  frame[0] = 0x80 | opcode;
  if (lengthBytes === 0) frame[1] = 0x80 | n;
  else if (lengthBytes === 2) {
    frame[1] = 0x80 | 126;
    frame.writeUInt16BE(n, 2);
  } else {
    frame[1] = 0x80 | 127;
    frame.writeBigUInt64BE(BigInt(n), 2);
  }
  frame.writeUInt32BE(0, 2 + lengthBytes); // the zero masking key
  payload.copy(frame, 2 + lengthBytes + 4);
  return frame;
}
