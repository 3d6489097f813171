import type { Logger } from 'pino';
import type { WebSocket } from 'ws';
import { ConsoledError, type ErrorCode } from '../../common/errors.js';
import { inMicrotask } from '../../common/microtask.js';
import type { CapturedChunk } from '../capture/capture.js';
import { TokenBucket } from '../capture/token-bucket.js';
import type { Guest } from '../guest.js';
import type { AuditLog } from './audit-log.js';
import type { ConsoleConfig } from './console-config.js';
import { FlushPacer } from './flush-pacer.js';
import { OutputRing } from './output-ring.js';
import {
  type BootMessage,
  type ClientRequest,
  type GuestMessage,
  type LockMessage,
  type RenewMessage,
  resizeSize,
  sendErrorAndClose,
  type WriterInfo,
} from './protocol.js';
import { type FrameCache, Viewer, type ViewerIdentity } from './viewer.js';
import { type LockChange, WriterLock } from './writer-lock.js';

/** How long a resuming viewer waits for the disk to flush the bytes it needs before it skips them. */
const FLUSH_WAIT_MS = 2000;
/** How often a hub looks for viewers that stayed behind too long. */
const SWEEP_INTERVAL_MS = 1000;
/** How long a closed viewer's socket may take to finish the close handshake. */
const CLOSE_GRACE_MS = 2000;
/** How long viewers of a guest that moved away get to take the bytes before the seam. */
const MOVE_DRAIN_MS = 5000;
/** The least a keystroke frame counts against the writer's rate, whatever its size. */
export const KEYSTROKE_FRAME_COST_BYTES = 64;

/** Counters of one hub, for status and metrics. */
export interface HubCounters {
  framesSent: number;
  bytesSent: number;
  skippedBytes: number;
  skipEpisodes: number;
  slowDisconnects: number;
  keystrokeBytes: number;
  droppedKeystrokeBytes: number;
  /** Times the writer was paused because the guest side had MAX_KEYSTROKE_INFLIGHT_BYTES waiting. */
  writerGuestPauses: number;
  /** Times the writer was paused for going over `keystrokeBytesPerSec`. */
  writerRatePauses: number;
  viewersJoined: number;
  /** Viewers whose start was older than the ring, served from the log files first. */
  startsFromLog: number;
}

/** What a `welcome` says. */
interface JoinResult {
  readonly offset: number;
  readonly clamped: boolean;
}

/**
 * One guest's console: its recent output (the ring), its viewers, and its writer
 * lock. It subscribes to the capture's `output`, so viewers see exactly the bytes
 * that reach the log, markers included, at their offsets.
 *
 * Invariant: a live viewer's cursor is within the ring; the ring keeps every byte
 * from the oldest live cursor (and at least `replayBytes`) on. A viewer joins in
 * one synchronous step (start chosen, cursor set), so no output can fall between
 * its replay and its live bytes; one that must start before the ring reads the log
 * files until it reaches the ring, then turns live in one synchronous step.
 *
 * About 570 lines on purpose: joining, catching up, live output and the writer's
 * keystrokes all move the same viewers' cursors against the same ring under that
 * invariant; the parts that stand alone are already apart (output-ring.ts,
 * flush-pacer.ts, writer-lock.ts, viewer.ts, protocol.ts).
 */
