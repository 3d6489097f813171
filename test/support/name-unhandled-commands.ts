/**
 * Setup file of every test run: when a Redis command's promise is rejected with no
 * handler, says which command it was. The rejection's own error ("Connection is
 * closed.", from ioredis' close handler) names no command, and such a rejection, rare
 * and timing-bound, fails the run it happens in. Only the command's name and first
 * key are kept (no stack: tests send hundreds of thousands of commands).
 */
import { Cluster, Redis } from 'ioredis';

interface SentCommand {
  readonly name: string;
  readonly args: readonly unknown[];
  readonly promise: Promise<unknown>;
}

/** Both set once: a worker that runs several test files runs this file for each. */
const PATCHED = Symbol.for('consoled.test.named-commands');
const LISTENING = Symbol.for('consoled.test.naming-unhandled-commands');
const host = globalThis as Record<symbol, unknown>;
if (!host[PATCHED]) host[PATCHED] = new WeakMap<Promise<unknown>, string>();
const sent = host[PATCHED] as WeakMap<Promise<unknown>, string>;

type Sender = { sendCommand(command: SentCommand, ...rest: unknown[]): unknown } & Record<symbol, unknown>;
for (const proto of [Redis.prototype, Cluster.prototype] as unknown as Sender[]) {
  if (proto[PATCHED]) continue;
  proto[PATCHED] = true;
  const send = proto.sendCommand;
  proto.sendCommand = function (this: unknown, command: SentCommand, ...rest: unknown[]) {
    if (command?.promise) sent.set(command.promise, `${command.name} ${String(command.args[0] ?? '')}`);
    return send.call(this, command, ...rest);
  };
}

if (!host[LISTENING]) {
  host[LISTENING] = true;
  process.on('unhandledRejection', (reason, promise) => {
    const command = sent.get(promise as Promise<unknown>);
    if (command !== undefined)
      process.stderr.write(`unhandled rejection of the Redis command ${command}: ${String(reason)}\n`);
  });
}
