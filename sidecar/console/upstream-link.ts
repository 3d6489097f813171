/**
 * A proxied console connection's upstream half (docs/design.md "Console across
 * hosts"): a viewer connected to a host that does not serve the guest (the edge) is
 * joined, frame for frame, to a WebSocket to the guest's owner. The edge checked the
 * viewer's token; the owner checks it again (and spends a single-use one), and
 * believes the viewer's address because the request carries this host's credential
 * (host-credential.ts).
 *
 * The link follows the guest: on `moved` from the owner it connects to the new owner
 * with `from` = the moved offset; when the owner closes for its upgrade (1012) or a
 * restart (SHUTTING_DOWN), or its connection drops without a close (a crash), it
 * reconnects, for up to FOLLOW_TIMEOUT_MS, with `from` = the next byte it has (the
 * viewer is told with a `guest` message that the host went away). The viewer's own
 * connection stays open and gets the new owner's `welcome`. While it reconnects, keystrokes wait in a small buffer.
 * The token it reconnects with is the newest the owner handed it (`token` messages:
 * a single-use token's successor), so a single-use token is never presented twice.
 */
import type { Logger } from 'pino';
import { ConsoledError, ERROR_CODES, type ErrorCode } from '../../common/errors.js';
import type { ConsoleCluster, OwnerAddress } from './console-cluster.js';
import type { HostCredential } from './host-credential.js';
import { encodeServerMessage, parseServerMessage } from './protocol.js';
import { UpstreamSocket } from './upstream-socket.js';
import type { ViewerMode } from './viewer-token.js';

/** How long the link keeps trying to reach the guest's (new) owner before it gives up. */
export const FOLLOW_TIMEOUT_MS = 60_000;
/** The longest an upstream handshake may take. */
const HANDSHAKE_TIMEOUT_MS = 5_000;
/**
 * Pauses between attempts, growing to the last. Short at first: a migration's
 * destination answers GUEST_ARRIVING for the few ms it takes to adopt the stream.
 */
const RETRY_DELAYS_MS = [10, 10, 20, 20, 40, 40, 80, 160, 320, 640, 1000];
/** Bytes sent to the viewer and not yet written out past which the owner's socket is not read. */
const HIGH_WATER_BYTES = 1024 * 1024;
/** Keystroke and control bytes held while reconnecting; more is dropped (and counted). */
const MAX_HELD_BYTES = 64 * 1024;
/** Refusals from an owner that a retry can cure: it is still taking the guest in, or restarting. */
const RETRYABLE: ReadonlySet<string> = new Set([
  'GUEST_ARRIVING',
  'GUEST_NOT_FOUND',
  'GUEST_MOVED',
  'UPGRADING',
  'SHUTTING_DOWN',
  'UPSTREAM_UNAVAILABLE',
]);

/** What the link needs of the viewer's side. */
export interface DownstreamSide {
  /** A message of the link's own (a `moved` it rewrote, a notice). */
  send(data: Buffer | string, isBinary: boolean): void;
  /** Whole frames from the owner, as they came: written to the viewer's socket as they are. */
  writeRaw(frames: Buffer): void;
  /** Bytes sent to the viewer and not yet written out. */
  readonly bufferedAmount: number;
  /** Calls `resume` once the viewer's socket has written out what it held. */
  onDrain(resume: () => void): void;
  /** Ends the viewer's connection: with the owner's close code and reason, or with an error. */
  close(code: number, reason: string, error?: ConsoledError): void;
}

export interface UpstreamLinkOptions {
  readonly guestId: string;
  /** The viewer's token (null: anonymous, a host without console auth). */
  readonly token: string | null;
  readonly wantMode: ViewerMode | undefined;
  readonly from: number | null;
  /** The viewer's address as this host sees it. */
  readonly client: string;
  /** The owner as found when the viewer connected: the first attempt goes there without a lookup. */
  readonly owner: OwnerAddress | null;
  readonly cluster: ConsoleCluster;
  readonly credential: HostCredential;
  readonly downstream: DownstreamSide;
  readonly logger: Logger;
}

/** Counters across the links of one host, for metrics. */
export interface LinkCounters {
  opened: number;
  follows: number;
  failures: number;
  droppedHeldBytes: number;
}