export class ConsoleHub {
  readonly ring: OutputRing;
  readonly lock: WriterLock<Viewer>;
  readonly counters: HubCounters = {
    framesSent: 0,
    bytesSent: 0,
    skippedBytes: 0,
    skipEpisodes: 0,
    slowDisconnects: 0,
    keystrokeBytes: 0,
    droppedKeystrokeBytes: 0,
    writerGuestPauses: 0,
    writerRatePauses: 0,
    viewersJoined: 0,
    startsFromLog: 0,
  };
  private readonly viewers = new Set<Viewer>();
  private readonly pacer: FlushPacer;
  private flushTimer: NodeJS.Timeout | null = null;
  private flushQueued = false;
  /** The frames of the flush under way, shared by viewers at one offset; emptied after it. */
  private readonly frames: FrameCache = new Map();
  /** `flushNow` as queued right after the current callback, made once. */
  private readonly flushQueuedNow = (): void => {
    this.flushQueued = false;
    if (!this.closed) this.flushNow();
  };
  private sweepTimer: NodeJS.Timeout | null = null;
  private nextViewerNumber = 1;
  private writerSince: { viewer: Viewer; atMs: number; bytes: number; frames: number } | null = null;
  private closed = false;
  private renumberedValue = false;
  /** Viewers get no byte at or past this offset (a migration's seal); null: no bound. */
  private heldAt: number | null = null;
  /** The guest moved to another host (docs/design.md "Console across hosts"). */
  private moved: { host: string; offset: number; timer: NodeJS.Timeout } | null = null;
  private readonly maxViewers: number;
  private readonly logger: Logger;
  private readonly unsubscribe: Array<() => void> = [];

  constructor(
    readonly guest: Guest,
    private readonly config: Readonly<ConsoleConfig>,
    limits: { maxViewers: number; allowTakeover: boolean },
    private readonly audit: AuditLog,
    logger: Logger,
  ) {
    this.logger = logger.child({ component: 'console', guest: guest.id });
    this.maxViewers = limits.maxViewers;
    this.ring = new OutputRing(guest.log.end);
    this.lock = new WriterLock<Viewer>(limits.allowTakeover);
    this.pacer = new FlushPacer(config);
    this.lock.on('change', (change) => this.onLockChange(change));

    // Where the hub sits on the byte path is set in one place: capture.ts
    // CAPTURE_STAGES and guest.ts CHARDEV_STAGES.
    this.unsubscribe.push(
      guest.capture.connect('console', {
        output: (chunk) => this.onOutput(chunk),
        boot: (boot) =>
          this.positionForAll(boot.offset, { type: 'boot', boot: boot.boot, offset: boot.offset }),
      }),
      guest.observeChardev('console', {
        open: () => this.onSourceOpen(),
        close: ({ reason }) => this.onSourceClose(reason),
        drain: () => this.resumePaused(),
      }),
    );
    const onRenumbered = (change: { from: number; to: number }): void => this.onRenumbered(change);
    guest.log.on('renumbered', onRenumbered);
    this.unsubscribe.push(() => guest.log.off('renumbered', onRenumbered));
    guest.statusSections.set('console', () => this.status());
  }

  get id(): string {
    return this.guest.id;
  }

  /** Whether its log was renumbered since it was attached (a migration's destination adopted the stream). */
  get renumbered(): boolean {
    return this.renumberedValue;
  }

  get viewerCount(): number {
    return this.viewers.size;
  }

  get writer(): Viewer | null {
    return this.lock.holder;
  }

  /** Live status, for `GET /v1/guests/{id}` under `console`. */
  status(): Record<string, unknown> {
    const writer = this.lock.holder;
    return {
      viewers: this.viewers.size,
      maxViewers: this.maxViewers,
      writer: writer
        ? {
            viewerId: writer.viewerId,
            name: writer.name ?? null,
            jti: writer.tokenId,
            // Why its socket is not read now: "guest" (backpressure), "rate" (keystroke rate).
            paused: writer.inputPauses,
          }
        : null,
      canTakeover: this.lock.takeoverAllowed,
      skippedBytes: this.counters.skippedBytes,
      skipEpisodes: this.counters.skipEpisodes,
      slowDisconnects: this.counters.slowDisconnects,
      bytesSent: this.counters.bytesSent,
      framesSent: this.counters.framesSent,
      keystrokeBytes: this.counters.keystrokeBytes,
      droppedKeystrokeBytes: this.counters.droppedKeystrokeBytes,
      writerGuestPauses: this.counters.writerGuestPauses,
      writerRatePauses: this.counters.writerRatePauses,
      keystrokeRate: {
        bytesPerSec: this.config.keystrokeBytesPerSec,
        burstBytes: this.config.keystrokeBurstBytes,
      },
      viewersJoined: this.counters.viewersJoined,
      startsFromLog: this.counters.startsFromLog,
      ring: { start: this.ring.start, end: this.ring.end, bytes: this.ring.size },
    };
  }

