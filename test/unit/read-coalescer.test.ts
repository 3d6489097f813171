/**
 * Read coalescing (sidecar/sources/read-coalescer.ts) on a real TCP source: bulk output
 * in small writes is read in fewer, larger reads, every byte in order; a keystroke's
 * echo (a byte now and then) is read at once; a flood's large reads are not held; and
 * with a window of 0 nothing is held.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import type { Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { WINDOW_BYTES } from '../../sidecar/sources/read-coalescer.js';
import { type Cleanups, connectedTcpSource, startedTcpSource } from '../support/tcp-source.js';
import { sleep, waitFor } from '../support/wait.js';

const cleanups: Cleanups = [];
afterEach(async () => {
  for (const f of cleanups.splice(0).reverse()) await f();
});

/** A source with `windowMs` read coalescing, connected to a server of this test's. */
async function connectedSource(windowMs: number) {
  const connected = await connectedTcpSource(cleanups, (source) =>
    source.setReadCoalescing({ windowMs, bulkBytesPerSec: 64 * 1024 }),
  );
  connected.guest.setNoDelay(true);
  return connected;
}

/** Writes `count` numbered 1 KiB chunks, one per millisecond (about 1 MiB/s). */
async function bulk(guest: Socket, count: number): Promise<Buffer> {
  const sent: Buffer[] = [];
  for (let i = 0; i < count; i++) {
    const chunk = Buffer.alloc(1024, 32 + (i % 90));
    sent.push(chunk);
    guest.write(chunk);
    await sleep(1);
  }
  return Buffer.concat(sent);
}

describe('read coalescing', () => {
  it('reads bulk output in small writes as fewer, larger reads, every byte in order', async () => {
    const { source, guest, reads } = await connectedSource(20);
    const sent = await bulk(guest, 500);
    await waitFor('every byte', () => Buffer.concat(reads).length === sent.length);
    expect(Buffer.concat(reads).equals(sent)).toBe(true);
    expect(source.counters.coalescedWindows).toBeGreaterThan(0);
    // 500 writes over at least half a second; 20 ms windows leave far fewer reads.
    expect(reads.length).toBeLessThan(150);
  });

  it('reads a steady trickle once per window: the read a window gathers starts the next one', async () => {
    const { source, guest, reads } = await connectedSource(20);
    const sent = await bulk(guest, 500);
    await waitFor('every byte', () => Buffer.concat(reads).length === sent.length);
    expect(Buffer.concat(reads).equals(sent)).toBe(true);
    const windows = source.counters.coalescedWindows;
    expect(windows).toBeGreaterThan(10);
    // Each read starts a window but those before the output counts as bulk (its rate is
    // measured over about 100 ms) and the last: no small read follows each window's
    // large one, which would make about two reads per window.
    expect(reads.length).toBeLessThanOrEqual(windows + 10);
    expect(reads.length).toBeLessThan(1.5 * windows);
  });

  it('reads each write of the same bulk at once with a window of 0', async () => {
    const { source, guest, reads } = await connectedSource(0);
    const sent = await bulk(guest, 300);
    await waitFor('every byte', () => Buffer.concat(reads).length === sent.length);
    expect(Buffer.concat(reads).equals(sent)).toBe(true);
    expect(source.counters.coalescedWindows).toBe(0);
    expect(reads.length).toBeGreaterThan(150);
  });

  it("reads a keystroke's echo at once: output below the bulk rate is never held", async () => {
    const { source, guest, reads } = await connectedSource(20);
    for (let i = 0; i < 20; i++) {
      const echoed = new Promise((r) => source.once('data', r));
      guest.write('x');
      await echoed;
      await sleep(5);
    }
    // Each echo was its own read, and no read started a window.
    expect(reads.map((r) => r.toString())).toEqual(Array(20).fill('x'));
    expect(source.counters.coalescedWindows).toBe(0);
  });

  it("does not hold a flood's large reads", async () => {
    const { source, guest, reads } = await connectedSource(20);
    const block = Buffer.alloc(256 * 1024, 0x41);
    for (let i = 0; i < 16; i++) guest.write(block);
    await waitFor('every byte', () => Buffer.concat(reads).length === 16 * block.length);
    // Only reads under 16 KiB start a window; a flood that arrives in large bites starts few.
    const small = reads.filter((r) => r.length < 16 * 1024).length;
    expect(source.counters.coalescedWindows).toBeLessThanOrEqual(small);
  });
});

/**
 * A guest in a process of its own (so that it writes while the source reads) that
 * writes `mib` MiB in 1 KiB writes, about 20 MiB/s, each write its own segment.
 */
async function fastSmallWriter(mib: number): Promise<{ port: number; child: ChildProcess }> {
  const script = `
    const net = require('node:net');
    const server = net.createServer((s) => {
      s.setNoDelay(true);
      const chunk = Buffer.alloc(1024, 0x61);
      let left = ${mib} * 1024;
      const burst = () => {
        const until = performance.now() + 5;
        while (left > 0 && performance.now() < until) {
          left--;
          if (!s.write(chunk)) return s.once('drain', burst);
          const spin = performance.now() + 0.04;
          while (performance.now() < spin);
        }
        if (left > 0) setImmediate(burst);
        else s.end(() => server.close());
      };
      burst();
    });
    server.listen(0, '127.0.0.1', () => console.log(server.address().port));`;
  const child = spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
  const port = await new Promise<number>((resolve, reject) => {
    child.stdout.once('data', (d: Buffer) => resolve(Number(d.toString().trim())));
    child.once('exit', (code) => reject(new Error(`guest exited ${code}`)));
  });
  return { port, child };
}

describe('read coalescing of fast output in small writes', () => {
  it('keeps what one window gathers well under a viewer buffer, with 100 ms windows', async () => {
    const mib = 48;
    const { port, child } = await fastSmallWriter(mib);
    cleanups.push(() => void child.kill());
    const { source, reads } = startedTcpSource(cleanups, port, (s) =>
      s.setReadCoalescing({ windowMs: 100, bulkBytesPerSec: 64 * 1024 }),
    );
    await waitFor('every byte', () => reads.reduce((n, r) => n + r.length, 0) === mib * 1024 * 1024, {
      timeoutMs: 60_000,
    });
    expect(reads.every((r) => r.every((b) => b === 0x61))).toBe(true);
    expect(source.counters.coalescedWindows).toBeGreaterThan(0);
    // A 100 ms window at about 20 MiB/s would gather 2 MiB (read in 1 MiB bites); the
    // windows shorten to what gathers about WINDOW_BYTES. (A read can still be larger
    // when this process is not scheduled for a while: the median is what is checked.)
    const gatheredReads = reads.map((r) => r.length).filter((n) => n >= 16 * 1024);
    gatheredReads.sort((a, b) => a - b);
    expect(gatheredReads.length).toBeGreaterThan(10);
    expect(gatheredReads[Math.floor(gatheredReads.length / 2)]).toBeLessThanOrEqual(2 * WINDOW_BYTES);
  });
});
