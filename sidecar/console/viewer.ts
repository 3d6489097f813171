import type { Duplex } from 'node:stream';
import type { WebSocket } from 'ws';
import { ConsoledError, type ErrorCode } from '../../common/errors.js';
import type { TokenBucket } from '../capture/token-bucket.js';
import type { AuditSubject } from './audit-log.js';
import { allocBinaryFrame, encodeBinaryFrame } from './binary-frame.js';
import type { OutputRing } from './output-ring.js';
import { encodeServerMessage, type ServerMessage } from './protocol.js';
import type { ViewerMode } from './viewer-token.js';

/** Why a viewer's socket is not read (see `Viewer.pauseInput`). */
export type InputPause = 'guest' | 'rate';

/** How a viewer authenticated and what it may do. */
export interface ViewerIdentity {
  readonly mode: ViewerMode;
  /** Display name: the token's `sub`, or `admin`. */
  readonly name: string | undefined;
  /** The token's `jti`, or `admin`. */
  readonly tokenId: string;
  /** The token's chain id (`chn`, else its `jti`: viewer-token.ts); none for the admin and anonymous. */
  readonly chain?: string | undefined;
  readonly remote: string;
  readonly origin: string | undefined;
}

/** The buffer bounds of one viewer (from the `console` config). */
export interface ViewerLimits {
  readonly viewerBufferBytes: number;
  readonly socketHighWaterBytes: number;
  readonly maxFrameBytes: number;
}

/**
 * A viewer's states: `catching-up` reads the log files (its start is older than
 * the ring), `live` is sent from the ring, `closed` is gone.
 */
export type ViewerState = 'catching-up' | 'live' | 'closed';

/**
 * Frames shared between viewers at the same offset during one flush: the output
 * `[from, to)` keyed by `from`, encoded once as a WebSocket message (`wire`).
 */
export type FrameCache = Map<number, { to: number; wire: Buffer }>;

interface PositionedMessage {
  /** Sent once every byte before this offset has been sent (or skipped). */
  offset: number;
  readonly text: string;
}

/**
 * One WebSocket console connection on the output side: its cursor into the
 * guest's output (`next`, the offset of the next byte it gets), its bounded share
 * of the hub's ring, and the control messages that must follow given bytes.
 *
 * A viewer holds no copy of the output: it is a cursor into the hub's ring, so 100
 * viewers cost one ring, and at a flush viewers at the same offset share one frame.
 * Its bound is `viewerBufferBytes` of output not yet handed to its socket plus
 * `socketHighWaterBytes` in the socket: past that it skips ahead.
 */
export class Viewer implements AuditSubject {
  private stateValue: ViewerState = 'catching-up';
  /** Offset of the next output byte this viewer gets. */
  next = 0;
  private readonly positioned: PositionedMessage[] = [];
  /** Whether the socket was over its high-water mark at the last attempt. */
  private blocked = false;
  private waitingForRoom: Array<() => void> = [];
  /** Since when the viewer is behind (blocked or skipping) without catching up; null when caught up. */
  behindSinceMs: number | null = null;
  /**
   * Why this viewer's socket is not read: `guest`, the guest side has
   * MAX_KEYSTROKE_INFLIGHT_BYTES waiting (until the source's `drain`); `rate`, the
   * writer is over its keystroke rate (until its bucket refills). Read again when
   * neither holds.
   */
  private readonly inputPausedFor = new Set<InputPause>();
  /** The writer's keystroke budget (created at its first keystroke when a rate is set). */
  keystrokeBucket: TokenBucket | null = null;
  /** Resumes reading after a rate-limit pause. */
  rateTimer: NodeJS.Timeout | null = null;
  /** Whether the current episode of falling behind was logged (one warning per episode). */
  skipWarned = false;
  /** One NOT_WRITER error per episode of keystrokes from a non-writer. */
  notWriterWarned = false;
  readonly connectedAtMs = Date.now();
  lastActivityMs = Date.now();
  readonly stats = {
    bytesSent: 0,
    framesSent: 0,
    skippedBytes: 0,
    skipEpisodes: 0,
    keystrokeBytes: 0,
    keystrokeFrames: 0,
    droppedKeystrokeBytes: 0,
  };
  private readonly onSent: (err?: Error | null) => void;
  /**
   * The WebSocket's own connection, which output frames (already encoded, see
   * binary-frame.ts) are written to directly. Control messages and the close go
   * through `ws`, which writes to the same socket at once (no deflate, so its
   * sender never queues), so everything leaves in the order it was sent.
   */
  private readonly socket: Duplex;