  /**
   * Admits a viewer; throws TOO_MANY_VIEWERS or GUEST_DETACHED. `from` is the first
   * offset the client wants (resume), or null for the recent output.
   */
  join(ws: WebSocket, identity: ViewerIdentity, from: number | null): Viewer {
    if (this.closed) throw new ConsoledError('GUEST_DETACHED', `guest ${this.id} was detached`);
    if (this.viewers.size >= this.maxViewers) {
      throw new ConsoledError('TOO_MANY_VIEWERS', `guest ${this.id} has ${this.maxViewers} viewers already`);
    }
    const viewer = new Viewer(ws, this.id, `v${this.nextViewerNumber++}`, identity, this.config, () =>
      this.requestFlush(),
    );
    // From here to `welcome` all is synchronous: no output can slip between.
    const { offset, clamped } = this.startFor(from);
    this.viewers.add(viewer);
    this.counters.viewersJoined++;
    if (offset >= this.ring.start) viewer.goLive(offset);
    else viewer.next = offset;
    const source = this.guest.source;
    viewer.sendJson({
      type: 'welcome',
      guest: this.id,
      viewerId: viewer.viewerId,
      mode: viewer.mode,
      name: viewer.name ?? null,
      boot: this.guest.log.currentBoot,
      offset,
      clamped,
      writer: this.writerInfo(),
      viewers: this.viewers.size,
      canTakeover: this.lock.takeoverAllowed,
      resizable: source.resizable,
      guestState: source.state === 'connected' ? 'connected' : 'disconnected',
    });
    if (source.state !== 'connected') {
      viewer.sendAfter(this.ring.end, { type: 'guest', state: 'disconnected', reason: source.stateReason });
    }
    this.audit.attach(viewer, { from, offset, clamped, origin: identity.origin });
    // The first rw viewer takes the free lock; everyone hears the new count either way.
    if (!this.lock.offer(viewer)) this.broadcastLock();
    if (viewer.state === 'live') this.requestFlush();
    else {
      this.counters.startsFromLog++;
      void this.catchUp(viewer, offset);
    }
    this.sweepTimer ??= setInterval(() => this.sweep(), SWEEP_INTERVAL_MS).unref();
    return viewer;
  }

  /** The viewer's socket closed. */
  leave(viewer: Viewer, code: number, reason: string): void {
    if (!this.viewers.delete(viewer)) return;
    viewer.markClosed();
    this.lock.leave(viewer);
    this.audit.detach(viewer, {
      code,
      reason,
      durationMs: Date.now() - viewer.connectedAtMs,
      bytesSent: viewer.stats.bytesSent,
      skippedBytes: viewer.stats.skippedBytes,
      keystrokeBytes: viewer.stats.keystrokeBytes,
    });
    this.broadcastLock();
    if (this.viewers.size === 0 && this.sweepTimer) {
      clearInterval(this.sweepTimer);
      this.sweepTimer = null;
    }
    this.trimRing();
  }

