/**
 * A service manager's notification socket for tests: a real AF_UNIX datagram socket,
 * bound by the test (unix-dgram, as the daemon sends with it), that keeps every message
 * with the time it arrived. Give `path` to the daemon as NOTIFY_SOCKET.
 */
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { tmpDir } from './tmp.js';
import { waitFor } from './wait.js';

interface ReceivingSocket {
  on(event: 'message', listener: (msg: Buffer) => void): void;
  on(event: 'error', listener: (err: Error) => void): void;
  bind(path: string): void;
  close(): void;
}

/** One datagram: its assignments in order, and when it came (performance.now()). */
export interface NotifyMessage {
  readonly fields: Record<string, string>;
  readonly raw: string;
  readonly atMs: number;
}

export class NotifySocket {
  readonly messages: NotifyMessage[] = [];
  /** A receive error, if one happened. */
  error: Error | null = null;
  private constructor(
    readonly path: string,
    private readonly socket: ReceivingSocket,
  ) {}

  static open(): NotifySocket {
    const require = createRequire(import.meta.url);
    const dgram = require('unix-dgram') as { createSocket(type: 'unix_dgram'): ReceivingSocket };
    const socket = dgram.createSocket('unix_dgram');
    const path = join(tmpDir('notify'), 'notify.sock');
    const notify = new NotifySocket(path, socket);
    socket.on('message', (msg) => {
      const raw = msg.toString('utf8');
      const fields: Record<string, string> = {};
      for (const line of raw.split('\n')) {
        const eq = line.indexOf('=');
        if (eq > 0) fields[line.slice(0, eq)] = line.slice(eq + 1);
      }
      notify.messages.push({ fields, raw, atMs: performance.now() });
    });
    socket.on('error', (err) => {
      notify.error = err;
    });
    socket.bind(path);
    return notify;
  }

  /** Messages carrying `key` (READY, WATCHDOG…), in order of arrival. */
  with(key: string): NotifyMessage[] {
    return this.messages.filter((m) => key in m.fields);
  }

  /** The messages other than watchdog pings, each reduced to its first key (READY, STATUS…). */
  kinds(): string[] {
    return this.messages.filter((m) => !('WATCHDOG' in m.fields)).map((m) => Object.keys(m.fields)[0] ?? '');
  }

  /** Waits for the `n`th message (1-based) carrying `key`. */
  waitFor(key: string, n = 1, timeoutMs = 20_000): Promise<NotifyMessage> {
    return waitFor(`message #${n} with ${key}`, () => this.with(key)[n - 1], { timeoutMs });
  }

  close(): void {
    this.socket.close();
  }
}
