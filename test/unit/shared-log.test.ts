/**
 * The fenced, exactly-once shared stream (store/replication/shared-log.ts, docs/design.md
 * "Redis schema") against a real redis-server: claims and epochs, appends and their
 * dedup, segment ends, handoffs, release, purge, range reads and markers. About 570
 * lines on purpose: one Redis serves every case, in the order of the class's methods.
 */
import type { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ConsoledError } from '../../common/errors.js';
import { guestKeys } from '../../store/replication/redis-keys.js';
import { type RangeRead, SharedLog } from '../../store/replication/shared-log.js';
import { prng } from '../support/prng.js';
import { type RedisHandle, startRedis, stopAllRedis } from '../support/redis-server.js';
import { waitFor } from '../support/wait.js';

let server: RedisHandle;
let client: Redis;
let shared: SharedLog;
let guestNumber = 0;

beforeAll(async () => {
  server = await startRedis();
  client = server.client();
  shared = new SharedLog(client, { followBlockMs: 200 });
});
afterAll(stopAllRedis);

/** A fresh guest per test, so tests do not see each other's streams. */
/** A new guest whose stream `h1` owns at epoch 1 (appends need a claim first). */
async function newGuest(): Promise<string> {
  guestNumber++;
  const guest = `guest-${guestNumber}`;
  await shared.claim(guest, { host: 'h1', expectedEpoch: 0, requireUnowned: true });
  return guest;
}

/** Deterministic, non-text bytes: byte at offset i of the log. */
function byteAt(offset: number): number {
  return (offset * 131 + 7) % 256;
}

function logBytes(start: number, end: number): Buffer {
  const out = Buffer.alloc(end - start);
  for (let i = start; i < end; i++) out[i - start] = byteAt(i);
  return out;
}

interface Writer {
  next: number;
  write(bytes: Buffer, options?: { boot?: number; retentionBytes?: number }): Promise<number>;
}

/** Appends segments back to back as owner `h1`, epoch 1. */
function writer(guest: string, start = 0): Writer {
  const w: Writer = {
    next: start,
    async write(bytes, options = {}) {
      const reply = await shared.append(
        guest,
        { epoch: 1, host: 'h1', offset: w.next, bytes, boot: options.boot ?? 1, timestampMs: Date.now() },
        options.retentionBytes ?? 0,
      );
      expect(reply.status).toBe('appended');
      w.next = reply.next;
      return reply.next;
    },
  };
  return w;
}

/**
 * Appends `sizes.length` segments of the deterministic log bytes, all sent at once:
 * one connection keeps them in order, so each continues where the previous ended.
 */
async function appendSizes(guest: string, sizes: number[], retentionBytes = 0): Promise<number> {
  let offset = 0;
  const replies = sizes.map((size) => {
    const bytes = logBytes(offset, offset + size);
    const reply = shared.append(
      guest,
      { epoch: 1, host: 'h1', offset, bytes, boot: 1, timestampMs: 1 },
      retentionBytes,
    );
    offset += size;
    return reply;
  });
  for (const reply of await Promise.all(replies)) expect(reply.status).toBe('appended');
  return offset;
}

async function errorOf(promise: Promise<unknown>): Promise<ConsoledError> {
  try {
    await promise;
  } catch (err) {
    if (err instanceof ConsoledError) return err;
    throw err;
  }
  throw new Error('expected a ConsoledError');
}

async function commandCalls(): Promise<Record<string, number>> {
  const info = await client.info('commandstats');
  const calls: Record<string, number> = {};
  for (const match of info.matchAll(/^cmdstat_([a-z|]+):calls=(\d+)/gm)) calls[match[1]!] = Number(match[2]);
  return calls;
}

