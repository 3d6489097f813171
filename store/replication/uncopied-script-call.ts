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
 * read-back buffer. Every command of an append is encoded here, not by ioredis
 * (`PreparedCommand`): ioredis' own handling of a batch's hundreds of short arguments
 * cost more than the Lua script's checks of them.
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

/** A number as ioredis sends it (`String`, or a BigInt's digits past the safe range). */
function numberArg(n: number): string {
  return Number.isInteger(n) && !Number.isSafeInteger(n) ? BigInt(n).toString() : String(n);
}

/**
 * Arguments encoded once and sent in many calls as they are (a guest's keys, in every
 * append of its segments): the bytes `encodeCommandOf` would write for them.
 */
export class EncodedArgs {
  readonly bytes: Buffer;

  constructor(readonly args: readonly Arg[]) {
    const lengths: number[] = [];
    this.bytes = Buffer.alloc(measureArgs([args], lengths));
    writeArgs(this.bytes, 0, [args], lengths);
  }
}

/** A list of arguments to encode, or arguments encoded already. */
export type ArgList = readonly Arg[] | EncodedArgs;

/** How many arguments `lists` hold. */
function argCount(lists: readonly ArgList[]): number {
  let count = 0;
  for (const list of lists) count += list instanceof EncodedArgs ? list.args.length : list.length;
  return count;
}

/** The RESP size of the arguments of `lists`; each argument's own length is pushed on `lengths`. */
function measureArgs(lists: readonly ArgList[], lengths: number[]): number {
  let size = 0;
  for (const list of lists) {
    if (list instanceof EncodedArgs) {
      size += list.bytes.length;
      continue;
    }
    for (let i = 0; i < list.length; i++) {
      const arg = list[i]!;
      let n: number;
      if (typeof arg === 'string') n = stringBytes(arg);
      else if (typeof arg !== 'number') n = arg.length;
      else n = isCount(arg) ? decimalLength(arg) : Buffer.byteLength(numberArg(arg));
      lengths.push(n);
      size += 1 + decimalLength(n) + 2 + n + 2;
    }
  }
  return size;
}

/** Writes the arguments of `lists` (measured into `lengths`) at `at`; returns the position after them. */
function writeArgs(out: Buffer, at: number, lists: readonly ArgList[], lengths: readonly number[]): number {
  let k = 0;
  for (const list of lists) {
    if (list instanceof EncodedArgs) {
      out.set(list.bytes, at);
      at += list.bytes.length;
      continue;
    }
    for (let i = 0; i < list.length; i++) {
      const arg = list[i]!;
      const n = lengths[k++]!;
      out[at++] = 36; // $
      at = writeDecimal(out, at, n);
      out[at++] = 13;
      out[at++] = 10;
      if (typeof arg === 'number')
        at = isCount(arg) ? writeDecimal(out, at, arg) : at + out.write(numberArg(arg), at);
      else if (typeof arg !== 'string') {
        out.set(arg, at);
        at += n;
      } else if (arg.length !== n) at += out.write(arg, at);
      else at = writeAscii(out, at, arg);
      out[at++] = 13;
      out[at++] = 10;
    }
  }
  return at;
}

/**
 * A whole RESP command in one buffer, sized first and written once: `name`, then the
 * arguments of each list in turn, as if the lists were one. A batch of a tick's appends
 * has hundreds of short arguments; ioredis copies them into one array, makes a string
 * of each number, builds a string per argument and then a buffer from a list of them,
 * which was an eighth of the main thread's busy time with 500 trickling guests
 * (docs/benchmarks.md). Here counts (offsets, epochs) are written as digits straight
 * into the buffer, short ASCII strings character by character, and arguments encoded
 * ahead (`EncodedArgs`) as they are.
 */
export function encodeCommandOf(name: string, lists: readonly ArgList[]): Buffer {
  return encodeRun(lists, { name, count: argCount(lists) });
}

/**
 * One run of a command's encoding: the command's header (`name` and `count`) if given,
 * a CRLF that ends a large argument before it if `afterLarge`, the arguments of `lists`,
 * and the header of the large argument that follows it (`largeNext` bytes) if given.
 */
function encodeRun(
  lists: readonly ArgList[],
  run: { name?: string; count?: number; afterLarge?: boolean; largeNext?: number },
): Buffer {
  const lengths: number[] = [];
  let size = measureArgs(lists, lengths);
  const nameBytes = run.name === undefined ? 0 : Buffer.byteLength(run.name);
  if (run.name !== undefined)
    size += 1 + decimalLength(run.count! + 1) + 2 + 1 + decimalLength(nameBytes) + 2 + nameBytes + 2;
  if (run.afterLarge) size += 2;
  if (run.largeNext !== undefined) size += 1 + decimalLength(run.largeNext) + 2;
  const out = Buffer.allocUnsafe(size);
  let at = 0;
  if (run.afterLarge) {
    out[at++] = 13;
    out[at++] = 10;
  }
  if (run.name !== undefined) {
    out[at++] = 42; // *
    at = writeDecimal(out, at, run.count! + 1);
    out[at++] = 13;
    out[at++] = 10;
    out[at++] = 36; // $
    at = writeDecimal(out, at, nameBytes);
    out[at++] = 13;
    out[at++] = 10;
    at += out.write(run.name, at);
    out[at++] = 13;
    out[at++] = 10;
  }
  at = writeArgs(out, at, lists, lengths);
  if (run.largeNext !== undefined) {
    out[at++] = 36; // $
    at = writeDecimal(out, at, run.largeNext);
    out[at++] = 13;
    out[at++] = 10;
  }
  return out;
}

