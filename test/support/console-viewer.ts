/**
 * A WebSocket console viewer for tests, speaking the protocol of README.md
 * ("WebSocket console") over a real socket: it records every control message and
 * every output byte with its offset, so tests can compare what a viewer saw with the
 * log byte for byte.
 */
import { type RawData, WebSocket } from 'ws';
import { waitFor } from './wait.js';

export type ControlMessage = { type: string; [key: string]: unknown };

/** A contiguous run of output a viewer got, at its log offset. */
export interface OutputSegment {
  offset: number;
  bytes: Buffer[];
  length: number;
}

export interface ConnectOptions {
  /** Sent in the first frame (`{"type":"auth"}`), unless `header` is set. */
  token?: string | undefined;
  /** Send the token in an Authorization header instead of the first frame. */
  header?: boolean;
  from?: number;
  mode?: 'ro' | 'rw';
  origin?: string;
  /** A Host header other than the URL's. */
  host?: string;
  /** Do not send any auth frame. */
  noAuth?: boolean;
  /** Further headers for the upgrade request (X-Forwarded-For and the like). */
  headers?: Record<string, string>;
}

/** How a connection attempt ended when it did not reach `welcome`. */
export type Refusal =
  | { kind: 'http'; status: number; code: string }
  | { kind: 'close'; closeCode: number; reason: string; error: string | undefined };

export class ConsoleViewer {
  readonly messages: ControlMessage[] = [];
  /** For each message, the offset of the next output byte when it arrived. */
  readonly messageOffsets: number[] = [];
  /** Output in contiguous segments; a `skipped` starts a new one. */
  readonly segments: OutputSegment[] = [];
  welcome: ControlMessage | null = null;
  /** Offset of the next byte expected. */
  next = -1;
  closeInfo: { code: number; reason: string } | null = null;
  readonly closed: Promise<{ code: number; reason: string }>;
  /** Protocol violations seen (a test expects none). */
  readonly protocolErrors: string[] = [];
  /** Order of events: 'bytes' or a message type, for ordering checks. */
  readonly events: string[] = [];

  private constructor(readonly ws: WebSocket) {
    this.closed = new Promise((resolve) => {
      ws.on('close', (code, reason) => {
        this.closeInfo = { code, reason: reason.toString('utf8') };
        resolve(this.closeInfo);
      });
    });
    ws.on('error', () => undefined);
    ws.on('message', (data: RawData, isBinary: boolean) => this.onMessage(data, isBinary));
  }

  static url(base: string, guest: string, options: ConnectOptions = {}): string {
    const url = new URL(`/v1/guests/${encodeURIComponent(guest)}/console`, base);
    url.protocol = 'ws:';
    if (options.from !== undefined) url.searchParams.set('from', String(options.from));
    if (options.mode !== undefined) url.searchParams.set('mode', options.mode);
    return url.href;
  }