describe('append', () => {
  it('appends in order with IDs derived from offsets and the documented fields', async () => {
    const guest = await newGuest();
    const w = writer(guest);
    expect(await w.write(Buffer.from('hello'))).toBe(5);
    expect(await w.write(Buffer.from(' world'))).toBe(11);
    expect(await w.write(Buffer.from('!'), { boot: 2 })).toBe(12);

    const { log } = guestKeys('consoled:', guest);
    const entries = await client.xrangeBuffer(log, '-', '+');
    expect(entries.map(([id]) => id.toString())).toEqual(['0-1', '5-1', '11-1']);
    const [, fields] = entries[1]!;
    const byName = new Map<string, string>();
    for (let i = 0; i < fields.length; i += 2) byName.set(fields[i]!.toString(), fields[i + 1]!.toString());
    expect(byName.get('d')).toBe(' world');
    expect(byName.get('h')).toBe('h1');
    expect(byName.get('b')).toBe('1');
    expect(byName.get('o')).toBe('5');
    expect(Number(byName.get('t'))).toBeGreaterThan(1_600_000_000_000);

    const owner = await shared.owner(guest);
    expect(owner).toMatchObject({
      epoch: 1,
      host: 'h1',
      next: 12,
      boot: 2,
      handoff: 'none',
      skippedBytes: 0,
      oldestOffset: 0,
      streamEnd: 12,
      entries: 3,
    });
    expect(await shared.lastOffset(guest)).toBe(12);
  });

  it('detects a re-send and refuses a partial overlap, leaving the stream as it was', async () => {
    const guest = await newGuest();
    const w = writer(guest);
    await w.write(Buffer.from('aaaaa'));
    await w.write(Buffer.from('bbbbb'));
    const resend = await shared.append(
      guest,
      { epoch: 1, host: 'h1', offset: 0, bytes: Buffer.from('aaaaa'), boot: 1, timestampMs: 1 },
      0,
    );
    expect(resend).toEqual({ status: 'duplicate', next: 10 });
    const inner = await shared.append(
      guest,
      { epoch: 1, host: 'h1', offset: 3, bytes: Buffer.from('aabb'), boot: 1, timestampMs: 1 },
      0,
    );
    expect(inner).toEqual({ status: 'duplicate', next: 10 });

    const overlap = await errorOf(
      shared.append(
        guest,
        { epoch: 1, host: 'h1', offset: 8, bytes: Buffer.from('bbcc'), boot: 1, timestampMs: 1 },
        0,
      ),
    );
    expect(overlap.code).toBe('OFFSET_MISMATCH');
    expect(overlap.details).toMatchObject({ next: 10, reason: 'overlap' });

    const read = await shared.readRange(guest, 0);
    expect(read.bytes.toString()).toBe('aaaaabbbbb');
    expect((await shared.owner(guest)).entries).toBe(2);
  });

  it('refuses a gap unless the skip is allowed, and then counts it', async () => {
    const guest = await newGuest();
    const w = writer(guest);
    await w.write(Buffer.from('0123456789'));
    const gap = await errorOf(
      shared.append(
        guest,
        { epoch: 1, host: 'h1', offset: 15, bytes: Buffer.from('xx'), boot: 1, timestampMs: 1 },
        0,
      ),
    );
    expect(gap.code).toBe('OFFSET_MISMATCH');
    expect(gap.details).toMatchObject({ next: 10, reason: 'gap' });
    expect((await shared.owner(guest)).entries).toBe(1);

    const skipped = await shared.append(
      guest,
      { epoch: 1, host: 'h1', offset: 15, bytes: Buffer.from('fghij'), boot: 1, timestampMs: 1 },
      0,
      { allowSkip: true },
    );
    expect(skipped).toEqual({ status: 'appended', next: 20, skippedBytes: 5 });
    expect((await shared.owner(guest)).skippedBytes).toBe(5);

    // A read stops before the skipped span; the next read shows the jump in `start`.
    const first = await shared.readRange(guest, 0);
    expect(first).toMatchObject({ start: 0, next: 10 });
    expect(first.bytes.toString()).toBe('0123456789');
    const second = await shared.readRange(guest, first.next);
    expect(second).toMatchObject({ start: 15, next: 20 });
    expect(second.bytes.toString()).toBe('fghij');
    // tail stops at the span too: only bytes after it.
    const tail = await shared.tail(guest, 100);
    expect(tail).toMatchObject({ start: 15, next: 20 });
  });

  it('refuses bad arguments with stable codes before calling Redis', async () => {
    const guest = await newGuest();
    const base = { epoch: 1, host: 'h1', offset: 0, bytes: Buffer.from('x'), boot: 1, timestampMs: 1 };
    expect((await errorOf(shared.append('bad id', base, 0))).code).toBe('BAD_GUEST_ID');
    expect((await errorOf(shared.append(guest, { ...base, epoch: 0 }, 0))).code).toBe('BAD_PARAMETER');
    expect((await errorOf(shared.append(guest, { ...base, offset: -1 }, 0))).code).toBe('BAD_PARAMETER');
    expect((await errorOf(shared.append(guest, { ...base, bytes: Buffer.alloc(0) }, 0))).code).toBe(
      'INTERNAL',
    );
    expect(await shared.lastOffset(guest)).toBeNull();
  });
});

