/**
 * `GET /v1/guests/{id}/log` and `consolectl logs` on a real daemon: start, limit,
 * tail, lines, boot selectors across file boundaries, the offset headers (clamped to
 * the oldest byte kept after rotation), and follow. Every body is checked byte for
 * byte against what the peer sent (and the markers consoled wrote between).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  closeAllPeers,
  type DaemonHandle,
  readLog,
  readWholeLog,
  runConsolectl,
  SocketPeer,
  startDaemon,
  stopAllDaemons,
} from '../support/daemon.js';
import { removeTmpDirs } from '../support/tmp.js';
import { waitFor } from '../support/wait.js';

const FRAMED_MARKER = /(\r\n\[consoled\] [^\r\n]*\r\n)/;
const NO_LIMIT = { bytesPerSec: 0, burstBytes: 1 };

/** `count` lines of about 64 bytes, tagged so that each boot's text is recognisable. */
function text(tag: string, count: number): Buffer {
  let s = '';
  for (let i = 0; i < count; i++) s += `${tag} line ${String(i).padStart(5, '0')} ${'.'.repeat(40)}\r\n`;
  return Buffer.from(s, 'latin1');
}

/** The offset where the last `n` lines of `buf` start (a final newline ends the last line). */
function lastLinesAt(buf: Buffer, n: number): number {
  let pos = buf.length;
  if (buf[pos - 1] === 0x0a) pos--;
  for (let seen = 0; pos > 0; pos--) {
    if (buf[pos - 1] === 0x0a && ++seen === n) return pos;
  }
  return 0;
}

async function statusOf(
  d: DaemonHandle,
  id: string,
): Promise<{ offset: number; flushedOffset: number; oldestOffset: number; boot: number }> {
  return d.json('GET', `/v1/guests/${id}`);
}

/** Waits until everything consoled captured for `id` is readable and ends with (the last 2 KiB of) `sent`. */
async function settled(d: DaemonHandle, id: string, sent: Buffer): Promise<void> {
  const tail = sent.subarray(Math.max(0, sent.length - 2048));
  await waitFor(`the log of ${id} to end with what was sent`, async () => {
    const s = await statusOf(d, id);
    if (s.flushedOffset !== s.offset) return false;
    const { bytes } = await readLog(d, id, { tail: tail.length });
    return bytes.equals(tail);
  });
}

let d: DaemonHandle;
let peer: SocketPeer;
let rotPeer: SocketPeer;
const A = text('boot-1', 640); // ~42 KiB
const B = text('boot-2', 480); // ~31 KiB
// The third boot ends with bytes that are not text: they must come back unchanged.
const C = Buffer.concat([
  text('boot-3', 800),
  Buffer.from('binary \x00\x01\xff\xfe\x1b[0m end\r\n', 'latin1'),
  Buffer.from('last line\r\n'),
]);
/** The whole log of guest `big` as read once everything settled; oldest is 0. */
let full: Buffer;
let bootAt: number[];