  constructor(
    readonly ws: WebSocket,
    readonly guest: string,
    readonly viewerId: string,
    readonly identity: ViewerIdentity,
    private readonly limits: ViewerLimits,
    /** Called when the socket drained below its high-water mark while output waits. */
    private readonly onRoom: () => void,
  ) {
    this.socket = socketOf(ws);
    this.onSent = () => {
      if (this.ws.bufferedAmount >= this.limits.socketHighWaterBytes) return;
      if (this.waitingForRoom.length > 0) {
        const waiting = this.waitingForRoom;
        this.waitingForRoom = [];
        for (const resolve of waiting) resolve();
      }
      if (this.blocked) {
        this.blocked = false;
        this.onRoom();
      }
    };
  }

  get state(): ViewerState {
    return this.stateValue;
  }

  get mode(): ViewerMode {
    return this.identity.mode;
  }

  get name(): string | undefined {
    return this.identity.name;
  }

  get tokenId(): string {
    return this.identity.tokenId;
  }

  get chain(): string | undefined {
    return this.identity.chain;
  }

  get remote(): string {
    return this.identity.remote;
  }

  get open(): boolean {
    return this.stateValue !== 'closed' && this.ws.readyState === this.ws.OPEN;
  }

  /** Whether the socket has room for more output. */
  get hasRoom(): boolean {
    return this.ws.bufferedAmount < this.limits.socketHighWaterBytes;
  }

  /** The ring serves this viewer from now on, starting at `offset`. */
  goLive(offset: number): void {
    if (this.stateValue === 'closed') return;
    this.next = offset;
    this.stateValue = 'live';
  }

  /** Stops reading this viewer's socket for `reason`; returns whether it was reading until now. */
  pauseInput(reason: InputPause): boolean {
    if (this.inputPausedFor.has(reason)) return false;
    this.inputPausedFor.add(reason);
    if (this.inputPausedFor.size === 1) this.ws.pause();
    return true;
  }

  /** Lifts `reason`; the socket is read again when no other reason holds. */
  resumeInput(reason: InputPause): void {
    if (!this.inputPausedFor.delete(reason)) return;
    if (this.inputPausedFor.size === 0 && this.stateValue !== 'closed') this.ws.resume();
  }

  inputPaused(reason: InputPause): boolean {
    return this.inputPausedFor.has(reason);
  }

  /** Reasons its socket is not read now, for status. */
  get inputPauses(): InputPause[] {
    return [...this.inputPausedFor];
  }

  markClosed(): void {
    this.stateValue = 'closed';
    this.inputPausedFor.clear();
    if (this.rateTimer) clearTimeout(this.rateTimer);
    this.rateTimer = null;
    const waiting = this.waitingForRoom;
    this.waitingForRoom = [];
    for (const resolve of waiting) resolve();
  }

  /** A JSON control message, now. */
  sendJson(message: ServerMessage): void {
    if (this.ws.readyState !== this.ws.OPEN) return;
    this.ws.send(encodeServerMessage(message));
  }

  sendError(code: ErrorCode, message?: string): void {
    const err = new ConsoledError(code, message);
    this.sendJson({ type: 'error', code: err.code, message: err.message });
  }

  /** Moves this viewer's offsets by `delta` (the log was renumbered). */
  shift(delta: number): void {
    this.next += delta;
    for (const message of this.positioned) message.offset += delta;
  }

  /** A JSON control message sent right after every output byte before `offset`. */
  sendAfter(offset: number, message: ServerMessage): void {
    if (this.stateValue === 'closed') return;
    this.positioned.push({ offset, text: encodeServerMessage(message) });
    if (this.stateValue === 'live' && this.next >= offset) this.sendDuePositioned();
  }