/**
 * The RESP encoding of a command as the pieces to write in turn: the large `Buffer`
 * arguments (LARGE_ARGUMENT_BYTES or more) as they are, everything between them joined
 * into one buffer. One piece when there is no large argument.
 */
export function encodePieces(name: string, lists: readonly ArgList[]): Buffer[] {
  const runs: ArgList[][] = [[]];
  const large: Buffer[] = [];
  for (const list of lists) {
    if (list instanceof EncodedArgs) {
      runs[runs.length - 1]!.push(list);
      continue;
    }
    let from = 0;
    for (let i = 0; i < list.length; i++) {
      const arg = list[i]!;
      if (typeof arg === 'string' || typeof arg === 'number' || arg.length < LARGE_ARGUMENT_BYTES) continue;
      if (i > from) runs[runs.length - 1]!.push(list.slice(from, i));
      large.push(arg);
      runs.push([]);
      from = i + 1;
    }
    if (from === 0) runs[runs.length - 1]!.push(list);
    else if (from < list.length) runs[runs.length - 1]!.push(list.slice(from));
  }
  if (large.length === 0) return [encodeCommandOf(name, lists)];
  const pieces: Buffer[] = [];
  runs.forEach((run, k) => {
    pieces.push(
      encodeRun(run, {
        ...(k === 0 ? { name, count: argCount(lists) } : { afterLarge: true }),
        ...(k < large.length ? { largeNext: large[k]!.length } : {}),
      }),
    );
    if (k < large.length) pieces.push(large[k]!);
  });
  return pieces;
}

/** Strings up to this long are measured and written here, not by Buffer's native calls. */
const SHORT_STRING = 64;

/**
 * The UTF-8 length of `s`. A short ASCII string (a key, a host name: most arguments)
 * is measured in a loop; a call into Buffer per argument cost more than the bytes.
 */
function stringBytes(s: string): number {
  if (s.length > SHORT_STRING) return Buffer.byteLength(s);
  for (let i = 0; i < s.length; i++) if (s.charCodeAt(i) >= 0x80) return Buffer.byteLength(s);
  return s.length;
}

/** Writes `s`, whose characters are all ASCII, at `at`; returns the position after it. */
function writeAscii(out: Buffer, at: number, s: string): number {
  if (s.length > SHORT_STRING) return at + out.write(s, at, 'latin1');
  for (let i = 0; i < s.length; i++) out[at + i] = s.charCodeAt(i);
  return at + s.length;
}

/** A non-negative safe integer: written digit by digit. */
function isCount(n: number): boolean {
  return Number.isSafeInteger(n) && n >= 0;
}

/**
 * A command encoded ahead from the caller's lists of arguments (`encodePieces`):
 * ioredis is given none of them, so it neither copies nor converts them. Its large
 * `Buffer` arguments are written to the socket as they are, corked with the rest and
 * uncorked on the next tick; ioredis writes the last piece. With `corkTurn`, the
 * socket is corked until the next tick even without one, so the commands sent in this
 * turn after it (a MULTI's) leave in one `writev`.
 *
 * It must be sent with `client.sendCommand(command)` on its own, never in a pipeline
 * or through ioredis' `multi()`, where what `toWritable` returns is queued elsewhere.
 */
export class PreparedCommand extends Command {
  /** Settles when the socket has written or dropped the large arguments it was given. */
  written: Promise<void> = Promise.resolve();
  private readonly pieces: Buffer[];
  private readonly corkTurn: boolean;

  constructor(
    name: string,
    lists: readonly ArgList[],
    options: { replyEncoding: 'utf8'; corkTurn?: boolean },
  ) {
    super(name, [], { replyEncoding: options.replyEncoding });
    this.pieces = encodePieces(name, lists);
    this.corkTurn = options.corkTurn ?? false;
  }

  override toWritable(socket: object): Buffer {
    const pieces = this.pieces;
    const corkable = isCorkable(socket);
    if (!corkable || (pieces.length === 1 && !this.corkTurn)) {
      return pieces.length === 1 ? pieces[0]! : Buffer.concat(pieces);
    }
    socket.cork();
    const writes: Promise<void>[] = [];
    for (let i = 0; i < pieces.length - 1; i++) {
      const piece = pieces[i]!;
      // Only the large arguments are the caller's memory: their writes are waited for.
      if (i % 2 === 1) writes.push(new Promise<void>((done) => socket.write(piece, () => done())));
      else socket.write(piece);
    }
    if (writes.length > 0) this.written = Promise.all(writes).then(() => {});
    process.nextTick(() => socket.uncork());
    return pieces[pieces.length - 1]!;
  }
}

/** Whether Redis refused a call because it does not hold the script. */
export function isNoScript(value: unknown): boolean {
  return value instanceof Error && value.message.includes('NOSCRIPT');
}

/**
 * Calls a script by its SHA with `PreparedCommand`. The first call, and the first
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
    return this.callLists(client, numberOfKeys, [args]);
  }

  /**
   * Calls the script with the arguments of `lists` in turn (keys first), as if they were
   * one list: a batch of segments gives each guest's keys encoded ahead (`EncodedArgs`).
   */
  async callLists(client: Redis, numberOfKeys: number, lists: readonly ArgList[]): Promise<unknown> {
    this.load(client);
    const head: Arg[] = [this.sha, numberOfKeys];
    const command = new PreparedCommand('evalsha', [head, ...lists], { replyEncoding: 'utf8' });
    void client.sendCommand(command);
    try {
      return await command.promise;
    } catch (err) {
      await command.written;
      if (!isNoScript(err)) throw err;
      return this.callAfterNoScript(
        numberOfKeys,
        lists.flatMap((list) => (list instanceof EncodedArgs ? list.args : list)),
      );
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
