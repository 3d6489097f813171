/**
 * The small writes of every guest's local log, made by one worker thread in batches
 * (docs/design.md "Local store"). A serial console's trickle makes one small write
 * every few tens of milliseconds per guest, and hundreds of guests make thousands a
 * second. Through libuv's thread pool each costs a hand-off to a pool thread, a wake-up
 * of that thread and a completion back on the event loop; measured at 500 guests, the
 * hand-offs alone were the daemon's largest single cost (docs/benchmarks.md
 * "Replication lag with the write thread"). Here the writes asked for in one turn of
 * the event loop, or while the thread works on the previous batch, are copied into one
 * buffer and handed to the thread in one message; it writes them one after the other
 * (`pwrite`, at the position given) and answers in one message.
 *
 * The thread also replaces small state files whole (`replaceFile`: create a temporary
 * file, write it, rename it over the file), one message for what took five trips
 * through the pool: a rotation's anchor is such a save, and at a few hundred rotations
 * a second (2 MiB files under a flood) those trips were what held the writer back
 * (docs/benchmarks.md "Flood into small files").
 *
 * Large writes (a flood's, up to `store.maxWriteBytes`) still go through the thread
 * pool: for them the hand-off is nothing beside the bytes, and copying them would not
 * be. A disk that hangs holds the write thread as it would hold the pool's threads; the
 * event loop never waits for either, and the overflow gate sees the disk make no
 * progress (docs/design.md "Local store").
 */
import { constants, writev } from 'node:fs';
import { Worker } from 'node:worker_threads';

/** Writes of at most this many bytes go through the write thread. */
export const SMALL_WRITE_BYTES = 64 * 1024;

/** `done(err, written)` of one `pwrite`/`pwritev`: as `fs.writev`'s callback. */
export type WriteCallback = (err: NodeJS.ErrnoException | null, written: number) => void;

/**
 * The thread's code, CommonJS given as a string (an `eval` worker): it needs no loader,
 * so it runs the same from the built daemon and from the TypeScript sources under test.
 * A message is `{ id, data, requests, replaces }`: `requests` is [fd, position, start,
 * length] per write into `data`, `replaces` is [path, tmp, mode, start, length] per file
 * replaced whole with bytes of `data`, after the writes. The answer is `{ id, results,
 * replaced }`: [written, error] per write, and an error or null per file replaced.
 */
const THREAD_SOURCE = `
const { parentPort } = require('node:worker_threads');
const { closeSync, openSync, renameSync, unlinkSync, writeSync } = require('node:fs');
const failure = (err) => ({ code: err.code, message: err.message });
const CREATE = ${constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW};
function createFresh(tmp, mode) {
  try {
    return openSync(tmp, CREATE, mode);
  } catch (err) {
    if (err.code !== 'EEXIST') throw err;
  }
  unlinkSync(tmp); // a leftover, or a planted link: removed, never followed
  return openSync(tmp, CREATE, mode);
}
function replace(path, tmp, mode, view) {
  const fd = createFresh(tmp, mode);
  try {
    for (let at = 0; at < view.length; ) at += writeSync(fd, view, at, view.length - at);
  } finally {
    closeSync(fd);
  }
  try {
    renameSync(tmp, path);
  } catch (err) {
    try { unlinkSync(tmp); } catch {}
    throw err;
  }
}
parentPort.on('message', ({ id, data, requests, replaces }) => {
  const results = [];
  for (let i = 0; i < requests.length; i += 4) {
    const view = new Uint8Array(data, requests[i + 2], requests[i + 3]);
    try {
      results.push(writeSync(requests[i], view, 0, view.length, requests[i + 1]), null);
    } catch (err) {
      results.push(0, failure(err));
    }
  }
  const replaced = [];
  for (let i = 0; i < replaces.length; i += 5) {
    try {
      replace(replaces[i], replaces[i + 1], replaces[i + 2], new Uint8Array(data, replaces[i + 3], replaces[i + 4]));
      replaced.push(null);
    } catch (err) {
      replaced.push(failure(err));
    }
  }
  parentPort.postMessage({ id, results, replaced });
});
`;

interface Request {
  readonly fd: number;
  readonly buffers: readonly Buffer[];
  readonly size: number;
  readonly position: number;
  readonly done: WriteCallback;
}

/** A state file replaced whole (`replaceFile`). */
interface Replace {
  readonly path: string;
  readonly tmp: string;
  readonly mode: number;
  readonly bytes: Buffer;
  readonly done: (err: NodeJS.ErrnoException | null) => void;
}

type Failure = { code?: string; message: string };

interface Answer {
  readonly id: number;
  readonly results: Array<number | Failure | null>;
  readonly replaced: Array<Failure | null>;
}

interface Batch {
  readonly writes: Request[];
  readonly replaces: Replace[];
}

const errorOf = (failure: Failure): NodeJS.ErrnoException =>
  Object.assign(new Error(failure.message), { code: failure.code });

