/**
 * A script call whose large binary arguments go to the socket as they are, not
 * copied into one buffer first (docs/design.md "Replication").
 *
 * ioredis writes a command with a `Buffer` argument as one new buffer holding the
 * whole command: every byte of a segment copied once more, into memory that is fresh
 * for each call. During a flood into the stream that copy, with the page faults of
 * its fresh memory, kept the daemon's main thread fully busy while it sent 190 MiB/s,
 * and the stream waited on it (docs/benchmarks.md "Segments written as they are").
 * Here the command's text goes in small pieces and each large argument on its own,
 * all corked into one `writev`: the kernel copies the segment straight from the
 * read-back buffer.
 *
 * The segment's memory must stay unchanged until the socket is done with it: a
 * read-back buffer is reused once every append cut from it has settled
 * (`read-back-buffers.ts`). A call that Redis answered has sent every byte. A call
 * that failed (a command timeout, with Redis too slow to read; a lost connection)
 * may still have bytes queued in the socket, so it settles only once the socket has
 * written or dropped them: a reused buffer is never sent under an old header.
 */
import { createHash } from 'node:crypto';
import { Command, type Redis } from 'ioredis';

/** Arguments at least this long are written as they are; shorter ones are joined with the text. */
const LARGE_ARGUMENT_BYTES = 16 * 1024;

type Arg = string | Buffer | number;

/** What `toWritable` is given: the connection's socket when sent with `sendCommand` alone. */
interface CorkableSocket {
  cork(): void;
  uncork(): void;
  write(chunk: Buffer, callback?: () => void): boolean;
}

function isCorkable(socket: object): socket is CorkableSocket {
  const s = socket as Partial<CorkableSocket>;
  return typeof s.cork === 'function' && typeof s.uncork === 'function' && typeof s.write === 'function';
}

/** The pieces of a RESP command in one buffer (short arguments and the protocol's text). */
function joined(pieces: readonly (string | Buffer)[]): Buffer {
  let size = 0;
  for (const p of pieces) size += typeof p === 'string' ? Buffer.byteLength(p) : p.length;
  const out = Buffer.allocUnsafe(size);
  let at = 0;
  for (const p of pieces) at += typeof p === 'string' ? out.write(p, at) : p.copy(out, at);
  return out;
}

/** Writes `n` (not negative) in decimal at `at`; returns the position after it. */
function writeDecimal(out: Buffer, at: number, n: number): number {
  const digits = decimalLength(n);
  for (let i = at + digits - 1; i >= at; i--) {
    out[i] = 48 + (n % 10);
    n = Math.floor(n / 10);
  }
  return at + digits;
}

function decimalLength(n: number): number {
  let digits = 1;
  for (let rest = n; rest >= 10; rest = Math.floor(rest / 10)) digits++;
  return digits;
}

/**
 * A whole RESP command in one buffer, sized first and written once. A batch of a tick's
 * appends has hundreds of short arguments; ioredis builds a string per argument and then
 * a buffer from a list of them, which was an eighth of the main thread's busy time with
 * 500 trickling guests (docs/benchmarks.md).
 */
export function encodeCommand(name: string, args: readonly (string | Buffer)[]): Buffer {
  const lengths = new Array<number>(args.length);
  const nameBytes = Buffer.byteLength(name);
  let size = 1 + decimalLength(args.length + 1) + 2 + 1 + decimalLength(nameBytes) + 2 + nameBytes + 2;
  for (let i = 0; i < args.length; i++) {
    const arg = args[i]!;
    const n = typeof arg === 'string' ? Buffer.byteLength(arg) : arg.length;
    lengths[i] = n;
    size += 1 + decimalLength(n) + 2 + n + 2;
  }
  const out = Buffer.allocUnsafe(size);
  let at = 0;
  out[at++] = 42; // *
  at = writeDecimal(out, at, args.length + 1);
  at += out.write('\r\n$', at, 'latin1');
  at = writeDecimal(out, at, nameBytes);
  out[at++] = 13;
  out[at++] = 10;
  at += out.write(name, at);
  out[at++] = 13;
  out[at++] = 10;
  for (let i = 0; i < args.length; i++) {
    const arg = args[i]!;
    out[at++] = 36; // $
    at = writeDecimal(out, at, lengths[i]!);
    out[at++] = 13;
    out[at++] = 10;
    if (typeof arg !== 'string') at += arg.copy(out, at);
    // As many bytes as characters: ASCII, written without UTF-8 encoding (the common case).
    else at += arg.length === lengths[i] ? out.write(arg, at, 'latin1') : out.write(arg, at);
    out[at++] = 13;
    out[at++] = 10;
  }
  return out;
}