describe('bytes are bytes', () => {
  it('round-trips NUL, 0xff and invalid UTF-8 through append, readRange, tail, lines and follow', async () => {
    const guest = await newGuest();
    const all = Buffer.alloc(256);
    for (let i = 0; i < 256; i++) all[i] = i;
    const nasty = Buffer.concat([
      Buffer.from([0x00, 0x00, 0xff, 0xfe, 0xc3, 0x28, 0xe2, 0x82, 0x0a, 0xf0, 0x9f, 0x98]),
      all,
      Buffer.from('\x1b[31mred\x1b[0m\r\n', 'latin1'),
      Buffer.from([0xed, 0xa0, 0x80, 0x00]),
    ]);
    const w = writer(guest);
    await w.write(nasty.subarray(0, 100));
    await w.write(nasty.subarray(100));

    expect((await shared.readRange(guest, 0)).bytes.equals(nasty)).toBe(true);
    expect((await shared.readRange(guest, 1, 99)).bytes.equals(nasty.subarray(1, 99))).toBe(true);
    expect((await shared.tail(guest, 150)).bytes.equals(nasty.subarray(nasty.length - 150))).toBe(true);
    const lines = await shared.lines(guest, 1);
    expect(lines.bytes.equals(nasty.subarray(lines.start))).toBe(true);

    const abort = new AbortController();
    const received: Buffer[] = [];
    for await (const chunk of shared.follow(guest, 0, abort.signal)) {
      received.push(chunk.bytes);
      if (chunk.next === nasty.length) abort.abort();
    }
    expect(Buffer.concat(received).equals(nasty)).toBe(true);
  });
});