beforeAll(async () => {
  d = await startDaemon();
  peer = await SocketPeer.listen();
  rotPeer = await SocketPeer.listen();
  // 16 KiB files, 10 kept: the whole history of `big` stays, boots straddle files.
  await d.json('PUT', '/v1/guests/big', {
    source: { type: 'tcp', host: '127.0.0.1', port: peer.port },
    rotation: { maxFileBytes: 16384, maxFiles: 10 },
    rateLimit: NO_LIMIT,
  });
  await peer.waitForConnections(1);
  peer.send(A);
  await settled(d, 'big', A);
  await peer.close(); // QEMU exits ...
  await waitFor(
    'big to go to backoff',
    async () => (await d.json<{ state: string }>('GET', '/v1/guests/big')).state === 'backoff',
  );
  await peer.open(); // ... and a new one starts: boot 2
  await peer.waitForConnections(2);
  await waitFor('boot 2', async () => (await statusOf(d, 'big')).boot === 2);
  peer.send(B);
  await settled(d, 'big', B);
  const boot3 = await d.json<{ boot: number; offset: number }>(
    'POST',
    '/v1/guests/big/boots',
    undefined,
    201,
  );
  expect(boot3.boot).toBe(3);
  peer.send(C);
  await settled(d, 'big', C);

  full = (await readWholeLog(d, 'big')).bytes;
  const parts = full.toString('latin1').split(FRAMED_MARKER);
  expect(parts.length).toBe(7);
  expect(parts[0]).toBe('');
  expect(parts[1]).toMatch(/^\r\n\[consoled\] boot 1 started at /);
  expect(parts[3]).toMatch(/^\r\n\[consoled\] boot 2 started at /);
  expect(parts[5]).toMatch(/^\r\n\[consoled\] boot 3 started at /);
  expect(Buffer.from(parts[2]!, 'latin1').equals(A)).toBe(true);
  expect(Buffer.from(parts[4]!, 'latin1').equals(B)).toBe(true);
  expect(Buffer.from(parts[6]!, 'latin1').equals(C)).toBe(true);
  bootAt = [0, parts[1]!.length + A.length, parts[1]!.length + A.length + parts[3]!.length + B.length];
  expect(boot3.offset).toBe(bootAt[2]);
  expect(full.length).toBeGreaterThan(102_400);

  // `rot`: 4 KiB files, 3 kept: boot 1 rotates away entirely.
  await d.json('PUT', '/v1/guests/rot', {
    source: { type: 'tcp', host: '127.0.0.1', port: rotPeer.port },
    rotation: { maxFileBytes: 4096, maxFiles: 3 },
    rateLimit: NO_LIMIT,
  });
  await rotPeer.waitForConnections(1);
  rotPeer.send(text('rot-1', 40));
  await settled(d, 'rot', text('rot-1', 40));
  await d.json('POST', '/v1/guests/rot/boots', undefined, 201);
  rotPeer.send(text('rot-2', 400));
  await settled(d, 'rot', text('rot-2', 400));
});

afterAll(async () => {
  await stopAllDaemons();
  await closeAllPeers();
  await removeTmpDirs();
});

describe('log ranges', () => {
  it('start and limit serve exactly [start, start+limit) with matching headers', async () => {
    const r = await readLog(d, 'big', { start: 1000, limit: 500 });
    expect(r.bytes.equals(full.subarray(1000, 1500))).toBe(true);
    expect([r.start, r.next]).toEqual([1000, 1500]);
    // Across a file boundary (16384) and a boot boundary.
    const s = await readLog(d, 'big', { start: 16_000, limit: 1000 });
    expect(s.bytes.equals(full.subarray(16_000, 17_000))).toBe(true);
    const t = await readLog(d, 'big', { start: bootAt[1]! - 50, limit: 200 });
    expect(t.bytes.equals(full.subarray(bootAt[1]! - 50, bootAt[1]! + 150))).toBe(true);
    expect(t.bytes.toString('latin1')).toContain('[consoled] boot 2 started');
  });

  it('a negative start serves the last |start| bytes; a start past the end serves nothing', async () => {
    const r = await readLog(d, 'big', { start: -300 });
    expect(r.bytes.equals(full.subarray(full.length - 300))).toBe(true);
    expect([r.start, r.next]).toEqual([full.length - 300, full.length]);
    const past = await readLog(d, 'big', { start: full.length + 50 });
    expect(past.bytes.length).toBe(0);
    expect([past.start, past.next]).toEqual([full.length, full.length]);
    const everything = await readLog(d, 'big', { start: -10_000_000 });
    expect(everything.bytes.equals(full)).toBe(true);
    expect(everything.start).toBe(0);
  });

  it('tail defaults to 102400 bytes (nova MAX_CONSOLE_BYTES) and can be set', async () => {
    const def = await readLog(d, 'big');
    expect(def.bytes.length).toBe(102_400);
    expect(def.bytes.equals(full.subarray(full.length - 102_400))).toBe(true);
    expect([def.start, def.next]).toEqual([full.length - 102_400, full.length]);
    const t = await readLog(d, 'big', { tail: 5000 });
    expect(t.bytes.equals(full.subarray(full.length - 5000))).toBe(true);
    const zero = await readLog(d, 'big', { tail: 0 });
    expect(zero.bytes.length).toBe(0);
    expect(zero.start).toBe(full.length);
    const more = await readLog(d, 'big', { tail: 10_000_000 });
    expect(more.bytes.equals(full)).toBe(true);
  });

  it('lines serves the last N whole lines', async () => {
    for (const n of [1, 2, 5, 700]) {
      const r = await readLog(d, 'big', { lines: n });
      const at = lastLinesAt(full, n);
      expect(r.bytes.equals(full.subarray(at)), `lines=${n}`).toBe(true);
      expect(r.start).toBe(at);
    }
    const two = await readLog(d, 'big', { lines: 2 });
    expect(two.bytes.toString('latin1')).toBe('binary \x00\x01\xff\xfe\x1b[0m end\r\nlast line\r\n');
    expect((await readLog(d, 'big', { lines: 0 })).bytes.length).toBe(0);
    // More lines than the log holds: all of it.
    expect((await readLog(d, 'big', { lines: 1_000_000 })).bytes.equals(full)).toBe(true);
  });
});