/**
 * A command that writes its large `Buffer` arguments to the socket itself (corked,
 * uncorked on the next tick, after ioredis wrote the rest) and hands ioredis only the
 * last piece. It must be sent with `client.sendCommand(command)` on its own, never in
 * a pipeline or `MULTI`, where what `toWritable` returns is queued elsewhere.
 */
export class UncopiedCommand extends Command {
  /** Settles when the socket has written or dropped the large arguments it was given. */
  written: Promise<void> = Promise.resolve();

  override toWritable(socket: object): string | Buffer {
    const args = this.args as (string | Buffer)[];
    if (!isCorkable(socket) || !args.some((a) => Buffer.isBuffer(a) && a.length >= LARGE_ARGUMENT_BYTES)) {
      return encodeCommand(this.name, args);
    }
    let pieces: (string | Buffer)[] = [
      `*${args.length + 1}\r\n$${Buffer.byteLength(this.name)}\r\n${this.name}\r\n`,
    ];
    socket.cork();
    const writes: Promise<void>[] = [];
    const write = (chunk: Buffer) => writes.push(new Promise<void>((done) => socket.write(chunk, done)));
    for (const arg of args) {
      const size = typeof arg === 'string' ? Buffer.byteLength(arg) : arg.length;
      if (typeof arg !== 'string' && size >= LARGE_ARGUMENT_BYTES) {
        pieces.push(`$${size}\r\n`);
        socket.write(joined(pieces));
        write(arg);
        pieces = ['\r\n'];
      } else {
        pieces.push(`$${size}\r\n`, arg, '\r\n');
      }
    }
    this.written = Promise.all(writes).then(() => {});
    process.nextTick(() => socket.uncork());
    return joined(pieces);
  }
}

/** Whether Redis refused a call because it does not hold the script. */
export function isNoScript(value: unknown): boolean {
  return value instanceof Error && value.message.includes('NOSCRIPT');
}

/**
 * Calls a script by its SHA with `UncopiedCommand`. The first call, and the first
 * after Redis answered `NOSCRIPT` (a restarted or flushed Redis), sends `SCRIPT LOAD`
 * just before: on one connection Redis runs commands in order, so the call finds it.
 * A call refused with NOSCRIPT anyway did not run; it goes again through `fallback`,
 * the same script defined with ioredis' `defineCommand`.
 */
export class UncopiedScript {
  readonly sha: string;
  /** A `SCRIPT LOAD` went ahead of the calls on the connection, and no NOSCRIPT came since. */
  private loaded = false;

  constructor(
    private readonly lua: string,
    private readonly fallback: (numberOfKeys: number, args: Arg[]) => Promise<unknown>,
  ) {
    this.sha = createHash('sha1').update(lua).digest('hex');
  }

  /** Sends `SCRIPT LOAD` now unless one went already: what is sent after it finds the script. */
  load(client: Redis): void {
    if (this.loaded) return;
    this.loaded = true;
    client.script('LOAD', this.lua).catch(() => {
      this.loaded = false;
    });
  }

  async call(client: Redis, numberOfKeys: number, args: Arg[]): Promise<unknown> {
    this.load(client);
    const command = new UncopiedCommand('evalsha', [this.sha, numberOfKeys, ...args], {
      replyEncoding: 'utf8',
    });
    void client.sendCommand(command);
    try {
      return await command.promise;
    } catch (err) {
      await command.written;
      if (!isNoScript(err)) throw err;
      return this.callAfterNoScript(numberOfKeys, args);
    }
  }

  /**
   * After Redis answered NOSCRIPT to a call of this script: calls it at once through
   * the fallback, which loads it. Sent as the refusal arrives, so calls refused in turn
   * go again in the order they were first sent.
   */
  callAfterNoScript(numberOfKeys: number, args: Arg[]): Promise<unknown> {
    this.loaded = false;
    return this.fallback(numberOfKeys, args);
  }
}
