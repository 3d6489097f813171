/**
 * Read coalescing (docs/design.md "Local store", README "Sources"): while a guest
 * prints in bulk, in many small reads, reading pauses for a short window after each
 * read, so the kernel's socket or pty buffer gathers the next window's bytes into one
 * read. A read costs per call, not per byte (a wake-up, a callback, a trip through
 * capture, the log queue and the hub), so a guest printing 1 MiB/s in 1 KiB writes
 * costs a twentieth as many of them with the default 20 ms window.
 *
 * Interactive output is never held: bulk is told apart by rate (a decaying byte count
 * over about 100 ms, as the console's flush pacer does), so a keystroke's echo is read
 * at once. Large reads are not held either: a flood already reads in large bites,
 * and holding it would only slow it. The one exception is the read that collects a
 * window's bytes, up to WINDOW_BYTES: a steady trickle then costs one read per window,
 * not that read and a small one after it. The bytes wait in the kernel's buffer, far larger
 * than a window's worth at any serial rate, so nothing is lost and the guest does
 * not wait.
 *
 * A window's length follows what the windows gather: each bulk episode starts with a
 * short window, and the next is twice as long while a window gathers under half of
 * WINDOW_BYTES and half as long when one gathers more than WINDOW_BYTES, between 1 ms
 * and `windowMs`. A window's bytes reach the hub in one go, and a window that gathered
 * megabytes would hand a fast viewer more at once than its socket and buffer take (it
 * would skip output it reads fast enough); a guest at 1 MiB/s reaches the 100 ms
 * default within half a second, a faster one keeps shorter windows.
 */

/** Time constant of the rate estimate. */
const RATE_WINDOW_MS = 100;
/** A read at least this large is not followed by a pause (it is a flood's, or already coalesced). */
const LARGE_READ_BYTES = 16 * 1024;
/**
 * What one window should gather at most: well under a viewer's socket high-water mark
 * (256 KiB by default) and output buffer (1 MiB).
 */
export const WINDOW_BYTES = 128 * 1024;
/** The first window of a bulk episode, and the shortest. */
const FIRST_WINDOW_MS = 5;
const MIN_WINDOW_MS = 1;

export interface ReadCoalescingOptions {
  /** How long reading pauses after a small read during bulk output; 0 turns coalescing off. */
  readonly windowMs: number;
  /** Output rate above which output counts as bulk. */
  readonly bulkBytesPerSec: number;
}

export class ReadCoalescer {
  private level = 0;
  private levelAtMs = 0;
  private timer: NodeJS.Timeout | null = null;
  /** The next window's length; 0 outside bulk output. */
  private nextWindowMs = 0;
  /** Bytes read since the last window ended (what it gathered, and the reads after it). */
  private gathered = 0;
  /** A window just ended: the next read is what it gathered. */
  private windowEnded = false;

  constructor(
    private readonly options: ReadCoalescingOptions,
    private readonly hold: () => void,
    private readonly release: () => void,
  ) {}

  /** A read of `bytes` was delivered: during bulk output, hold reading for a window. */
  noteRead(bytes: number): void {
    if (this.options.windowMs <= 0 || this.timer) return;
    const now = performance.now();
    this.level = this.level * Math.exp(-(now - this.levelAtMs) / RATE_WINDOW_MS) + bytes;
    this.levelAtMs = now;
    this.gathered += bytes;
    const windowRead = this.windowEnded;
    this.windowEnded = false;
    // A large read is a flood's, and is not held, unless it is what a window gathered
    // and no more than a window should: the trickle goes on, and the next window starts
    // now rather than after one more small read (which would cost a read, and a write
    // to the log of its own, per window).
    if (bytes >= LARGE_READ_BYTES && !(windowRead && bytes <= WINDOW_BYTES)) return;
    if ((this.level * 1000) / RATE_WINDOW_MS <= this.options.bulkBytesPerSec) {
      this.nextWindowMs = 0;
      return;
    }
    this.hold();
    this.timer = setTimeout(this.endWindow, this.windowLength());
  }

  /** Ends a window early (the connection closed, the source stops or lets go). */
  cancel(): void {
    if (!this.timer) return;
    clearTimeout(this.timer);
    this.endWindow();
  }

  /** The length of the window starting now, from what the last one gathered. */
  private windowLength(): number {
    const max = this.options.windowMs;
    if (this.nextWindowMs === 0) this.nextWindowMs = Math.min(max, FIRST_WINDOW_MS);
    else if (this.gathered > WINDOW_BYTES) this.nextWindowMs = Math.max(MIN_WINDOW_MS, this.nextWindowMs / 2);
    else if (this.gathered < WINDOW_BYTES / 2) this.nextWindowMs = Math.min(max, this.nextWindowMs * 2);
    this.gathered = 0;
    return this.nextWindowMs;
  }

  private readonly endWindow = (): void => {
    this.timer = null;
    this.windowEnded = true;
    this.release();
  };
}