describe('readRange', () => {
  it('returns exactly the asked bytes across many entries, whatever the boundaries', async () => {
    const guest = await newGuest();
    const sizes = Array.from({ length: 300 }, (_, i) => 1 + ((i * 37) % 97));
    const end = await appendSizes(guest, sizes);
    const cases: [number, number, number][] = [
      [0, end, Number.POSITIVE_INFINITY],
      [0, 1, 10],
      [17, 5000, 100],
      [123, 124, 1],
      [end - 3, end, 100],
      [5000, 9000, 2500],
      [2, end, 64 * 1024],
    ];
    for (const [start, stop, limit] of cases) {
      const read = await shared.readRange(guest, start, stop, limit);
      const expectedEnd = Math.min(stop, start + limit, end);
      expect(read.start, `start ${start}`).toBe(start);
      expect(read.next, `start ${start}`).toBe(expectedEnd);
      expect(read.bytes.equals(logBytes(start, expectedEnd)), `bytes ${start}..${expectedEnd}`).toBe(true);
    }
    // At or past the end: nothing, and next stays where asked.
    expect(await shared.readRange(guest, end)).toEqual({ start: end, next: end, bytes: Buffer.alloc(0) });
    expect(await shared.readRange(guest, end + 50)).toEqual({
      start: end + 50,
      next: end + 50,
      bytes: Buffer.alloc(0),
    });
  });

  it('costs what it returns: a small read in a long stream is two Redis calls', async () => {
    const guest = await newGuest();
    const end = await appendSizes(
      guest,
      Array.from({ length: 2000 }, () => 10),
    );
    await client.config('RESETSTAT');
    const read = await shared.readRange(guest, 12_345, 12_365);
    expect(read.bytes.equals(logBytes(12_345, 12_365))).toBe(true);
    const calls = await commandCalls();
    expect((calls['xrevrange'] ?? 0) + (calls['xrange'] ?? 0)).toBeLessThanOrEqual(2);

    await client.config('RESETSTAT');
    const tail = await shared.tail(guest, 25);
    expect(tail).toMatchObject({ start: end - 25, next: end });
    const after = await commandCalls();
    expect(after['xrevrange'] ?? 0).toBeLessThanOrEqual(2);
  });

  it('clamps to the oldest byte kept after trimming, keeping the entry that holds the cut', async () => {
    const guest = await newGuest();
    const end = await appendSizes(
      guest,
      Array.from({ length: 100 }, () => 70),
      1000,
    );
    expect(end).toBe(7000);
    // cut = 7000 - 1000 = 6000, held by the entry [5950, 6020): it and all newer stay.
    const owner = await shared.owner(guest);
    expect(owner.oldestOffset).toBe(5950);
    expect(owner.entries).toBe(15);
    expect(owner.next).toBe(7000);

    const read = await shared.readRange(guest, 0, undefined, 100);
    expect(read.start).toBe(5950);
    expect(read.next).toBe(6050);
    expect(read.bytes.equals(logBytes(5950, 6050))).toBe(true);
    // A start inside the oldest entry is served from there, not clamped.
    const inside = await shared.readRange(guest, 6000, 6010);
    expect(inside).toMatchObject({ start: 6000, next: 6010 });
    // A range wholly before the oldest byte: nothing, start shows where history begins.
    const gone = await shared.readRange(guest, 0, 100);
    expect(gone).toEqual({ start: 5950, next: 5950, bytes: Buffer.alloc(0) });
    // tail longer than what is kept returns what is kept.
    const tail = await shared.tail(guest, 5000);
    expect(tail.start).toBe(5950);
    expect(tail.bytes.equals(logBytes(5950, 7000))).toBe(true);
  });

  for (const seed of [1, 2, 3]) {
    it(`trims only when the cut crosses a sixteenth of the retention, to the entry holding it (seed ${seed})`, async () => {
      // Generated appends against a model of scripts/append-5.lua's rule: a trim is due
      // when an append moves the cut (next - retention) across a multiple of the slack
      // (retention / 16); it keeps the entry holding the cut and all newer ones.
      const random = prng(seed);
      const retention = 1600 + Math.floor(random() * 14_400);
      const slack = Math.floor(retention / 16);
      const guest = await newGuest();
      const w = writer(guest);
      const starts: number[] = [];
      let modelOldest = 0;
      let trims = 0;
      let appends = 0;
      let largest = 0;
      while (w.next < retention * 6) {
        // Mostly small segments (many appends per slack), now and then one over the slack.
        const size = 1 + Math.floor(random() * (random() < 0.9 ? slack / 4 : slack * 2));
        largest = Math.max(largest, size);
        const before = w.next;
        starts.push(before);
        await w.write(logBytes(before, before + size), { retentionBytes: retention });
        appends++;
        const cut = w.next - retention;
        if (cut > 0 && Math.floor(cut / slack) > Math.floor((before - retention) / slack)) {
          const holding = starts.filter((start) => start <= cut).at(-1)!;
          if (holding > modelOldest) trims++;
          modelOldest = Math.max(modelOldest, holding);
        }
        const owner = await shared.owner(guest);
        expect(owner.oldestOffset, `after the append at ${before}`).toBe(modelOldest);
        // At least the retention is kept, and at most the retention, the slack and one entry.
        const kept = w.next - modelOldest;
        expect(kept).toBeGreaterThanOrEqual(Math.min(w.next, retention));
        expect(kept).toBeLessThan(retention + slack + largest);
      }
      // The rule trimmed, and far less often than once per append.
      expect(trims).toBeGreaterThan(3);
      expect(trims).toBeLessThan(appends / 3);
      const read = await shared.readRange(guest, modelOldest, w.next);
      expect(read.bytes.equals(logBytes(modelOldest, w.next))).toBe(true);
    });
  }
});