export class UpstreamLink {
  private up: UpstreamSocket | null = null;
  private token: string | null;
  /** The offset of the next byte the viewer gets; null before the first welcome. */
  private next: number | null;
  private moved: { host: string; offset: number } | null = null;
  /** Frames from the viewer while no upstream is open. */
  private held: Array<{ data: Buffer; isBinary: boolean }> = [];
  private heldBytes = 0;
  private paused = false;
  private closed = false;
  private attempt = 0;
  private deadline = 0;
  private retryTimer: NodeJS.Timeout | null = null;
  /** The owner the open upstream goes to. */
  private owner: OwnerAddress | null = null;
  /** The owner the last upstream went to, for the viewer's notice when it went away. */
  private ownerHostOnClose: string | null = null;

  constructor(
    private readonly options: UpstreamLinkOptions,
    private readonly counters: LinkCounters,
  ) {
    this.token = options.token;
    this.next = options.from;
    counters.opened++;
  }

  start(): void {
    this.deadline = Date.now() + FOLLOW_TIMEOUT_MS;
    if (this.options.owner) this.open(this.options.owner);
    else void this.connect(null);
  }

  /** A frame from the viewer, for the owner. */
  fromViewer(data: Buffer, isBinary: boolean): void {
    if (this.closed) return;
    const up = this.up;
    if (up !== null && this.owner !== null) {
      up.send(data, isBinary);
      return;
    }
    if (this.heldBytes + data.length > MAX_HELD_BYTES) {
      this.counters.droppedHeldBytes += data.length;
      return;
    }
    this.held.push({ data, isBinary });
    this.heldBytes += data.length;
  }

  /** The viewer left (or the edge closes it): the upstream goes too. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    if (this.retryTimer) clearTimeout(this.retryTimer);
    const up = this.up;
    this.up = null;
    up?.close(1000);
  }

  private async connect(lastError: ConsoledError | null): Promise<void> {
    if (this.closed) return;
    if (Date.now() > this.deadline) {
      this.fail(
        lastError ??
          new ConsoledError('UPSTREAM_UNAVAILABLE', `no owner of ${this.options.guestId} could be reached`),
      );
      return;
    }
    let owner: OwnerAddress | null;
    try {
      owner = await this.options.cluster.locateOwner(this.options.guestId);
    } catch (err) {
      this.retry(
        new ConsoledError('UPSTREAM_UNAVAILABLE', `the owner lookup failed: ${(err as Error).message}`),
      );
      return;
    }
    if (this.closed) return;
    // After a move, wait until the stream names the host the guest went to.
    if (owner === null || (this.moved !== null && owner.hostId !== this.moved.host)) {
      this.retry(
        lastError ??
          new ConsoledError(
            'GUEST_NOT_FOUND',
            `guest ${this.options.guestId} is not owned by any registered host`,
          ),
      );
      return;
    }
    this.open(owner);
  }

  private retry(error: ConsoledError): void {
    if (this.closed) return;
    if (Date.now() > this.deadline || !RETRYABLE.has(error.code)) {
      this.fail(error);
      return;
    }
    const delay = RETRY_DELAYS_MS[Math.min(this.attempt, RETRY_DELAYS_MS.length - 1)]!;
    this.attempt++;
    this.retryTimer = setTimeout(() => {
      this.retryTimer = null;
      void this.connect(error);
    }, delay);
  }

  private fail(error: ConsoledError): void {
    if (this.closed) return;
    this.counters.failures++;
    this.options.logger.warn(
      { guest: this.options.guestId, code: error.code, err: error.message },
      'console proxy: giving up on the owner',
    );
    this.close();
    this.options.downstream.close(error.wsCloseCode, error.code, error);
  }

  /** The console endpoint's path and query on the owner. */
  private upstreamPath(owner: OwnerAddress): string {
    const base = new URL(owner.apiUrl);
    const query = new URLSearchParams();
    if (this.next !== null) query.set('from', String(this.next));
    if (this.options.wantMode !== undefined) query.set('mode', this.options.wantMode);
    const search = query.size > 0 ? `?${query.toString()}` : '';
    return `${base.pathname.replace(/\/$/, '')}/v1/guests/${encodeURIComponent(this.options.guestId)}/console${search}`;
  }