  /** Opens a socket and authenticates; resolves with the viewer whatever happens next. */
  static open(base: string, guest: string, options: ConnectOptions = {}): Promise<ConsoleViewer> {
    const headers: Record<string, string> = { ...options.headers };
    if (options.header && options.token !== undefined) headers['authorization'] = `Bearer ${options.token}`;
    if (options.origin !== undefined) headers['origin'] = options.origin;
    if (options.host !== undefined) headers['host'] = options.host;
    const ws = new WebSocket(ConsoleViewer.url(base, guest, options), { headers, perMessageDeflate: false });
    const viewer = new ConsoleViewer(ws);
    return new Promise((resolve, reject) => {
      ws.once('open', () => {
        if (!options.header && !options.noAuth) {
          ws.send(
            JSON.stringify(
              options.token === undefined ? { type: 'auth' } : { type: 'auth', token: options.token },
            ),
          );
        }
        resolve(viewer);
      });
      ws.once('unexpected-response', (_req, res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          let code = `HTTP_${res.statusCode}`;
          try {
            code = (JSON.parse(Buffer.concat(chunks).toString('utf8')) as { error: { code: string } }).error
              .code;
          } catch {
            // not our JSON
          }
          reject(
            Object.assign(new Error(`refused: ${res.statusCode} ${code}`), {
              refusal: { kind: 'http', status: res.statusCode ?? 0, code },
            }),
          );
        });
      });
      ws.once('error', (err) => reject(err));
    });
  }

  /** Connects and waits for `welcome`; throws with the refusal otherwise. */
  static async connect(base: string, guest: string, options: ConnectOptions = {}): Promise<ConsoleViewer> {
    const viewer = await ConsoleViewer.open(base, guest, options);
    await Promise.race([
      viewer.waitFor('welcome'),
      viewer.closed.then((c) => {
        throw new Error(`closed before welcome: ${c.code} ${c.reason}`);
      }),
    ]);
    return viewer;
  }

  /** Connects expecting a refusal, before the upgrade (HTTP) or after (close). */
  static async refusal(base: string, guest: string, options: ConnectOptions = {}): Promise<Refusal> {
    let viewer: ConsoleViewer;
    try {
      viewer = await ConsoleViewer.open(base, guest, options);
    } catch (err) {
      const refusal = (err as { refusal?: Refusal }).refusal;
      if (refusal) return refusal;
      throw err;
    }
    const { code, reason } = await viewer.closed;
    if (viewer.welcome)
      throw new Error(`expected a refusal but got welcome ${JSON.stringify(viewer.welcome)}`);
    const error = viewer.messages.find((m) => m.type === 'error');
    return { kind: 'close', closeCode: code, reason, error: error?.['code'] as string | undefined };
  }

  /** How a token is refused both ways: in the first frame (a close) and in the header (before the upgrade). */
  static async refusedBothWays(
    base: string,
    guest: string,
    token: string,
  ): Promise<{ frame: Refusal; header: Refusal }> {
    return {
      frame: await ConsoleViewer.refusal(base, guest, { token }),
      header: await ConsoleViewer.refusal(base, guest, { token, header: true }),
    };
  }

  private onMessage(data: RawData, isBinary: boolean): void {
    const bytes = Buffer.isBuffer(data)
      ? data
      : Array.isArray(data)
        ? Buffer.concat(data)
        : Buffer.from(data);
    if (isBinary) {
      if (this.next < 0) {
        this.protocolErrors.push('binary frame before welcome');
        return;
      }
      let seg = this.segments[this.segments.length - 1];
      if (!seg || seg.offset + seg.length !== this.next) {
        seg = { offset: this.next, bytes: [], length: 0 };
        this.segments.push(seg);
      }
      seg.bytes.push(bytes);
      seg.length += bytes.length;
      this.next += bytes.length;
      if (this.events[this.events.length - 1] !== 'bytes') this.events.push('bytes');
      return;
    }
    const message = JSON.parse(bytes.toString('utf8')) as ControlMessage;
    this.messages.push(message);
    this.messageOffsets.push(this.next);
    this.events.push(message.type);
    if (message.type === 'welcome') {
      // A second welcome: a proxying host followed the guest to its new owner.
      if (this.welcome && message['offset'] !== this.next)
        this.protocolErrors.push(`welcome at ${String(message['offset'])} after output up to ${this.next}`);
      this.welcome = message;
      this.next = message['offset'] as number;
    } else if (message.type === 'skipped') {
      this.next = message['offset'] as number;
    } else if (message.type === 'renumbered') {
      this.next += (message['to'] as number) - (message['from'] as number);
    }
  }

  /** Every output byte received, in order (segments concatenated). */
  get output(): Buffer {
    return Buffer.concat(this.segments.flatMap((s) => s.bytes));
  }

  get text(): string {
    return this.output.toString('latin1');
  }

  get viewerId(): string {
    return this.welcome?.['viewerId'] as string;
  }

  /** The offset the output had reached when `message` arrived. */
  offsetAt(message: ControlMessage): number {
    return this.messageOffsets[this.messages.indexOf(message)] ?? -1;
  }

  /** Waits for a control message of `type` (matching `test`), counting from message `since`. */
  waitFor(
    type: string,
    test: (m: ControlMessage) => boolean = () => true,
    since = 0,
    timeoutMs = 10_000,
  ): Promise<ControlMessage> {
    return waitFor(
      `a ${type} message`,
      () => {
        const found = this.messages.slice(since).find((m) => m.type === type && test(m));
        if (found) return found;
        if (this.closeInfo)
          throw new Error(
            `closed (${this.closeInfo.code} ${this.closeInfo.reason}) while waiting for ${type}`,
          );
        return undefined;
      },
      { timeoutMs, intervalMs: 5 },
    );
  }

  /** The last `lock` message (or the welcome's writer when none came yet). */
  get lock(): { writer: { viewerId: string; name: string | null } | null; viewers: number } {
    const last = [...this.messages].reverse().find((m) => m.type === 'lock' || m.type === 'welcome');
    return {
      writer: (last?.['writer'] ?? null) as { viewerId: string; name: string | null } | null,
      viewers: last?.['viewers'] as number,
    };
  }

  waitForText(text: string, timeoutMs = 10_000): Promise<true> {
    return waitFor(`${JSON.stringify(text)} in the output`, () => this.text.includes(text) || undefined, {
      timeoutMs,
      intervalMs: 5,
    });
  }

  waitForOffset(offset: number, timeoutMs = 20_000): Promise<true> {
    return waitFor(
      `output up to offset ${offset} (at ${this.next})`,
      () => this.next >= offset || undefined,
      { timeoutMs, intervalMs: 5 },
    );
  }

  keys(bytes: string | Buffer): void {
    this.ws.send(typeof bytes === 'string' ? Buffer.from(bytes, 'utf8') : bytes, { binary: true });
  }

  control(message: ControlMessage): void {
    this.ws.send(JSON.stringify(message));
  }

  async close(): Promise<void> {
    if (this.ws.readyState === WebSocket.OPEN) this.ws.close(1000);
    await this.closed;
  }
}

/** The parts of `GET /v1/guests/{id}` the console tests read. */
export interface GuestStatusJson {
  offset: number;
  flushedOffset: number;
  oldestOffset: number;
  drops: { suppressedBytes: number; lostBytes: number };
  console: {
    viewers: number;
    writer: { viewerId: string; name: string | null } | null;
    skippedBytes: number;
    slowDisconnects: number;
    keystrokeBytes: number;
    droppedKeystrokeBytes: number;
    startsFromLog: number;
  };
}