  /** A keystroke frame from `viewer`: to the guest if it holds the lock. */
  keystrokes(viewer: Viewer, bytes: Buffer): void {
    if (this.lock.holder !== viewer) {
      viewer.stats.droppedKeystrokeBytes += bytes.length;
      this.counters.droppedKeystrokeBytes += bytes.length;
      if (!viewer.notWriterWarned) {
        viewer.notWriterWarned = true;
        viewer.sendError('NOT_WRITER', 'keystrokes are dropped: only the writer types');
      }
      return;
    }
    viewer.stats.keystrokeBytes += bytes.length;
    viewer.stats.keystrokeFrames++;
    this.counters.keystrokeBytes += bytes.length;
    if (this.writerSince) {
      this.writerSince.bytes += bytes.length;
      this.writerSince.frames++;
    }
    this.chargeKeystrokes(viewer, bytes.length);
    // The source holds its bound of bytes toward the guest: stop reading this writer
    // until it drains. Frames already read still arrive (one socket read's worth).
    if (!this.guest.write(bytes) && viewer.pauseInput('guest')) this.counters.writerGuestPauses++;
  }

  /**
   * The writer's keystroke rate: a token bucket per writer, in bytes (each frame
   * counting at least KEYSTROKE_FRAME_COST_BYTES). The frame in hand is still
   * written; a writer in debt is not read until the bucket is back above zero.
   */
  private chargeKeystrokes(viewer: Viewer, length: number): void {
    const { keystrokeBytesPerSec: rate, keystrokeBurstBytes: burst } = this.config;
    if (rate <= 0) return;
    viewer.keystrokeBucket ??= new TokenBucket(rate, burst);
    const bucket = viewer.keystrokeBucket;
    const cost = Math.max(length, KEYSTROKE_FRAME_COST_BYTES);
    const left = bucket.available() - cost; // refilled up to now, one clock read
    bucket.consume(cost);
    if (left >= 0 || viewer.inputPaused('rate')) return;
    viewer.pauseInput('rate');
    this.counters.writerRatePauses++;
    const resumeWhenRefilled = () => {
      viewer.rateTimer = null;
      if (viewer.state === 'closed') return;
      const debt = -bucket.available();
      if (debt > 0) {
        viewer.rateTimer = setTimeout(resumeWhenRefilled, Math.ceil((debt * 1000) / rate));
        return;
      }
      viewer.resumeInput('rate');
    };
    if (viewer.rateTimer) clearTimeout(viewer.rateTimer);
    viewer.rateTimer = setTimeout(resumeWhenRefilled, Math.ceil((-bucket.available() * 1000) / rate));
  }

  /**
   * A control message from `viewer` (already parsed; `renew` is the connection's,
   * console-server.ts). Refusals are `error` messages.
   */
  control(viewer: Viewer, message: Exclude<ClientRequest, RenewMessage>): void {
    try {
      switch (message.type) {
        case 'takeover':
          this.lock.takeover(viewer);
          break;
        case 'acquire':
          this.lock.acquire(viewer);
          break;
        case 'release':
          this.lock.release(viewer);
          break;
        case 'resize':
          this.resize(viewer, message);
          break;
        case 'ping':
          viewer.sendJson({ type: 'pong' });
          break;
      }
    } catch (err) {
      if (!(err instanceof ConsoledError)) throw err;
      viewer.sendError(err.code, err.message);
    }
  }

  /**
   * The guest was live-migrated to `host`, whose log goes on at `offset`: each viewer
   * gets every byte before `offset`, then `moved`, then a close with GUEST_MOVED (it
   * reconnects with `from=offset`, and this host proxies it to `host`). A viewer
   * still behind after MOVE_DRAIN_MS is closed all the same.
   */
  announceMove(host: string, offset: number): void {
    if (this.closed || this.moved) return;
    const timer = setTimeout(() => this.closeMoved(true), MOVE_DRAIN_MS);
    timer.unref();
    this.moved = { host, offset, timer };
    this.logger.info({ host, offset, viewers: this.viewers.size }, 'the guest moved; sending its viewers on');
    for (const viewer of this.viewers) viewer.sendAfter(offset, { type: 'moved', host, offset });
    this.flushNow();
  }