  private open(owner: OwnerAddress): void {
    const path = this.upstreamPath(owner);
    const headers: Record<string, string> = this.options.credential.sign(path, this.options.client);
    if (this.token !== null) headers['authorization'] = `Bearer ${this.token}`;
    let up: UpstreamSocket | null = null;
    const mine = (): boolean => up !== null && up === this.up && !this.closed;
    up = UpstreamSocket.connect(
      { apiUrl: owner.apiUrl, path, headers, timeoutMs: HANDSHAKE_TIMEOUT_MS },
      {
        pass: (raw, outputBytes) => {
          if (!mine()) return;
          if (this.next !== null) this.next += outputBytes;
          this.forward(raw);
        },
        text: (raw, payload) => {
          if (mine()) this.onText(raw, payload);
        },
        closed: (code, reason) => {
          if (!mine()) return;
          this.up = null;
          this.ownerHostOnClose = this.owner?.hostId ?? null;
          this.owner = null;
          this.onUpstreamClosed(code, reason);
        },
      },
      (opened) => {
        if (!mine()) {
          opened.close(1000);
          return;
        }
        this.owner = owner;
        if (this.paused) opened.pause();
        for (const { data, isBinary } of this.held) opened.send(data, isBinary);
        this.held = [];
        this.heldBytes = 0;
      },
      (why) => {
        if (!mine()) return;
        this.up = null;
        this.retry(
          why.kind === 'refused'
            ? errorFromBody(why.body, why.status)
            : new ConsoledError(
                'UPSTREAM_UNAVAILABLE',
                `cannot reach ${owner.hostId} (${owner.apiUrl}): ${why.message}`,
              ),
        );
      },
    );
    this.up = up;
  }

  private onUpstreamClosed(code: number, reason: string): void {
    // The owner went away without a word (a crash, a SIGKILL) or for a restart: the
    // viewer is told, and the link waits for it (or a new owner) to come back.
    const lost = code === 1006 || reason === 'SHUTTING_DOWN';
    const follow =
      (this.moved !== null && reason === 'GUEST_MOVED') || reason === 'UPGRADING' || code === 1012 || lost;
    if (lost)
      this.options.downstream.send(
        encodeServerMessage({
          type: 'guest',
          state: 'disconnected',
          reason: `the host that runs the guest (${this.ownerHostOnClose ?? 'its owner'}) went away; reconnecting`,
        }),
        false,
      );
    if (!follow) {
      // Anything else ends the viewer's connection the way the owner ended this one.
      this.closed = true;
      this.options.downstream.close(code === 1005 || code === 1006 ? 1011 : code, reason);
      return;
    }
    if (this.moved !== null) this.next = this.moved.offset;
    this.counters.follows++;
    this.attempt = 0;
    this.deadline = Date.now() + FOLLOW_TIMEOUT_MS;
    void this.connect(null);
  }

  /** A control message from the owner: read for what the link needs, passed on as it came. */
  private onText(raw: Buffer, text: string): void {
    const message = parseServerMessage(text);
    switch (message?.type) {
      case 'welcome':
        this.next = message.offset;
        this.moved = null;
        break;
      case 'skipped':
        this.next = message.offset;
        break;
      case 'renumbered':
        if (this.next !== null) this.next += message.to - message.from;
        break;
      case 'token':
        this.token = message.token;
        break;
      case 'moved':
        // The link follows the guest itself: the viewer stays connected.
        this.moved = { host: message.host, offset: message.offset };
        this.options.downstream.send(encodeServerMessage({ ...message, proxied: true }), false);
        return;
      default:
        break;
    }
    this.forward(raw);
  }

  /** Frames to the viewer as the owner sent them, pausing the owner while the viewer is behind. */
  private forward(raw: Buffer): void {
    const downstream = this.options.downstream;
    downstream.writeRaw(raw);
    if (this.paused || downstream.bufferedAmount < HIGH_WATER_BYTES) return;
    this.paused = true;
    this.up?.pause();
    downstream.onDrain(() => {
      this.paused = false;
      if (!this.closed) this.up?.resume();
    });
  }
}

/** The error an owner answered a refused upgrade with (its JSON body), else one for its status. */
function errorFromBody(body: Buffer, status: number): ConsoledError {
  try {
    const parsed = JSON.parse(body.toString('utf8')) as { error?: { code?: unknown; message?: unknown } };
    const code = parsed.error?.code;
    if (typeof code === 'string' && code in ERROR_CODES) {
      const message = typeof parsed.error?.message === 'string' ? parsed.error.message : undefined;
      return new ConsoledError(code as ErrorCode, message);
    }
  } catch {
    // not JSON: the status decides
  }
  return new ConsoledError('UPSTREAM_UNAVAILABLE', `the owner answered HTTP ${status}`);
}
