/**
 * The service manager's notification protocol (docs/design.md "Service lifecycle"):
 * newline-separated `KEY=VALUE` assignments, one datagram per message, sent to the
 * AF_UNIX datagram socket named by `NOTIFY_SOCKET`. Node 20 has no unix datagram
 * sockets, so the `unix-dgram` native package sends them; it is loaded only when
 * `NOTIFY_SOCKET` is set, so a daemon run outside systemd never touches it.
 *
 * Nothing here throws into the daemon: a failure is logged once and later messages are
 * tried again (the manager may come back); without `NOTIFY_SOCKET` every call is a no-op.
 */
import { createRequire } from 'node:module';
import type { Logger } from 'pino';

/** What `unix-dgram` offers that is used here (it ships no types). */
interface DatagramSocket {
  send(buf: Buffer, offset: number, length: number, path: string, callback: (err?: Error) => void): void;
  on(event: 'error', listener: (err: Error) => void): void;
  close(): void;
}
interface UnixDgramModule {
  createSocket(type: 'unix_dgram'): DatagramSocket;
}

/** The environment variables of the protocol, for a successor process that must keep them. */
export const NOTIFY_ENV_KEYS = ['NOTIFY_SOCKET', 'WATCHDOG_USEC', 'WATCHDOG_PID'] as const;

/** CLOCK_MONOTONIC in microseconds (what `MONOTONIC_USEC=` carries). */
export function monotonicUsec(): bigint {
  return process.hrtime.bigint() / 1000n;
}

/**
 * The watchdog interval the manager asked for, in microseconds, or null: `WATCHDOG_USEC`
 * set to a positive integer, and `WATCHDOG_PID` unset or this process's pid.
 */
export function watchdogUsec(env: NodeJS.ProcessEnv = process.env, pid = process.pid): number | null {
  const usec = Number(env['WATCHDOG_USEC']);
  if (!Number.isSafeInteger(usec) || usec <= 0) return null;
  const forPid = env['WATCHDOG_PID'];
  if (forPid !== undefined && forPid !== '' && Number(forPid) !== pid) return null;
  return usec;
}

/** One assignment per line; a value with a newline would end the assignment early. */
function encode(assignments: Record<string, string | number | bigint>): Buffer {
  const lines = Object.entries(assignments).map(([k, v]) => `${k}=${String(v).replace(/\n/g, ' ')}`);
  return Buffer.from(`${lines.join('\n')}\n`);
}

/** Sends `sd_notify` messages; every method is a no-op when there is no manager to tell. */
export class ServiceNotifier {
  private socket: DatagramSocket | null = null;
  private warned = false;
  /** The socket's path, or null when notifications are off. */
  readonly socketPath: string | null;

  constructor(
    private readonly logger: Logger,
    env: NodeJS.ProcessEnv = process.env,
  ) {
    const raw = env['NOTIFY_SOCKET'] ?? '';
    if (raw === '') {
      this.socketPath = null;
    } else if (raw.startsWith('/')) {
      this.socketPath = raw;
    } else {
      // An abstract socket (`@name`): unix-dgram copies the path as a C string, so a
      // name starting with a NUL byte cannot be addressed. systemd gives system
      // services a path (/run/systemd/notify).
      this.socketPath = null;
      this.warnOnce(`NOTIFY_SOCKET=${raw} is not an absolute path; notifications are off`);
    }
  }

  /** Whether messages go anywhere. */
  get enabled(): boolean {
    return this.socketPath !== null;
  }

  /** Startup (or a reload) is finished. */
  ready(status?: string): void {
    this.send({ READY: 1, ...(status !== undefined ? { STATUS: status } : {}) });
  }

  /** One line of free text the manager shows in `systemctl status`. */
  status(text: string): void {
    this.send({ STATUS: text });
  }

  /** A reload starts; `ready()` ends it. `MONOTONIC_USEC` is what systemd 253+ wants beside it. */
  reloading(status = 'reloading the configuration'): void {
    this.send({ RELOADING: 1, MONOTONIC_USEC: monotonicUsec(), STATUS: status });
  }

  /** Shutdown starts. */
  stopping(status = 'stopping'): void {
    this.send({ STOPPING: 1, STATUS: status });
  }

  /** Names another process as the service's main process (a successor at an upgrade). */
  mainPid(pid: number): void {
    this.send({ MAINPID: pid });
  }

  /** Keeps the watchdog from firing. */
  watchdog(): void {
    this.send({ WATCHDOG: 1 });
  }

  /**
   * Sends one message. Resolves when the datagram was handed to the kernel (or when it
   * could not be); never rejects.
   */
  send(assignments: Record<string, string | number | bigint>): Promise<void> {
    const path = this.socketPath;
    if (path === null) return Promise.resolve();
    const socket = this.open();
    if (!socket) return Promise.resolve();
    const message = encode(assignments);
    return new Promise((resolve) => {
      try {
        socket.send(message, 0, message.length, path, (err) => {
          if (err) this.warnOnce(`cannot notify the service manager at ${path}: ${err.message}`);
          resolve();
        });
      } catch (err) {
        this.warnOnce(`cannot notify the service manager at ${path}: ${String(err)}`);
        resolve();
      }
    });
  }

  /** Closes the socket (later messages open it again). */
  close(): void {
    try {
      this.socket?.close();
    } catch {
      // already closed
    }
    this.socket = null;
  }

  private open(): DatagramSocket | null {
    if (this.socket) return this.socket;
    try {
      const require = createRequire(import.meta.url);
      const dgram = require('unix-dgram') as UnixDgramModule;
      const socket = dgram.createSocket('unix_dgram');
      socket.on('error', (err) => this.warnOnce(`service manager socket: ${err.message}`));
      this.socket = socket;
      return socket;
    } catch (err) {
      this.warnOnce(`cannot open a datagram socket for the service manager: ${String(err)}`);
      return null;
    }
  }

  /** One warning for the whole run: a manager that went away must not flood the log. */
  private warnOnce(message: string): void {
    if (this.warned) return;
    this.warned = true;
    this.logger.warn(message);
  }
}