  /**
   * The stream was sealed at `offset` for a migration: viewers get nothing past it (what
   * the source still printed there is not the guest's history; the destination's log
   * goes on from `offset`). null lifts the bound (the handoff was cancelled).
   */
  holdAt(offset: number | null): void {
    this.heldAt = offset;
    if (offset === null) this.requestFlush();
  }

  /** Closes the viewers of a moved guest that have had every byte before the seam (all: `force`). */
  private closeMoved(force: boolean): void {
    const moved = this.moved;
    if (!moved) return;
    for (const viewer of [...this.viewers]) {
      if (!force && (viewer.state !== 'live' || viewer.next < moved.offset)) continue;
      if (force && viewer.next < moved.offset)
        viewer.sendJson({ type: 'moved', host: moved.host, offset: moved.offset });
      closeViewer(viewer, new ConsoledError('GUEST_MOVED', `guest ${this.id} moved to host ${moved.host}`));
    }
  }

  /**
   * The log was renumbered (this host adopted the guest's stream in a migration):
   * the ring and every viewer move with it, and each viewer is told before any byte
   * in the new numbering, so no offset jumps unexplained.
   */
  private onRenumbered({ from, to }: { from: number; to: number }): void {
    this.renumberedValue = true;
    const delta = to - from;
    if (delta === 0) return;
    this.flushNow();
    this.ring.shift(delta);
    for (const viewer of this.viewers) {
      viewer.shift(delta);
      viewer.sendJson({ type: 'renumbered', from, to });
    }
  }

  /**
   * Closes every viewer (guest detached or daemon stopping) after handing each the
   * output it can still take.
   */
  close(code: ErrorCode, message: string): void {
    if (this.closed) return;
    this.closed = true;
    this.flushNow();
    if (this.moved) clearTimeout(this.moved.timer);
    for (const f of this.unsubscribe) f();
    if (this.flushTimer) clearTimeout(this.flushTimer);
    if (this.sweepTimer) clearInterval(this.sweepTimer);
    this.guest.statusSections.delete('console');
    const err = new ConsoledError(code, message);
    for (const viewer of [...this.viewers]) {
      if (code === 'GUEST_DETACHED') viewer.sendJson({ type: 'guest', state: 'detached', reason: message });
      closeViewer(viewer, err);
    }
  }

  // Output ---------------------------------------------------------------------

  private onOutput(chunk: CapturedChunk): void {
    const now = performance.now();
    const { offset, bytes } = chunk;
    const keep = this.config.replayBytes;
    if (this.viewers.size === 0 && bytes.length > keep) {
      // Nobody watches, so the trim below would keep only the replay tail: copy just
      // that (the ring restarts there). A flood's large reads are not copied whole.
      this.ring.append(offset + bytes.length - keep, bytes.subarray(bytes.length - keep));
    } else this.ring.append(offset, bytes);
    this.pacer.noteBytes(bytes.length, now);
    if (this.viewers.size > 0) this.requestFlush(now);
    else this.trimRing();
  }

  /** Schedules a flush, at once (after the current callback) or after the pacer's delay. */
  requestFlush(now = performance.now()): void {
    if (this.flushTimer || this.flushQueued || this.closed) return;
    const delay = this.pacer.delayMs(this.viewers.size, now);
    if (delay <= 0) {
      // Right after the current callback (a keystroke's echo waits for nothing else),
      // yet after every chunk that callback hands over, so they leave in one frame.
      this.flushQueued = true;
      inMicrotask(this.flushQueuedNow);
    } else {
      this.flushTimer = setTimeout(() => {
        this.flushTimer = null;
        this.flushNow();
      }, Math.ceil(delay));
    }
  }

