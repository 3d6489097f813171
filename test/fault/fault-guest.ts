/**
 * A guest of the ownership fault test, printing numbered lines like a serial console
 * (`TICK <id> <n>\r\n` every few milliseconds) to the chardev of the host it runs on.
 * Each host has its own chardev (a listening socket, like QEMU's `server=on,wait=off`):
 * output is dropped while nobody is connected, as QEMU drops it. A live migration
 * moves printing to the destination's chardev after a short downtime and closes the
 * source's; a stale chardev prints `STALE` lines that must never reach the stream.
 * With `burstLines`, every BURST_EVERY ticks it prints that many lines at once (3000
 * lines are about 66 KB), so the stream also gets segments large enough to keep their
 * bytes out of Lua (store/replication/slot-append.ts).
 */
import { SocketPeer } from '../support/daemon.js';

const BURST_EVERY = 40;

export class FaultGuest {
  next = 0;
  private readonly chardevs = new Map<string, SocketPeer>();
  private stale: SocketPeer[] = [];
  private runningOn: string | null = null;
  private paused = false;
  private readonly timer: NodeJS.Timeout;
  private staleCount = 0;
  private ticks = 0;

  constructor(
    readonly id: string,
    private readonly burstLines = 0,
  ) {
    this.timer = setInterval(() => this.tick(), 15);
  }

  get host(): string | null {
    return this.runningOn;
  }

  /** Starts the guest on `host` (a new chardev there); returns its port. */
  async startOn(host: string): Promise<number> {
    const peer = await SocketPeer.listen();
    this.chardevs.set(host, peer);
    this.runningOn = host;
    this.paused = false;
    return peer.port;
  }

  /** The chardev of `host` (where the guest runs or ran). */
  chardev(host: string): SocketPeer | undefined {
    return this.chardevs.get(host);
  }

  /** A destination's chardev for a live migration, opened before the guest moves. */
  async prepare(host: string): Promise<number> {
    const peer = await SocketPeer.listen();
    this.chardevs.set(host, peer);
    return peer.port;
  }

  /** The live migration: pause for `downtimeMs`, print on `to`, then close the source's chardev. */
  async migrate(to: string, downtimeMs: number, closeAfterMs: number): Promise<void> {
    const from = this.runningOn;
    this.paused = true;
    await new Promise((r) => setTimeout(r, downtimeMs));
    this.runningOn = to;
    this.paused = false;
    await new Promise((r) => setTimeout(r, closeAfterMs));
    if (from && from !== to) {
      const old = this.chardevs.get(from);
      this.chardevs.delete(from);
      await old?.close();
    }
  }

  /** The guest stops (cold migration, shutdown): its chardev closes. */
  async stop(): Promise<void> {
    const host = this.runningOn;
    this.runningOn = null;
    if (host) {
      const peer = this.chardevs.get(host);
      this.chardevs.delete(host);
      await peer?.close();
    }
  }

  /** A chardev still alive on a host the guest left, printing stale lines. */
  async staleChardev(): Promise<number> {
    const peer = await SocketPeer.listen();
    this.stale.push(peer);
    return peer.port;
  }

  pause(): void {
    this.paused = true;
  }

  resume(): void {
    this.paused = false;
  }

  async close(): Promise<void> {
    clearInterval(this.timer);
    for (const peer of [...this.chardevs.values(), ...this.stale]) await peer.close();
    this.chardevs.clear();
    this.stale = [];
  }

  private tick(): void {
    for (const peer of this.stale) {
      if (peer.current && !peer.current.destroyed)
        peer.current.write(`STALE ${this.id} ${this.staleCount++}\r\n`);
    }
    if (this.paused || this.runningOn === null) return;
    const socket = this.chardevs.get(this.runningOn)?.current;
    const lines = this.burstLines > 0 && ++this.ticks % BURST_EVERY === 0 ? this.burstLines : 1;
    let text = '';
    for (let i = 0; i < lines; i++) text += `TICK ${this.id} ${this.next++}\r\n`;
    if (socket && !socket.destroyed) socket.write(text);
  }
}