describe('tail and lines', () => {
  it('tail returns the last n bytes, across entries', async () => {
    const guest = await newGuest();
    const end = await appendSizes(guest, [5, 50, 3, 200, 1, 1, 40]);
    for (const n of [0, 1, 40, 41, 45, 299, 300, 1000]) {
      const read = await shared.tail(guest, n);
      const start = Math.max(0, end - n);
      expect(read, `tail ${n}`).toMatchObject({ start, next: end });
      expect(read.bytes.equals(logBytes(start, end)), `tail ${n}`).toBe(true);
    }
    expect(await shared.tail(await newGuest(), 10)).toEqual({ start: 0, next: 0, bytes: Buffer.alloc(0) });
  });

  it('lines returns the last n lines, a final newline not starting an empty one', async () => {
    const guest = await newGuest();
    const w = writer(guest);
    const text = 'boot\r\nline one\r\nline two is lo';
    await w.write(Buffer.from(text.slice(0, 10)));
    await w.write(Buffer.from(text.slice(10, 12)));
    await w.write(Buffer.from(text.slice(12)));
    await w.write(Buffer.from('nger\r\nlast\r\n'));
    const full = `${text}nger\r\nlast\r\n`;
    const lines = async (n: number, maxBytes?: number): Promise<string> =>
      (await shared.lines(guest, n, maxBytes)).bytes.toString();
    expect(await lines(1)).toBe('last\r\n');
    expect(await lines(2)).toBe('line two is longer\r\nlast\r\n');
    expect(await lines(3)).toBe('line one\r\nline two is longer\r\nlast\r\n');
    expect(await lines(4)).toBe(full);
    expect(await lines(50)).toBe(full);
    expect(await lines(0)).toBe('');
    expect(await lines(3, 10)).toBe(full.slice(-10));

    await w.write(Buffer.from('partial'));
    expect(await lines(1)).toBe('partial');
    expect(await lines(2)).toBe('last\r\npartial');
    const read = await shared.lines(guest, 2);
    expect(read.next).toBe(full.length + 'partial'.length);
    expect(read.start).toBe(read.next - 'last\r\npartial'.length);
  });

  it('lines reads backwards in batches: a few lines of a long log cost a few calls', async () => {
    const guest = await newGuest();
    let offset = 0;
    await Promise.all(
      Array.from({ length: 1000 }, (_, i) => {
        const bytes = Buffer.from(`line ${i}\n`);
        offset += bytes.length;
        return shared.append(
          guest,
          { epoch: 1, host: 'h1', offset: offset - bytes.length, bytes, boot: 1, timestampMs: 1 },
          0,
        );
      }),
    );
    await client.config('RESETSTAT');
    expect((await shared.lines(guest, 3)).bytes.toString()).toBe('line 997\nline 998\nline 999\n');
    expect((await commandCalls())['xrevrange'] ?? 0).toBeLessThanOrEqual(2);
  });
});

