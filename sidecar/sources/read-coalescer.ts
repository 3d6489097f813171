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
 * at once. Large reads are never held either: a flood already reads in large bites,
 * and holding it would only slow it. The bytes wait in the kernel's buffer, far larger
 * than a window's worth at any serial rate, so nothing is lost and the guest does
 * not wait.
 */

/** Time constant of the rate estimate. */
const RATE_WINDOW_MS = 100;
/** A read at least this large is not followed by a pause (it is a flood's, or already coalesced). */
const LARGE_READ_BYTES = 16 * 1024;

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
    if (bytes >= LARGE_READ_BYTES) return;
    if ((this.level * 1000) / RATE_WINDOW_MS <= this.options.bulkBytesPerSec) return;
    this.hold();
    this.timer = setTimeout(this.endWindow, this.options.windowMs);
  }

  /** Ends a window early (the connection closed, the source stops or lets go). */
  cancel(): void {
    if (!this.timer) return;
    clearTimeout(this.timer);
    this.endWindow();
  }

  private readonly endWindow = (): void => {
    this.timer = null;
    this.release();
  };
}