  /**
   * Sends what the ring holds for this viewer, as far as its socket has room.
   * Returns the frames sent. A viewer still more than `viewerBufferBytes` behind
   * then skips to the end of the ring and is told (`skipped`).
   */
  pump(ring: OutputRing, cache: FrameCache, nowMs: number, end = ring.end): number {
    if (this.stateValue !== 'live' || this.ws.readyState !== this.ws.OPEN) return 0;
    let frames = 0;
    if (this.next < ring.start) this.skipTo(end, nowMs);
    while (this.next < end) {
      if (!this.hasRoom) {
        this.blocked = true;
        this.behindSinceMs ??= nowMs;
        break;
      }
      const from = this.next;
      let to = Math.min(end, from + this.limits.maxFrameBytes);
      const due = this.positioned[0];
      if (due && due.offset > from && due.offset < to) to = due.offset;
      let frame = cache.get(from);
      if (!frame || frame.to !== to) {
        const { frame: wire, payloadAt } = allocBinaryFrame(to - from);
        ring.copy(from, to, wire, payloadAt);
        frame = { to, wire };
        cache.set(from, frame);
      }
      this.sendWire(frame.wire, to - from);
      this.next = to;
      frames++;
      this.sendDuePositioned();
    }
    // What the socket could not take stays in the ring, up to the viewer's bound.
    if (end - this.next > this.limits.viewerBufferBytes) this.skipTo(end, nowMs);
    this.sendDuePositioned();
    if (this.next >= end && !this.blocked) {
      this.behindSinceMs = null;
      this.skipWarned = false;
    }
    return frames;
  }

  /**
   * Sends bytes read from the log at `offset` (catching up), splitting them around
   * positioned messages. Resolves when the socket has room for more.
   */
  async sendCatchUp(offset: number, bytes: Buffer): Promise<void> {
    let pos = 0;
    this.sendDuePositioned(offset);
    while (pos < bytes.length && this.stateValue === 'catching-up') {
      const due = this.positioned[0];
      const cut =
        due && due.offset > offset + pos && due.offset < offset + bytes.length
          ? due.offset - offset
          : bytes.length;
      if (cut > pos) this.sendWire(encodeBinaryFrame(bytes.subarray(pos, cut)), cut - pos);
      pos = cut;
      this.sendDuePositioned(offset + pos);
    }
    if (!this.hasRoom && this.stateValue === 'catching-up') {
      await new Promise<void>((resolve) => this.waitingForRoom.push(resolve));
    }
  }

  /** Skips the output between `next` and `offset` and says so. */
  skipTo(offset: number, nowMs: number): number {
    const bytes = offset - this.next;
    if (bytes <= 0) return 0;
    this.stats.skippedBytes += bytes;
    this.stats.skipEpisodes++;
    this.behindSinceMs ??= nowMs;
    this.next = offset;
    this.sendJson({ type: 'skipped', bytes, offset });
    this.sendDuePositioned();
    return bytes;
  }

  /** An encoded binary message carrying `payloadBytes` of output; nothing once a close was sent. */
  private sendWire(wire: Buffer, payloadBytes: number): void {
    if (this.ws.readyState !== this.ws.OPEN) return;
    this.stats.bytesSent += payloadBytes;
    this.stats.framesSent++;
    this.socket.write(wire, this.onSent);
  }

  private sendDuePositioned(upTo = this.next): void {
    while (this.positioned.length > 0 && this.positioned[0]!.offset <= upTo) {
      const message = this.positioned.shift()!;
      if (this.ws.readyState === this.ws.OPEN) this.ws.send(message.text);
    }
  }
}

/**
 * The connection under a server-side WebSocket: the socket the HTTP server handed
 * to `handleUpgrade`, which ws keeps as `_socket` and writes its own frames to.
 */
export function socketOf(ws: WebSocket): Duplex {
  const socket = (ws as unknown as { _socket?: Duplex })._socket;
  if (!socket) throw new Error('a Viewer needs an open server-side WebSocket');
  return socket;
}