describe('boots', () => {
  it('records boot starts and returns [start, end) ranges', async () => {
    const guest = await newGuest();
    const w = writer(guest);
    await w.write(logBytes(0, 10), { boot: 1 });
    await w.write(logBytes(10, 30), { boot: 1 });
    await w.write(logBytes(30, 45), { boot: 2 });
    await w.write(logBytes(45, 50), { boot: 2 });
    await w.write(logBytes(50, 65), { boot: 3 });

    expect(await shared.bootRange(guest, 'current')).toEqual({ boot: 3, start: 50, end: 65 });
    expect(await shared.bootRange(guest, 'previous')).toEqual({ boot: 2, start: 30, end: 50 });
    expect(await shared.bootRange(guest, 1)).toEqual({ boot: 1, start: 0, end: 30 });
    expect(await shared.bootRange(guest, 3)).toEqual({ boot: 3, start: 50, end: 65 });
    expect((await errorOf(shared.bootRange(guest, 7))).code).toBe('RANGE_NOT_AVAILABLE');
    expect((await errorOf(shared.bootRange(await newGuest(), 'current'))).code).toBe('RANGE_NOT_AVAILABLE');

    const boot2 = await shared.bootRange(guest, 2);
    const read = await shared.readRange(guest, boot2.start, boot2.end);
    expect(read.bytes.equals(logBytes(30, 50))).toBe(true);

    await w.write(logBytes(65, 70), { boot: 3 });
    expect(await shared.bootRange(guest, 'current')).toEqual({ boot: 3, start: 50, end: 70 });
  });

  it('drops boots that ended before the oldest byte kept, keeping the one holding it', async () => {
    const guest = await newGuest();
    const w = writer(guest);
    for (let boot = 1; boot <= 10; boot++) {
      await w.write(logBytes(w.next, w.next + 100), { boot, retentionBytes: 250 });
    }
    // next = 1000, cut = 750 held by [700, 800) of boot 8.
    expect((await shared.owner(guest)).oldestOffset).toBe(700);
    expect((await errorOf(shared.bootRange(guest, 7))).code).toBe('RANGE_NOT_AVAILABLE');
    expect(await shared.bootRange(guest, 8)).toEqual({ boot: 8, start: 700, end: 800 });
    const { boots } = guestKeys('consoled:', guest);
    expect(await client.zcard(boots)).toBe(3);
  });
});

describe('follow', () => {
  it('catches up, then receives new appends as they come, until aborted', async () => {
    const guest = await newGuest();
    const w = writer(guest);
    await w.write(logBytes(0, 100));
    const clientsBefore = String(await client.client('LIST'))
      .split('\n')
      .filter(Boolean).length;

    const abort = new AbortController();
    const chunks: RangeRead[] = [];
    const done = (async () => {
      for await (const chunk of shared.follow(guest, 40, abort.signal)) {
        chunks.push(chunk);
        if (chunk.next >= 400) abort.abort();
      }
    })();
    for (let i = 0; i < 3; i++) {
      await new Promise((resolve) => setTimeout(resolve, 30));
      await w.write(logBytes(w.next, w.next + 100));
    }
    await done;
    expect(chunks[0]!.start).toBe(40);
    for (let i = 1; i < chunks.length; i++) expect(chunks[i]!.start).toBe(chunks[i - 1]!.next);
    expect(Buffer.concat(chunks.map((c) => c.bytes)).equals(logBytes(40, 400))).toBe(true);

    // The dedicated blocking connection is closed once the iterator ends.
    await waitFor(
      'the blocking connection to close',
      async () =>
        String(await client.client('LIST'))
          .split('\n')
          .filter(Boolean).length <= clientsBefore,
    );
  });

  it('misses nothing when appends race its reads', async () => {
    const guest = await newGuest();
    const abort = new AbortController();
    const chunks: RangeRead[] = [];
    const done = (async () => {
      for await (const chunk of shared.follow(guest, 0, abort.signal, { chunkBytes: 7 })) {
        chunks.push(chunk);
        if (chunk.next >= 1500) abort.abort();
      }
    })();
    // Appends come from another connection, as they would from the owner host.
    const writer = new SharedLog(server.client());
    for (let offset = 0; offset < 1500; offset += 10) {
      const bytes = logBytes(offset, offset + 10);
      await writer.append(guest, { epoch: 1, host: 'h1', offset, bytes, boot: 1, timestampMs: 1 }, 0);
    }
    await done;
    for (let i = 1; i < chunks.length; i++) expect(chunks[i]!.start).toBe(chunks[i - 1]!.next);
    expect(Buffer.concat(chunks.map((c) => c.bytes)).equals(logBytes(0, 1500))).toBe(true);
  });

  it('waits for a guest with no bytes yet, and wakes for an entry holding a future start', async () => {
    const guest = await newGuest();
    const abort = new AbortController();
    const iterator = shared.follow(guest, 10, abort.signal);
    const first = iterator.next();
    await new Promise((resolve) => setTimeout(resolve, 300)); // longer than one XREAD BLOCK
    const w = writer(guest);
    await w.write(logBytes(0, 25));
    const chunk = await first;
    expect(chunk.done).toBe(false);
    expect(chunk.value).toMatchObject({ start: 10, next: 25 });
    abort.abort();
    expect((await iterator.next()).done).toBe(true);
  });

  it('ends quietly when aborted while blocked, and at once when aborted before', async () => {
    const guest = await newGuest();
    const abort = new AbortController();
    const iterator = shared.follow(guest, 0, abort.signal);
    const pending = iterator.next();
    setTimeout(() => abort.abort(), 50);
    expect((await pending).done).toBe(true);
    const aborted = new AbortController();
    aborted.abort();
    expect((await shared.follow(guest, 0, aborted.signal).next()).done).toBe(true);
  });
});

