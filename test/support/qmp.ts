/**
 * A minimal QMP client (QEMU Machine Protocol, docs/interop/qmp-spec in QEMU's tree) over a
 * unix socket: read the greeting, negotiate capabilities, then run commands one JSON line at
 * a time. Asynchronous events are kept, not acted on.
 */
import { connect, type Socket } from 'node:net';

/** An asynchronous event QEMU sent, such as `STOP`, `RESUME`, `SHUTDOWN`, `MIGRATION`. */
export interface QmpEvent {
  event: string;
  data?: Record<string, unknown>;
  timestamp: { seconds: number; microseconds: number };
}

/** The greeting QEMU sends on connect. */
export interface QmpGreeting {
  QMP: {
    version: { qemu: { major: number; minor: number; micro: number }; package: string };
    capabilities: string[];
  };
}

/** A command QEMU answered with `{"error": {"class", "desc"}}`. */
export class QmpError extends Error {
  readonly errorClass: string;
  readonly command: string;

  constructor(command: string, errorClass: string, desc: string) {
    super(`QMP ${command} failed: ${errorClass}: ${desc}`);
    this.name = 'QmpError';
    this.errorClass = errorClass;
    this.command = command;
  }
}

interface Pending {
  command: string;
  resolve: (value: unknown) => void;
  reject: (err: Error) => void;
}

type EventWaiter = (event: QmpEvent) => boolean;

/** One QMP session. Create it with {@link QmpClient.connect}. */
export class QmpClient {
  /** The greeting, with QEMU's version. */
  readonly greeting: QmpGreeting;
  /** Every asynchronous event received so far, oldest first. */
  readonly events: QmpEvent[] = [];

  readonly #socket: Socket;
  readonly #pending = new Map<number, Pending>();
  readonly #eventWaiters = new Set<EventWaiter>();
  #nextId = 1;
  #closedError: Error | undefined;

  private constructor(socket: Socket, greeting: QmpGreeting) {
    this.#socket = socket;
    this.greeting = greeting;
  }

  /**
   * Connects to QEMU's QMP unix socket, reads the greeting and leaves capabilities
   * negotiation mode, so that commands may be run. Fails after `timeoutMs`.
   */
  static async connect(path: string, timeoutMs = 10_000): Promise<QmpClient> {
    const socket = connect(path);
    let client: QmpClient | undefined;
    let buffered = '';
    let greetingResolve: (g: QmpGreeting) => void = () => {};
    let greetingReject: (err: Error) => void = () => {};
    const greetingPromise = new Promise<QmpGreeting>((resolve, reject) => {
      greetingResolve = resolve;
      greetingReject = reject;
    });
    const timer = setTimeout(() => greetingReject(new Error(`QMP greeting timed out on ${path}`)), timeoutMs);

    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => {
      buffered += chunk;
      let newline = buffered.indexOf('\n');
      while (newline !== -1) {
        const line = buffered.slice(0, newline).trim();
        buffered = buffered.slice(newline + 1);
        newline = buffered.indexOf('\n');
        if (line === '') continue;
        const message = JSON.parse(line) as Record<string, unknown>;
        if (client === undefined) {
          if ('QMP' in message) greetingResolve(message as unknown as QmpGreeting);
          else greetingReject(new Error(`expected a QMP greeting, got ${line}`));
        } else {
          client.#dispatch(message);
        }
      }
    });
    socket.on('error', (err) => {
      greetingReject(err);
      if (client !== undefined) client.#fail(err);
    });
    socket.on('close', () => {
      const err = new Error('QMP connection closed');
      greetingReject(err);
      if (client !== undefined) client.#fail(err);
    });

    try {
      const greeting = await greetingPromise;
      client = new QmpClient(socket, greeting);
      await client.execute('qmp_capabilities');
      return client;
    } catch (err) {
      socket.destroy();
      throw err;
    } finally {
      clearTimeout(timer);
    }
  }

  /**
   * Runs `command` with `args` and returns its `return` value; throws {@link QmpError} when
   * QEMU answers with an error, or an Error when the connection closes first.
   */
  execute<T = unknown>(command: string, args?: Record<string, unknown>): Promise<T> {
    if (this.#closedError !== undefined) return Promise.reject(this.#closedError);
    const id = this.#nextId++;
    return new Promise<T>((resolve, reject) => {
      this.#pending.set(id, { command, resolve: resolve as (value: unknown) => void, reject });
      const message =
        args === undefined ? { execute: command, id } : { execute: command, arguments: args, id };
      this.#socket.write(`${JSON.stringify(message)}\n`);
    });
  }

  /**
   * Resolves with the first event named `name` that arrives from now on (and, when
   * `includePast` is set, also one already received), or rejects after `timeoutMs`.
   */
  waitForEvent(name: string, timeoutMs: number, includePast = false): Promise<QmpEvent> {
    if (includePast) {
      const past = this.events.find((e) => e.event === name);
      if (past !== undefined) return Promise.resolve(past);
    }
    return new Promise((resolve, reject) => {
      const waiter: EventWaiter = (event) => {
        if (event.event !== name) return false;
        clearTimeout(timer);
        resolve(event);
        return true;
      };
      const timer = setTimeout(() => {
        this.#eventWaiters.delete(waiter);
        reject(new Error(`QMP event ${name} did not arrive within ${timeoutMs} ms`));
      }, timeoutMs);
      this.#eventWaiters.add(waiter);
    });
  }

  /** Closes the connection; pending commands reject. */
  close(): void {
    this.#socket.destroy();
    this.#fail(new Error('QMP connection closed by the client'));
  }

  #dispatch(message: Record<string, unknown>): void {
    if (typeof message['event'] === 'string') {
      const event = message as unknown as QmpEvent;
      this.events.push(event);
      for (const waiter of this.#eventWaiters) {
        if (waiter(event)) this.#eventWaiters.delete(waiter);
      }
      return;
    }
    const id = message['id'];
    const pending = typeof id === 'number' ? this.#pending.get(id) : undefined;
    if (pending === undefined || typeof id !== 'number') return;
    this.#pending.delete(id);
    const error = message['error'] as { class?: unknown; desc?: unknown } | undefined;
    if (error !== undefined) {
      pending.reject(new QmpError(pending.command, String(error.class), String(error.desc)));
    } else {
      pending.resolve(message['return']);
    }
  }

  #fail(err: Error): void {
    this.#closedError ??= err;
    for (const pending of this.#pending.values()) pending.reject(err);
    this.#pending.clear();
  }
}