class WriteThread {
  private worker: Worker | null = null;
  private batch: Batch = { writes: [], replaces: [] };
  private batchBytes = 0;
  private scheduled = false;
  private readonly inflight = new Map<number, Batch>();
  private nextId = 0;

  write(request: Request): void {
    this.batch.writes.push(request);
    this.add(request.size);
  }

  replace(request: Replace): void {
    this.batch.replaces.push(request);
    this.add(request.bytes.length);
  }

  private add(bytes: number): void {
    this.batchBytes += bytes;
    this.schedule();
  }

  /**
   * The batch leaves at the end of this turn of the event loop or, while one is with
   * the thread, once that one is answered: what is asked for in between gathers into
   * one message instead of one a turn, and waits no longer than the thread is busy.
   */
  private schedule(): void {
    if (this.scheduled || this.inflight.size > 0) return;
    if (this.batch.writes.length === 0 && this.batch.replaces.length === 0) return;
    this.scheduled = true;
    setImmediate(this.flush);
  }

  private readonly flush = (): void => {
    this.scheduled = false;
    const batch = this.batch;
    const total = this.batchBytes;
    this.batch = { writes: [], replaces: [] };
    this.batchBytes = 0;
    const data = new ArrayBuffer(total);
    const bytes = new Uint8Array(data);
    const requests: number[] = [];
    let at = 0;
    for (const r of batch.writes) {
      requests.push(r.fd, r.position, at, r.size);
      for (const b of r.buffers) {
        bytes.set(b, at);
        at += b.length;
      }
    }
    const replaces: Array<string | number> = [];
    for (const r of batch.replaces) {
      replaces.push(r.path, r.tmp, r.mode, at, r.bytes.length);
      bytes.set(r.bytes, at);
      at += r.bytes.length;
    }
    const id = this.nextId++;
    this.inflight.set(id, batch);
    const worker = this.thread();
    if (this.inflight.size === 1) worker.ref();
    worker.postMessage({ id, data, requests, replaces }, [data]);
  };

  private thread(): Worker {
    if (this.worker) return this.worker;
    // No inherited node flags: `--input-type=module` would make the code a module
    // (without `require`), and a profiler's flags would profile the thread too.
    const worker = new Worker(THREAD_SOURCE, { eval: true, execArgv: [] });
    worker.on('message', (answer: Answer) => this.answered(answer));
    // The thread died (it should not: every write's error is caught there): every write
    // it held fails, and the next batch starts a new thread.
    const failAll = (reason: string) => {
      if (this.worker !== worker) return;
      this.worker = null;
      const held = [...this.inflight.values()];
      this.inflight.clear();
      const failed = () => errorOf({ code: 'EIO', message: `log write thread ${reason}` });
      for (const { writes, replaces } of held) {
        for (const r of writes) r.done(failed(), 0);
        for (const r of replaces) r.done(failed());
      }
      this.schedule();
    };
    worker.on('error', (err) => failAll(`failed: ${String(err)}`));
    worker.on('exit', (code) => failAll(`exited with ${code}`));
    this.worker = worker;
    return worker;
  }

  private answered({ id, results, replaced }: Answer): void {
    const batch = this.inflight.get(id);
    if (!batch) return;
    this.inflight.delete(id);
    if (this.inflight.size === 0) this.worker?.unref();
    batch.writes.forEach((r, i) => {
      const error = results[2 * i + 1] as Failure | null;
      r.done(error ? errorOf(error) : null, results[2 * i] as number);
    });
    batch.replaces.forEach((r, i) => {
      const error = replaced[i] ?? null;
      r.done(error ? errorOf(error) : null);
    });
    this.schedule();
  }
}

const thread = new WriteThread();

/**
 * Writes `buffers` (`size` bytes in all) to `fd` at `position` with one `pwrite` or
 * `pwritev`, as `fs.writev` does: `done` gets how many bytes landed (a short write is
 * the caller's to continue). Small writes go through the write thread, in order.
 */
export function writeAt(
  fd: number,
  buffers: readonly Buffer[],
  size: number,
  position: number,
  done: WriteCallback,
): void {
  if (size <= SMALL_WRITE_BYTES) thread.write({ fd, buffers, size, position, done });
  else writev(fd, buffers as Buffer[], position, done);
}

/**
 * Replaces `path` with `bytes` on the write thread: `tmp` is created afresh (`O_EXCL |
 * O_NOFOLLOW`; whatever is there, a leftover or a planted link, is unlinked and the create
 * tried again), written, and renamed over `path`; on a failed rename it is removed. The
 * create comes first because `tmp` is nearly always absent: an unlink first failed with
 * ENOENT at every save, and a rotation's anchor is saved at each of a flood's hundreds of
 * rotations a second.
 * Not synced: for state files that may lose their last save on power loss
 * (store/json-state-file.ts). `done` gets the errno error, or null once it is in place.
 */
export function replaceFile(
  path: string,
  tmp: string,
  bytes: Buffer,
  mode: number,
  done: (err: NodeJS.ErrnoException | null) => void,
): void {
  thread.replace({ path, tmp, mode, bytes, done });
}