describe('when Redis lost the data', () => {
  it('an empty stream reports no offset and takes the first offset the owner re-sends', async () => {
    const guest = await newGuest();
    await appendSizes(guest, [1000, 1000, 3000]);
    const keys = guestKeys('consoled:', guest);
    await client.del(keys.log, keys.owner, keys.boots);

    const status = await shared.owner(guest);
    expect(status).toMatchObject({ epoch: 0, next: null, streamEnd: null, oldestOffset: null, entries: 0 });
    expect(await shared.lastOffset(guest)).toBeNull();
    // The owner claims again above the epoch it held, and re-sends what its local
    // log still holds, [3000, 5000): accepted as the new start.
    expect((await shared.claim(guest, { host: 'h1', expectedEpoch: 0, knownEpoch: 3 })).epoch).toBe(4);
    const reply = await shared.append(
      guest,
      { epoch: 4, host: 'h1', offset: 3000, bytes: logBytes(3000, 4000), boot: 2, timestampMs: 1 },
      0,
    );
    expect(reply).toEqual({ status: 'appended', next: 4000, skippedBytes: 0 });
    expect(await shared.owner(guest)).toMatchObject({ epoch: 4, host: 'h1', next: 4000, oldestOffset: 3000 });
    expect((await shared.readRange(guest, 0)).start).toBe(3000);
    expect(await shared.bootRange(guest, 'current')).toEqual({ boot: 2, start: 3000, end: 4000 });
  });

  it('a lost owner hash is rebuilt from the stream tip, so re-sends stay exactly-once', async () => {
    const guest = await newGuest();
    const end = await appendSizes(guest, [10, 20, 30]);
    await client.del(guestKeys('consoled:', guest).owner);
    expect(await shared.lastOffset(guest)).toBe(end);
    // Until the owner claims again, nothing is appended.
    expect(
      (
        await errorOf(
          shared.append(
            guest,
            { epoch: 1, host: 'h1', offset: end, bytes: Buffer.from('x'), boot: 1, timestampMs: 1 },
            0,
          ),
        )
      ).code,
    ).toBe('FENCED');
    await shared.claim(guest, { host: 'h1', expectedEpoch: 0 });
    const resend = await shared.append(
      guest,
      { epoch: 1, host: 'h1', offset: 10, bytes: logBytes(10, 30), boot: 1, timestampMs: 1 },
      0,
    );
    expect(resend).toEqual({ status: 'duplicate', next: end });
    const gap = await errorOf(
      shared.append(
        guest,
        { epoch: 1, host: 'h1', offset: end + 1, bytes: Buffer.from('x'), boot: 1, timestampMs: 1 },
        0,
      ),
    );
    expect(gap.code).toBe('OFFSET_MISMATCH');
  });
});
