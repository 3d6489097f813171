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
 * Large writes (a flood's, up to `store.maxWriteBytes`) still go through the thread
 * pool: for them the hand-off is nothing beside the bytes, and copying them would not
 * be. A disk that hangs holds the write thread as it would hold the pool's threads; the
 * event loop never waits for either, and the overflow gate sees the disk make no
 * progress (docs/design.md "Local store").
 */
import { writev } from 'node:fs';
import { Worker } from 'node:worker_threads';

/** Writes of at most this many bytes go through the write thread. */
export const SMALL_WRITE_BYTES = 64 * 1024;

/** `done(err, written)` of one `pwrite`/`pwritev`: as `fs.writev`'s callback. */
export type WriteCallback = (err: NodeJS.ErrnoException | null, written: number) => void;

/**
 * The thread's code, CommonJS given as a string (an `eval` worker): it needs no loader,
 * so it runs the same from the built daemon and from the TypeScript sources under test.
 * A message is `{ id, data, requests }`, `requests` being [fd, position, start, length]
 * per write into `data`; the answer is `{ id, results }`, [written, error] per write.
 */
const THREAD_SOURCE = `
const { parentPort } = require('node:worker_threads');
const { writeSync } = require('node:fs');
parentPort.on('message', ({ id, data, requests }) => {
  const results = [];
  for (let i = 0; i < requests.length; i += 4) {
    const view = new Uint8Array(data, requests[i + 2], requests[i + 3]);
    try {
      results.push(writeSync(requests[i], view, 0, view.length, requests[i + 1]), null);
    } catch (err) {
      results.push(0, { code: err.code, message: err.message });
    }
  }
  parentPort.postMessage({ id, results });
});
`;

interface Request {
  readonly fd: number;
  readonly buffers: readonly Buffer[];
  readonly size: number;
  readonly position: number;
  readonly done: WriteCallback;
}

interface Answer {
  readonly id: number;
  readonly results: Array<number | { code?: string; message: string } | null>;
}

class WriteThread {
  private worker: Worker | null = null;
  private batch: Request[] = [];
  private batchBytes = 0;
  private scheduled = false;
  private readonly inflight = new Map<number, Request[]>();
  private nextId = 0;

  write(request: Request): void {
    this.batch.push(request);
    this.batchBytes += request.size;
    this.schedule();
  }

  /**
   * The batch leaves at the end of this turn of the event loop or, while one is with
   * the thread, once that one is answered: what is asked for in between gathers into
   * one message instead of one a turn, and waits no longer than the thread is busy.
   */
  private schedule(): void {
    if (this.scheduled || this.inflight.size > 0 || this.batch.length === 0) return;
    this.scheduled = true;
    setImmediate(this.flush);
  }

  private readonly flush = (): void => {
    this.scheduled = false;
    const batch = this.batch;
    const total = this.batchBytes;
    this.batch = [];
    this.batchBytes = 0;
    const data = new ArrayBuffer(total);
    const bytes = new Uint8Array(data);
    const requests: number[] = [];
    let at = 0;
    for (const r of batch) {
      requests.push(r.fd, r.position, at, r.size);
      for (const b of r.buffers) {
        bytes.set(b, at);
        at += b.length;
      }
    }
    const id = this.nextId++;
    this.inflight.set(id, batch);
    const worker = this.thread();
    if (this.inflight.size === 1) worker.ref();
    worker.postMessage({ id, data, requests }, [data]);
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
      const held = [...this.inflight.values()].flat();
      this.inflight.clear();
      for (const r of held)
        r.done(Object.assign(new Error(`log write thread ${reason}`), { code: 'EIO' }), 0);
      this.schedule();
    };
    worker.on('error', (err) => failAll(`failed: ${String(err)}`));
    worker.on('exit', (code) => failAll(`exited with ${code}`));
    this.worker = worker;
    return worker;
  }

  private answered({ id, results }: Answer): void {
    const batch = this.inflight.get(id);
    if (!batch) return;
    this.inflight.delete(id);
    if (this.inflight.size === 0) this.worker?.unref();
    for (let i = 0; i < batch.length; i++) {
      const written = results[2 * i] as number;
      const error = results[2 * i + 1] as { code?: string; message: string } | null;
      batch[i]!.done(error ? Object.assign(new Error(error.message), { code: error.code }) : null, written);
    }
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