describe('boots', () => {
  it('boot=N, current and previous cover one boot each, marker included', async () => {
    const b1 = await readLog(d, 'big', { boot: 1, start: 0 });
    expect(b1.bytes.equals(full.subarray(0, bootAt[1]))).toBe(true);
    expect([b1.start, b1.next]).toEqual([0, bootAt[1]]);
    expect(b1.bytes.toString('latin1')).toMatch(
      /^\r\n\[consoled\] boot 1 started at [^\r\n]*\r\nboot-1 line 00000/,
    );

    const prev = await readLog(d, 'big', { boot: 'previous' });
    expect(prev.bytes.equals(full.subarray(bootAt[1], bootAt[2]))).toBe(true);
    expect([prev.start, prev.next]).toEqual([bootAt[1], bootAt[2]]);
    expect(prev.bytes.subarray(prev.bytes.length - B.length).equals(B)).toBe(true);

    const cur = await readLog(d, 'big', { boot: 'current' });
    expect(cur.bytes.equals(full.subarray(bootAt[2]))).toBe(true);
    expect(cur.bytes.toString('latin1')).toMatch(/^\r\n\[consoled\] boot 3 started at /);
    expect((await readLog(d, 'big', { boot: 3 })).bytes.equals(cur.bytes)).toBe(true);

    const all = await readLog(d, 'big', { boot: 'all', start: 0 });
    expect(all.bytes.equals(full)).toBe(true);
  });

  it('start, tail and lines apply within the chosen boot', async () => {
    const start = await readLog(d, 'big', { boot: 2, start: 0 });
    expect(start.start).toBe(bootAt[1]);
    const neg = await readLog(d, 'big', { boot: 2, start: -100 });
    expect(neg.bytes.equals(full.subarray(bootAt[2]! - 100, bootAt[2]))).toBe(true);
    const lines = await readLog(d, 'big', { boot: 'previous', lines: 3 });
    expect(lines.bytes.equals(B.subarray(lastLinesAt(B, 3)))).toBe(true);
    const limited = await readLog(d, 'big', { boot: 1, start: 10, limit: 20 });
    expect(limited.bytes.equals(full.subarray(10, 30))).toBe(true);
    // A limit never runs past the boot's end.
    const edge = await readLog(d, 'big', { boot: 1, start: bootAt[1]! - 5, limit: 100 });
    expect([edge.start, edge.next]).toEqual([bootAt[1]! - 5, bootAt[1]]);
  });

  it('a boot that does not exist is RANGE_NOT_AVAILABLE', async () => {
    const res = await d.api('GET', '/v1/guests/big/log?boot=9');
    expect(res.status).toBe(416);
    expect(((await res.json()) as { error: { code: string } }).error.code).toBe('RANGE_NOT_AVAILABLE');
  });
});

describe('after rotation', () => {
  it('clamps X-Consoled-Start to the oldest byte kept, and the bytes are the newest ones sent', async () => {
    const s = await statusOf(d, 'rot');
    expect(s.oldestOffset).toBeGreaterThan(0);
    const sent = text('rot-2', 400);
    for (const query of [
      { start: 0 },
      { start: 5 },
      { start: -10_000_000 },
      { tail: 10_000_000 },
      { boot: 'current', start: 0 },
    ] as const) {
      const r = await readLog(d, 'rot', query);
      expect([r.start, r.next], JSON.stringify(query)).toEqual([s.oldestOffset, s.flushedOffset]);
      expect(r.bytes.length).toBe(s.flushedOffset - s.oldestOffset);
      expect(r.bytes.length).toBeLessThanOrEqual(3 * 4096);
      expect(r.bytes.equals(sent.subarray(sent.length - r.bytes.length)), JSON.stringify(query)).toBe(true);
    }
    // The next read continues exactly where the last one ended.
    const again = await readLog(d, 'rot', { start: s.flushedOffset });
    expect([again.start, again.next, again.bytes.length]).toEqual([s.flushedOffset, s.flushedOffset, 0]);
  });

  it('boots that rotated away are RANGE_NOT_AVAILABLE', async () => {
    for (const boot of ['1', 'previous']) {
      const res = await d.api('GET', `/v1/guests/rot/log?boot=${boot}`);
      expect(res.status, boot).toBe(416);
      expect(((await res.json()) as { error: { code: string } }).error.code).toBe('RANGE_NOT_AVAILABLE');
    }
  });
});

