import { EventEmitter } from 'node:events';
import type { Logger } from 'pino';
import { Backoff, type BackoffOptions } from '../backoff.js';

/**
 * A source's connection states; one setter (`setState`) changes them, logs
 * `old -> new` with the reason, and emits `state`.
 */
export type SourceState =
  | 'idle' // created, not started
  | 'connecting' // dialling, opening, spawning
  | 'listening' // waiting for the guest side to connect to us
  | 'connected' // bytes flow
  | 'backoff' // waiting before the next attempt
  | 'stopped'; // stopped by us; final

/** Who ended a connection: the guest side (a new QEMU process will start a new boot) or us. */
export type CloseCause = 'guest' | 'self' | 'error';

export interface SourceEvents {
  data: [Buffer];
  /** A connection is up. */
  open: [];
  close: [{ cause: CloseCause; reason: string }];
  state: [{ from: SourceState; to: SourceState; reason: string }];
  /** The guest side can take more keystrokes after `write` returned false. */
  drain: [];
}

/** How a source reconnects. */
export interface ReconnectOptions extends BackoffOptions {}

/**
 * Attaches to one guest's serial chardev. Reads never wait on anything downstream:
 * every `data` event is handed on at once and the socket is never paused.
 */
export abstract class Source extends EventEmitter<SourceEvents> {
  abstract readonly kind: string;
  private stateValue: SourceState = 'idle';
  private reasonValue = 'created';
  private sinceMs = Date.now();
  protected readonly backoff: Backoff;
  private retryTimer: NodeJS.Timeout | null = null;
  /** Counters for status and metrics. */
  readonly counters = { connects: 0, bytesIn: 0, bytesOut: 0 };

  constructor(
    protected readonly logger: Logger,
    reconnect: ReconnectOptions,
  ) {
    super();
    this.backoff = new Backoff(reconnect);
  }

  get state(): SourceState {
    return this.stateValue;
  }

  get stateReason(): string {
    return this.reasonValue;
  }

  get stateSinceMs(): number {
    return this.sinceMs;
  }

  get stopped(): boolean {
    return this.stateValue === 'stopped';
  }

  protected setState(to: SourceState, reason: string): void {
    const from = this.stateValue;
    if (from === 'stopped') return;
    this.reasonValue = reason;
    if (from === to) return;
    this.stateValue = to;
    this.sinceMs = Date.now();
    this.logger.info({ source: this.kind, from, to, reason }, `source ${from} -> ${to}`);
    this.emit('state', { from, to, reason });
  }

  /** Starts connecting (or listening). */
  abstract start(): void;

  /** Stops for good and releases everything. */
  async stop(): Promise<void> {
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.retryTimer = null;
    this.setState('stopped', 'stopped by consoled');
    await this.close();
  }

  protected abstract close(): Promise<void>;

  /** Sends keystrokes to the guest; false means wait for `drain`. */
  abstract write(bytes: Buffer): boolean;

  /** Whether the chardev has a window size (`exec` and `pty`). */
  get resizable(): boolean {
    return false;
  }

  resize(_cols: number, _rows: number): void {}

  /** Schedules `attempt` after the next backoff delay. */
  protected retry(reason: string, attempt: () => void): void {
    if (this.stopped) return;
    const delay = this.backoff.next();
    this.setState('backoff', `${reason}; retrying in ${delay} ms`);
    this.retryTimer = setTimeout(() => {
      this.retryTimer = null;
      if (!this.stopped) attempt();
    }, delay);
  }

  protected received(chunk: Buffer): void {
    this.counters.bytesIn += chunk.length;
    this.emit('data', chunk);
  }

  protected opened(reason: string): void {
    this.counters.connects++;
    this.backoff.reset();
    this.setState('connected', reason);
    this.emit('open');
  }
}