  private flushNow(): void {
    const now = performance.now();
    const cache = this.frames;
    let frames = 0;
    const end = this.heldAt === null ? this.ring.end : Math.min(this.ring.end, this.heldAt);
    for (const viewer of this.viewers) {
      const skippedBefore = viewer.stats.skippedBytes;
      const sentBefore = viewer.stats.bytesSent;
      const n = viewer.pump(this.ring, cache, now, end);
      frames += n;
      this.counters.framesSent += n;
      this.counters.bytesSent += viewer.stats.bytesSent - sentBefore;
      const skipped = viewer.stats.skippedBytes - skippedBefore;
      if (skipped > 0) this.noteSkip(viewer, skipped);
    }
    cache.clear();
    this.pacer.noteFlush(frames, now);
    this.trimRing();
    if (this.moved) this.closeMoved(false);
  }

  private noteSkip(viewer: Viewer, bytes: number): void {
    this.counters.skippedBytes += bytes;
    this.counters.skipEpisodes++;
    // One warning per episode: the first skip since the viewer last caught up.
    if (!viewer.skipWarned) {
      viewer.skipWarned = true;
      this.logger.warn(
        { viewerId: viewer.viewerId, jti: viewer.tokenId, skipped: bytes },
        'console viewer fell behind; skipping ahead',
      );
    }
  }

  /** Keeps `replayBytes` and every byte a live viewer still needs. */
  private trimRing(): void {
    let keep = this.ring.end - this.config.replayBytes;
    for (const viewer of this.viewers) if (viewer.state === 'live' && viewer.next < keep) keep = viewer.next;
    this.ring.trimBefore(keep);
  }

  /** Where a viewer's stream starts: `from` clamped to what the log keeps, or the recent output. */
  private startFor(from: number | null): JoinResult {
    const log = this.guest.log;
    const end = this.ring.end;
    const oldest = Math.min(log.oldest, this.ring.start);
    if (from === null) return { offset: Math.max(oldest, end - this.config.replayBytes), clamped: false };
    if (from < oldest) return { offset: oldest, clamped: true };
    return { offset: Math.min(from, end), clamped: false };
  }

  /**
   * Sends a viewer the log from `offset` until it reaches the ring, then makes it
   * live. Bytes not yet flushed to the files are waited for; bytes that rotated away
   * meanwhile are skipped (and said so).
   */
  private async catchUp(viewer: Viewer, offset: number): Promise<void> {
    const log = this.guest.log;
    let pos = offset;
    try {
      while (viewer.state === 'catching-up') {
        if (pos >= this.ring.start) {
          viewer.goLive(pos);
          this.requestFlush();
          return;
        }
        if (pos < log.oldest) {
          // Rotated away meanwhile: on to the oldest byte still held, in the files or the ring.
          const skipped = viewer.skipTo(Math.min(log.oldest, this.ring.start), performance.now());
          this.noteSkip(viewer, skipped);
          pos = viewer.next;
          continue;
        }
        if (log.flushedEnd <= pos) {
          await log.waitForData(pos, AbortSignal.timeout(FLUSH_WAIT_MS));
          if (log.flushedEnd <= pos && viewer.state === 'catching-up') {
            // The disk is failing or very slow: skip to what memory holds rather than wait.
            const skipped = viewer.skipTo(this.ring.start, performance.now());
            this.noteSkip(viewer, skipped);
            pos = viewer.next;
          }
          continue;
        }
        const upTo = Math.min(this.ring.start, log.flushedEnd, pos + this.config.maxFrameBytes);
        let bytes: Buffer;
        try {
          bytes = await log.read(pos, upTo);
        } catch (err) {
          if (pos < log.oldest) continue; // rotated away under the read
          throw err;
        }
        if (viewer.state !== 'catching-up') return;
        const sentBefore = viewer.stats.bytesSent;
        await viewer.sendCatchUp(pos, bytes);
        this.counters.bytesSent += viewer.stats.bytesSent - sentBefore;
        pos = upTo;
        viewer.next = pos;
      }
    } catch (err) {
      this.logger.error({ err, viewerId: viewer.viewerId }, 'reading the log for a console viewer failed');
      closeViewer(viewer, new ConsoledError('STORE_FAILED', 'reading the log failed'));
    }
  }