describe('follow', () => {
  it('streams new bytes as they arrive, boot markers included, until the reader goes away', async () => {
    const from = (await statusOf(d, 'big')).flushedOffset;
    const abort = new AbortController();
    const res = await d.api('GET', `/v1/guests/big/log?follow=1&start=${from}`, undefined, {
      signal: abort.signal,
    });
    expect(res.status).toBe(200);
    expect(res.headers.get('x-consoled-start')).toBe(String(from));
    const reader = res.body!.getReader();
    const got: Buffer[] = [];
    const readUntil = async (needle: string) => {
      while (!Buffer.concat(got).includes(needle)) {
        const { value, done } = await reader.read();
        if (done) throw new Error('follow ended early');
        got.push(Buffer.from(value));
      }
    };
    peer.send('follow chunk 1\r\n');
    await readUntil('follow chunk 1\r\n');
    peer.send(Buffer.from('follow chunk 2 \x00\xff\r\n', 'latin1'));
    await readUntil('follow chunk 2');
    await d.json('POST', '/v1/guests/big/boots', undefined, 201);
    peer.send('follow chunk 3\r\n');
    await readUntil('follow chunk 3\r\n');
    abort.abort();
    await reader.cancel().catch(() => undefined);

    const streamed = Buffer.concat(got);
    const now = await readLog(d, 'big', { start: from });
    expect(streamed.equals(now.bytes)).toBe(true);
    expect(streamed.toString('latin1')).toMatch(
      /^follow chunk 1\r\nfollow chunk 2 \x00\xff\r\n\r\n\[consoled\] boot 4 started at [^\r\n]*\r\nfollow chunk 3\r\n$/,
    );
    // The daemon keeps serving after the follower went away.
    expect((await fetch(`${d.url}/healthz`)).status).toBe(200);
  });
});

describe('consolectl logs', () => {
  it('--lines N and --previous print the raw bytes the API serves', async () => {
    const lines = await runConsolectl(d, ['logs', 'big', '--lines', '4']);
    expect(lines.code, lines.stderr).toBe(0);
    expect(lines.stdout.equals((await readLog(d, 'big', { lines: 4 })).bytes)).toBe(true);
    expect(lines.stdout.length).toBeGreaterThan(0);

    const prev = await runConsolectl(d, ['logs', 'big', '--previous']);
    expect(prev.code, prev.stderr).toBe(0);
    const api = await readLog(d, 'big', { boot: 'previous' });
    expect(prev.stdout.equals(api.bytes)).toBe(true);
    // After the follow test's boot, the previous boot is boot 3: it holds the binary bytes.
    expect(prev.stdout.includes(Buffer.from('\x00\x01\xff\xfe', 'latin1'))).toBe(true);

    const start = await runConsolectl(d, ['logs', 'big', '--start', '100', '--limit', '50']);
    expect(start.stdout.equals(full.subarray(100, 150))).toBe(true);
  });

  it('-f prints bytes as they arrive', async () => {
    const from = (await statusOf(d, 'big')).flushedOffset;
    const want = Buffer.from('typed while following \x00\xfe\r\n', 'latin1');
    const running = runConsolectl(d, ['logs', 'big', '--start', String(from), '-f'], {
      untilStdoutBytes: want.length,
    });
    peer.send(want);
    const result = await running;
    expect(result.stdout.equals(want)).toBe(true);
  });

  it('fails with the server error code for a guest with no log', async () => {
    const res = await runConsolectl(d, ['logs', 'no-such-guest']);
    expect(res.code).toBe(1);
    expect(res.stderr).toContain('GUEST_NOT_FOUND');
  });
});
