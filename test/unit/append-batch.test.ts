import type { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ConsoledError } from '../../common/errors.js';
import { guestKeys } from '../../store/replication/redis-keys.js';
import { type Segment, SharedLog } from '../../store/replication/shared-log.js';
import { type RedisHandle, startRedis, stopAllRedis } from '../support/redis-server.js';

let server: RedisHandle;
let client: Redis;
let shared: SharedLog;

beforeAll(async () => {
  server = await startRedis();
  client = server.client();
  shared = new SharedLog(client);
});
afterAll(stopAllRedis);

function segment(epoch: number, offset: number, text: string): Segment {
  return { epoch, host: 'h1', offset, bytes: Buffer.from(text), boot: 1, timestampMs: 1 };
}

/** How many script calls (EVAL and EVALSHA) Redis has run. */
async function scriptCalls(): Promise<number> {
  const info = await client.info('commandstats');
  let calls = 0;
  for (const m of info.matchAll(/^cmdstat_eval(?:sha)?:calls=(\d+)/gm)) calls += Number(m[1]);
  return calls;
}

async function streamText(guest: string): Promise<string> {
  const entries = await client.xrangeBuffer(guestKeys('consoled:', guest).log, '-', '+');
  return entries
    .map(([, fields]) => {
      const i = fields.findIndex((f) => f.toString() === 'd');
      return fields[i + 1]!.toString();
    })
    .join('');
}

describe('appends of many guests in one turn', () => {
  it('leave in one script call, each checked on its own: appended, re-sent, fenced, out of order', async () => {
    const guests = Array.from({ length: 40 }, (_, i) => `batch-${i}`);
    for (const g of guests) await shared.claim(g, { host: 'h1', expectedEpoch: 'any' });
    // Guest 1 already holds its first segment: sending it again is a re-send.
    await shared.append('batch-1', segment(1, 0, 'first'), 0);
    await shared.append('batch-3', segment(1, 0, 'abc'), 0);

    const before = await scriptCalls();
    const results = await Promise.allSettled(
      guests.map((g, i) => {
        if (i === 1) return shared.append(g, segment(1, 0, 'first'), 0);
        if (i === 2) return shared.append(g, segment(7, 0, 'stale epoch'), 0);
        if (i === 3) return shared.append(g, segment(1, 10, 'after a hole'), 0);
        return shared.append(g, segment(1, 0, `guest ${i} `), 0);
      }),
    );
    // Second segments of the same guests, in the same turn, after the first ones.
    const seconds = await Promise.allSettled(
      guests.slice(4).map((g, i) => shared.append(g, segment(1, `guest ${i + 4} `.length, 'again'), 0)),
    );
    expect(await scriptCalls()).toBe(before + 2);

    expect(results[0]).toEqual({
      status: 'fulfilled',
      value: { status: 'appended', next: 8, skippedBytes: 0 },
    });
    expect(results[1]).toEqual({ status: 'fulfilled', value: { status: 'duplicate', next: 5 } });
    const fenced = results[2];
    expect(
      fenced?.status === 'rejected' && fenced.reason instanceof ConsoledError && fenced.reason.code,
    ).toBe('FENCED');
    const gap = results[3];
    expect(gap?.status === 'rejected' && gap.reason instanceof ConsoledError && gap.reason.details).toEqual({
      next: 3,
      reason: 'gap',
    });
    expect(seconds.every((r) => r.status === 'fulfilled')).toBe(true);
    for (let i = 4; i < guests.length; i++) expect(await streamText(guests[i]!)).toBe(`guest ${i} again`);
    expect(await streamText('batch-1')).toBe('first');
    expect(await streamText('batch-2')).toBe('');
    expect(await streamText('batch-3')).toBe('abc');
  });

  it("a turn of more segments than one call holds leaves in several calls, each guest's segments in order", async () => {
    const guests = Array.from({ length: 300 }, (_, i) => `split-${i}`);
    for (const g of guests) await shared.claim(g, { host: 'h1', expectedEpoch: 'any' });
    const before = await scriptCalls();
    // 600 segments in one turn: each guest's second segment follows its first, often in the next call.
    const replies = await Promise.all(
      guests.flatMap((g, i) => [
        shared.append(g, segment(1, 0, `one ${i} `), 0),
        shared.append(g, segment(1, `one ${i} `.length, `two ${i}`), 0),
      ]),
    );
    expect(await scriptCalls()).toBe(before + Math.ceil(600 / 128));
    expect(replies.every((r) => r.status === 'appended')).toBe(true);
    for (const [i, g] of guests.entries()) expect(await streamText(g)).toBe(`one ${i} two ${i}`);
  });

  it('a batch that fails as a whole is sent again one by one, and nothing is written twice', async () => {
    const guests = ['whole-0', 'whole-1', 'whole-2'];
    for (const g of guests) await shared.claim(g, { host: 'h1', expectedEpoch: 'any' });
    // A key of the wrong type makes the script fail part-way, after guest 0's append.
    await client.set(guestKeys('consoled:', 'whole-1').log, 'not a stream');
    const results = await Promise.allSettled(guests.map((g) => shared.append(g, segment(1, 0, `${g}!`), 0)));
    expect(results[0]).toEqual({ status: 'fulfilled', value: { status: 'duplicate', next: 8 } });
    const failed = results[1];
    expect(failed?.status === 'rejected' && String(failed.reason)).toMatch(/WRONGTYPE/);
    expect(results[2]).toEqual({
      status: 'fulfilled',
      value: { status: 'appended', next: 8, skippedBytes: 0 },
    });
    expect(await streamText('whole-0')).toBe('whole-0!');
    expect(await streamText('whole-2')).toBe('whole-2!');
  });
});
