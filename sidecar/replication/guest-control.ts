import type { MarkerEvent } from '../../common/marker.js';
import type { MarkerRecord } from '../../store/marker-index.js';
import type { GuestControl } from '../../store/replication/replicator.js';
import type { Guest } from '../guest.js';

/** The replicator's hands on one guest: its chardev, its capture, its log. */
export class GuestHandle implements GuestControl {
  private lastDataAt = performance.now();
  private readonly unobserve: () => void;

  constructor(private readonly guest: Guest) {
    this.unobserve = guest.observeChardev('replication', {
      data: () => {
        this.lastDataAt = performance.now();
      },
    });
  }

  /**
   * The source of a live migration is paused by then; what it printed last may still
   * be in the socket. Drained = nothing for `quietMs` while reading (or the chardev is
   * not connected). While reading is paused (the log's queue above its high-water
   * mark, a read-coalescing window), silence says nothing: the guest's last output may
   * wait in the socket. Counting it as quiet sealed the stream before those bytes were
   * read, and they reached only the local log (seen with bursty guests in the ownership
   * fault run, `--burst-lines`).
   */
  async drainSource(quietMs: number, timeoutMs: number): Promise<void> {
    const started = performance.now();
    for (;;) {
      const now = performance.now();
      if (this.guest.source.readingPaused) this.lastDataAt = now;
      const quietFor = now - this.lastDataAt;
      const left = timeoutMs - (now - started);
      if (quietFor >= quietMs || left <= 0 || this.guest.source.state !== 'connected') return;
      // While paused, look again soon: reading may resume at any moment.
      const wait = this.guest.source.readingPaused ? Math.min(5, quietMs) : quietMs - quietFor;
      await new Promise((r) => setTimeout(r, Math.max(1, Math.min(wait, left))));
    }
  }

  writeMarker(event: MarkerEvent): number {
    if (this.guest.log.state !== 'closed') this.guest.capture.writeMarker(event);
    return this.guest.log.end;
  }

  outputMayBeUnread(): boolean {
    return this.guest.capture.outputMayBeUnread;
  }

  async stopSource(): Promise<void> {
    await this.guest.source.stop();
  }

  holdInMemory(): void {
    this.guest.capture.holdInMemory();
  }

  endHold(): void {
    this.guest.capture.endHold();
  }

  appendToLog(bytes: Buffer, markers: readonly MarkerRecord[] = []): void {
    this.guest.capture.appendToLog(bytes, markers);
  }

  writeLogMarker(event: MarkerEvent): number {
    this.guest.capture.writeLogMarker(event);
    return this.guest.log.end;
  }

  setContinuing(value: boolean): void {
    this.guest.capture.setContinuing(value);
  }

  onOutput(listener: (offset: number, bytes: Buffer) => void): () => void {
    return this.guest.capture.connect('replication', {
      output: ({ offset, bytes }) => listener(offset, bytes),
    });
  }

  dispose(): void {
    this.unobserve();
  }
}