  /** Viewers that stayed behind past `slowViewerTimeoutMs` are closed with VIEWER_TOO_SLOW. */
  private sweep(): void {
    const now = performance.now();
    for (const viewer of this.viewers) {
      if (viewer.behindSinceMs === null || now - viewer.behindSinceMs < this.config.slowViewerTimeoutMs)
        continue;
      this.counters.slowDisconnects++;
      this.logger.warn(
        { viewerId: viewer.viewerId, jti: viewer.tokenId, behindMs: Math.round(now - viewer.behindSinceMs) },
        'console viewer too slow; closing it',
      );
      viewer.behindSinceMs = null;
      closeViewer(
        viewer,
        new ConsoledError('VIEWER_TOO_SLOW', `behind for more than ${this.config.slowViewerTimeoutMs} ms`),
      );
    }
  }

  // Guest side -----------------------------------------------------------------

  private onSourceClose(reason: string): void {
    // Everything captured so far goes first: the message is placed at the end of the output.
    this.positionForAll(this.ring.end, { type: 'guest', state: 'disconnected', reason });
    this.resumePaused();
  }

  private onSourceOpen(): void {
    this.positionForAll(this.ring.end, {
      type: 'guest',
      state: 'connected',
      reason: this.guest.source.stateReason,
    });
    this.resumePaused();
  }

  private positionForAll(offset: number, message: BootMessage | GuestMessage): void {
    for (const viewer of this.viewers) viewer.sendAfter(offset, message);
    if (this.viewers.size > 0) this.requestFlush();
  }

  private resumePaused(): void {
    for (const viewer of this.viewers) viewer.resumeInput('guest');
  }

  private resize(viewer: Viewer, request: Extract<ClientRequest, { type: 'resize' }>): void {
    if (this.lock.holder !== viewer)
      throw new ConsoledError('NOT_WRITER', 'only the writer resizes the guest terminal');
    const source = this.guest.source;
    if (!source.resizable) {
      throw new ConsoledError(
        'UNSUPPORTED',
        `a ${source.kind} source has no window size; only exec and pty sources do`,
      );
    }
    const { cols, rows } = resizeSize(request);
    source.resize(cols, rows);
  }

  // Lock -----------------------------------------------------------------------

  private writerInfo(): WriterInfo | null {
    const w = this.lock.holder;
    return w ? { viewerId: w.viewerId, name: w.name ?? null } : null;
  }

  private broadcastLock(): void {
    const message: LockMessage = { type: 'lock', writer: this.writerInfo(), viewers: this.viewers.size };
    for (const viewer of this.viewers) viewer.sendJson(message);
  }

  private onLockChange(change: LockChange<Viewer>): void {
    const now = Date.now();
    if (this.writerSince) {
      const tenure = this.writerSince;
      this.audit.writerBytes(tenure.viewer, {
        bytes: tenure.bytes,
        frames: tenure.frames,
        durationMs: now - tenure.atMs,
      });
      this.writerSince = null;
    }
    if (change.to) {
      this.writerSince = { viewer: change.to, atMs: now, bytes: 0, frames: 0 };
      change.to.notWriterWarned = false;
    }
    if (change.from) {
      change.from.notWriterWarned = false;
      // Its keystrokes are dropped from now on: nothing to hold it back for.
      change.from.resumeInput('guest');
      change.from.resumeInput('rate');
    }
    this.audit.lock(this.id, change.from, change.to, change.cause);
    this.broadcastLock();
  }
}

/** Closes a viewer's socket with the error's close code and its code as the reason; terminates it if the peer does not answer. */
export function closeViewer(viewer: Viewer, err: ConsoledError): void {
  const ws = viewer.ws;
  if (ws.readyState === ws.CLOSED) return;
  sendErrorAndClose(ws, err);
  setTimeout(() => ws.terminate(), CLOSE_GRACE_MS).unref();
}
