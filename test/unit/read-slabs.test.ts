/**
 * Read slabs (docs/design.md "Borrowed reads"): a flood's reads land in slabs, the log's
 * write queue keeps them where they landed instead of copying them, and every other
 * keeper copies. What was not kept is read over; a slab goes round once its kept bytes
 * are written and no socket reads into it; one whose write was given up on never does.
 * The last case reads a real TCP flood through a chardev socket into a write queue.
 */
import { createServer, type Server, type Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { isBorrowed, keepBytes } from '../../common/borrowed-bytes.js';
import {
  keepRead,
  MAX_READING_SLABS,
  READ_SLAB_BYTES,
  type ReadSlab,
  readSlabOf,
  takeReadSlab,
} from '../../common/read-slabs.js';
import { dialChardev, setChardevReader } from '../../sidecar/sources/chardev-socket.js';
import { WriteQueue } from '../../store/log-write-queue.js';
import { waitFor } from '../support/wait.js';

/** `size` bytes numbered from `seed`: a pattern whose every position differs between seeds. */
function pattern(size: number, seed: number): Buffer {
  const out = Buffer.allocUnsafe(size);
  for (let i = 0; i < size; i++) out[i] = (i * 7 + seed * 13) & 0xff;
  return out;
}

/** Reads `bytes` into the slab's target as a socket would; returns the landed view (the callback's). */
function land(slab: ReadSlab, bytes: Buffer): Buffer {
  bytes.copy(slab.target());
  return slab.landed(bytes.length);
}

const newQueue = (): WriteQueue => new WriteQueue(64 * 1024 * 1024, () => undefined);

function takeAll(queue: WriteQueue): Buffer[] {
  return queue.take(queue.pendingBytes);
}

const cleanups: Array<() => void> = [];
afterEach(() => {
  for (const cleanup of cleanups.splice(0)) cleanup();
});

/** A slab to read into; no socket reads into it once the test is over. */
function takeSlab(): ReadSlab {
  const slab = takeReadSlab();
  if (!slab) throw new Error('no read slab free');
  cleanups.push(() => slab.stopReading());
  return slab;
}

describe('read slabs', () => {
  it('the queue keeps a landed read in place; the next read lands after it, unkept bytes are read over', () => {
    const slab = takeSlab();
    const queue = newQueue();
    const first = land(slab, pattern(100_000, 1));
    expect(isBorrowed(first)).toBe(true); // lent to every other keeper
    queue.push(first);
    slab.readDone();
    // Not kept (a drop): the next read lands at the same place.
    const dropped = land(slab, pattern(50_000, 2));
    expect(dropped.byteOffset).toBe(100_000);
    slab.readDone();
    const second = land(slab, pattern(70_000, 3));
    expect(second.byteOffset).toBe(100_000);
    queue.push(second);
    slab.readDone();
    const parts = takeAll(queue);
    // Both kept where they landed, adjacent: one view of the slab, no copy.
    expect(parts).toHaveLength(1);
    expect(parts[0]!.buffer).toBe(slab.buf.buffer);
    expect(parts[0]!.equals(Buffer.concat([pattern(100_000, 1), pattern(70_000, 3)]))).toBe(true);
    expect(slab.room).toBe(READ_SLAB_BYTES - 170_000);
  });

  it('only the read whose callback runs, from its first unkept byte, is kept; anything else is copied', () => {
    const slab = takeSlab();
    const queue = newQueue();
    const view = land(slab, pattern(10_000, 1));
    expect(keepRead(view.subarray(1000))).toBe(false); // not where the read starts
    slab.readDone();
    expect(keepRead(view)).toBe(false); // its callback is over
    queue.push(view); // so the queue copies it
    const [copy] = takeAll(queue);
    expect(copy!.buffer).not.toBe(slab.buf.buffer);
    expect(copy!.equals(pattern(10_000, 1))).toBe(true);
    // A read kept in two parts, as a capture that splits it around a marker does.
    const next = land(slab, pattern(8000, 2));
    queue.push(next.subarray(0, 3000));
    queue.push(Buffer.from('marker'));
    queue.push(next.subarray(3000));
    slab.readDone();
    const parts = takeAll(queue);
    expect(parts.map((p) => p.buffer === slab.buf.buffer)).toEqual([true, false, true]);
    const read = pattern(8000, 2);
    const expected = Buffer.concat([read.subarray(0, 3000), Buffer.from('marker'), read.subarray(3000)]);
    expect(Buffer.concat(parts).equals(expected)).toBe(true);
  });

  it('a slab goes round once no socket reads into it and its kept bytes are written', () => {
    const slab = takeSlab();
    const queue = newQueue();
    queue.push(land(slab, pattern(200_000, 1)));
    slab.readDone();
    slab.stopReading();
    const [inFlight] = queue.take(150_000);
    queue.acknowledge(150_000); // part written: the slab stays held
    const other = takeSlab();
    expect(other.buf === slab.buf).toBe(false);
    takeAll(queue);
    queue.acknowledge(50_000);
    expect(inFlight!.buffer).toBe(slab.buf.buffer);
    const reused = takeSlab();
    expect(reused.buf === slab.buf).toBe(true);
    expect(reused.room).toBe(READ_SLAB_BYTES);
    expect(readSlabOf(reused.buf)).toBe(reused);
  });

  it('a slab still read into is not reused, and one with a write given up on never is', () => {
    const slab = takeSlab();
    const queue = newQueue();
    queue.push(land(slab, pattern(1000, 1)));
    slab.readDone();
    takeAll(queue);
    queue.acknowledge(1000); // written, but the socket still reads into it
    const meanwhile = takeSlab();
    expect(meanwhile.buf === slab.buf).toBe(false);

    const failing = takeSlab();
    queue.push(land(failing, pattern(5000, 2)));
    failing.readDone();
    takeAll(queue);
    queue.requeueInflight(); // the writer gave the write up; it may still be running
    const again = takeAll(queue);
    expect(Buffer.concat(again).equals(pattern(5000, 2))).toBe(true);
    queue.acknowledge(5000);
    failing.stopReading();
    slab.stopReading();
    const seen = [takeSlab(), takeSlab(), takeSlab()];
    // Compared by identity: a matcher would compare megabyte buffers byte by byte.
    expect(seen.some((s) => s.buf === failing.buf)).toBe(false);
    expect(seen.some((s) => s.buf === slab.buf)).toBe(true);
  });

  it('keepBytes copies a read lent from a slab', () => {
    const slab = takeSlab();
    const view = land(slab, pattern(100, 1));
    const kept = keepBytes(view);
    slab.readDone();
    land(slab, pattern(100, 2));
    expect(kept.equals(pattern(100, 1))).toBe(true);
  });

  it('at most MAX_READING_SLABS are read into at once; one stopped makes room for another', () => {
    const taken = Array.from({ length: MAX_READING_SLABS }, () => takeSlab());
    expect(takeReadSlab()).toBeNull(); // a flooding socket reads into the shared buffer then
    taken[0]!.stopReading();
    taken[0]!.stopReading(); // once only
    const next = takeSlab();
    expect(takeReadSlab()).toBeNull();
    next.stopReading();
    expect(takeSlab().room).toBe(READ_SLAB_BYTES);
  });

  it('a TCP flood read through a chardev socket: kept in slabs after the first read, whole and in order', async () => {
    const total = 24 * 1024 * 1024;
    const sent = pattern(total, 5);
    let server: Server | null = null;
    const port = await new Promise<number>((resolve) => {
      server = createServer((conn: Socket) => {
        // The flood, then two small writes apart: a small read sends the socket back to
        // the shared buffer (the flood's last read may already have), so the second is
        // copied out of it.
        conn.write(sent, () =>
          setTimeout(() => {
            conn.write('tail 1\n');
            setTimeout(() => conn.end('tail 2\n'), 300);
          }, 300),
        );
      }).listen(0, '127.0.0.1', () => resolve((server!.address() as { port: number }).port));
    });
    cleanups.push(() => server?.close());
    const queue = newQueue();
    const kinds = { inSlab: 0, lentShared: 0, own: 0 };
    let last = '';
    const socket = dialChardev({ host: '127.0.0.1', port });
    let ended = false;
    socket.on('end', () => (ended = true));
    setChardevReader(socket, (chunk) => {
      if (readSlabOf(chunk)) kinds.inSlab += chunk.length;
      else if (isBorrowed(chunk)) kinds.lentShared += chunk.length;
      else kinds.own += chunk.length;
      last = `${isBorrowed(chunk) ? 'lent' : 'own'} ${chunk.toString('latin1')}`;
      queue.push(chunk);
    });
    const received: Buffer[] = [];
    // Written as the log's writer would: take, then acknowledge, so the slabs go round.
    const drain = setInterval(() => {
      const parts = takeAll(queue);
      for (const p of parts) received.push(Buffer.from(p));
      queue.acknowledge(parts.reduce((n, p) => n + p.length, 0));
    }, 2);
    cleanups.push(() => clearInterval(drain));
    await waitFor('the flood and its tail', () => ended && queue.pendingBytes === 0, { timeoutMs: 30_000 });
    clearInterval(drain);
    socket.destroy();
    expect(Buffer.concat(received).equals(Buffer.concat([sent, Buffer.from('tail 1\ntail 2\n')]))).toBe(true);
    expect(kinds.inSlab).toBeGreaterThan(total / 4);
    expect(last).toBe('own tail 2\n'); // copied out of the shared buffer
  });
});
