import type { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  type AppendArgs,
  appendScriptCall,
  readScripts,
  slottedAppend,
} from '../../store/replication/redis-commands.js';
import { type GuestKeys, guestKeys } from '../../store/replication/redis-keys.js';
import { SharedLog } from '../../store/replication/shared-log.js';
import { sendSlotted } from '../../store/replication/slot-append.js';
import { type RedisHandle, startRedis, stopAllRedis } from '../support/redis-server.js';

let server: RedisHandle;
let client: Redis;
let shared: SharedLog;
let appendLua: string;
let appendSha: string;

beforeAll(async () => {
  server = await startRedis();
  client = server.client();
  shared = new SharedLog(client);
  appendLua = readScripts().find((s) => s.name === 'append')!.lua;
  appendSha = (await client.script('LOAD', appendLua)) as string;
});
afterAll(stopAllRedis);

/** A small seeded generator (mulberry32), so a failing history can be replayed from its seed. */
function generator(seed: number) {
  let a = seed >>> 0;
  const next = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  return {
    below: (n: number) => Math.floor(next() * n),
    chance: (p: number) => next() < p,
    bytes: (n: number) => {
      // Four bytes per draw: a history's segments add up to megabytes.
      const b = Buffer.allocUnsafe(n + 3);
      for (let i = 0; i < n; i += 4) b.writeUInt32LE(Math.floor(next() * 4294967296), i);
      return b.subarray(0, n);
    },
  };
}

/** The append with its bytes in Lua: the script alone. Errors become their message. */
async function appendInLua(k: GuestKeys, a: AppendArgs): Promise<unknown> {
  const call = appendScriptCall(k, a);
  return client.eval(appendLua, 5, ...call.keys, ...call.args).catch((err: Error) => err.message);
}

/** The same append with its bytes out of Lua: the MULTI of slot-append.ts. */
async function appendOutOfLua(k: GuestKeys, a: AppendArgs): Promise<unknown> {
  const [reply] = await sendSlotted(client, appendSha, [slottedAppend(k, a)]);
  return reply instanceof Error ? reply.message : reply;
}

/** Everything an append can change, with Redis' clock times left out. */
async function stateOf(k: GuestKeys) {
  const owner = await client.hgetall(k.owner);
  for (const clock of ['sealedAt', 'releasedAt', 'goneSince']) delete owner[clock];
  const entries = await client.xrangeBuffer(k.log, '-', '+');
  return {
    exists: await client.exists(k.log),
    entries: entries.map(([id, fields]) => [id.toString(), fields.map((f) => f.toString('base64'))]),
    owner,
    boots: await client.zrange(k.boots, '0', '-1', 'WITHSCORES'),
    markers: await client.zrange(k.markers, '0', '-1', 'WITHSCORES'),
    slotLeft: await client.exists(k.logSlot),
  };
}

describe('appends with their bytes out of Lua', () => {
  // Two guests get the same generated history: one through the script with the bytes,
  // one through the MULTI without them. Every reply and the whole state must agree.
  it.each([1, 2, 3, 4])(
    'answer and change Redis exactly as the script with the bytes does (seed %i)',
    async (seed) => {
      const rnd = generator(seed);
      const inLua = shared.keys(`lua-${seed}`);
      const outOfLua = shared.keys(`slot-${seed}`);
      const both = [`lua-${seed}`, `slot-${seed}`];
      let epoch = 0;
      let next = 0;
      let boot = 1;
      let appended = 0;
      let refused = 0;
      for (let step = 0; step < 120; step++) {
        const roll = rnd.below(100);
        if (roll < 6 || epoch === 0) {
          // A claim (or, now and then, one by another host, which fences this one's appends).
          const host = rnd.chance(0.2) ? 'h2' : 'h1';
          const claims = await Promise.all(
            both.map((g) => shared.claim(g, { host, expectedEpoch: 'any', knownEpoch: Math.abs(epoch) })),
          );
          expect(claims[1]).toEqual(claims[0]);
          epoch = host === 'h1' ? claims[0]!.epoch : -claims[0]!.epoch;
          if (claims[0]!.next !== null) next = claims[0]!.next;
          continue;
        }
        if (roll < 8) {
          // A seal by the owner: appends are refused until the next claim.
          const sealed = await Promise.allSettled(
            both.map((g) => shared.seal(g, Math.abs(epoch), 'h1', next)),
          );
          expect(sealed.map((s) => s.status)).toEqual([sealed[0]!.status, sealed[0]!.status]);
          continue;
        }
        const size = rnd.chance(0.5) ? 1 + rnd.below(3000) : 16 * 1024 + rnd.below(80 * 1024);
        const kind = rnd.below(20);
        const offset =
          kind === 0
            ? Math.max(0, next - rnd.below(2 * size)) // a re-send, or an overlap
            : kind === 1
              ? next + 1 + rnd.below(5000) // a hole
              : next;
        if (rnd.chance(0.05)) boot++;
        const a: AppendArgs = {
          epoch: kind === 2 ? Math.abs(epoch) + 1 : Math.abs(epoch),
          host: 'h1',
          offset,
          bytes: rnd.bytes(size),
          boot,
          timestampMs: 1_700_000_000_000 + step,
          retentionBytes: rnd.chance(0.7) ? 200 * 1024 : rnd.chance(0.5) ? 0 : 8 * 1024,
          allowSkip: rnd.chance(0.5),
          markers: rnd.chance(0.2) ? `${offset}:${Math.min(size, 40)}:gap` : '',
        };
        const expected = await appendInLua(inLua, a);
        const got = await appendOutOfLua(outOfLua, a);
        expect(got, `step ${step}`).toEqual(expected);
        if (Array.isArray(expected) && expected[0] === 1) {
          next = Number(expected[1]);
          appended++;
        } else refused++;
        expect(await stateOf(outOfLua), `step ${step}`).toEqual(await stateOf(inLua));
      }
      // The history reached both sides of every check.
      expect(appended).toBeGreaterThan(20);
      expect(refused).toBeGreaterThan(5);
    },
  );

  it('refuse a log key of the wrong type before recording anything, and leave no slot', async () => {
    const k = guestKeys('consoled:', 'wrong-type');
    await shared.claim('wrong-type', { host: 'h1', expectedEpoch: 'any' });
    await client.set(k.log, 'not a stream');
    const ownerBefore = await client.hgetall(k.owner);
    const a: AppendArgs = {
      epoch: 1,
      host: 'h1',
      offset: 0,
      bytes: Buffer.alloc(20_000, 7),
      boot: 1,
      timestampMs: 1,
      retentionBytes: 0,
      allowSkip: false,
      markers: '',
    };
    expect(String(await appendOutOfLua(k, a))).toMatch(/WRONGTYPE/);
    expect(await client.hgetall(k.owner)).toEqual(ownerBefore);
    expect(await client.get(k.log)).toBe('not a stream');
    expect(await client.exists(k.logSlot)).toBe(0);
  });

  it('serve a reader blocked on the stream, and add nothing when Redis does not know the script', async () => {
    await shared.claim('blocked', { host: 'h1', expectedEpoch: 'any' });
    const k = shared.keys('blocked');
    const reader = server.client();
    const read = reader.xreadBuffer('BLOCK', 5000, 'STREAMS', k.log, '$');
    await new Promise((r) => setTimeout(r, 100));
    const a: AppendArgs = {
      epoch: 1,
      host: 'h1',
      offset: 0,
      bytes: Buffer.alloc(40_000, 9),
      boot: 1,
      timestampMs: 1,
      retentionBytes: 0,
      allowSkip: false,
      markers: '',
    };
    expect(await appendOutOfLua(k, a)).toEqual([1, 40_000, 0]);
    const got = await read;
    expect(got?.[0]?.[1]?.[0]?.[0]?.toString()).toBe('0-1');

    await client.script('FLUSH');
    try {
      const more = { ...a, offset: 40_000 };
      await expect(appendOutOfLua(k, more)).rejects.toThrow(/NOSCRIPT/);
      expect(await client.xlen(k.log)).toBe(1);
      expect(await client.hget(k.owner, 'next')).toBe('40000');
      expect(await client.exists(k.logSlot)).toBe(0);
    } finally {
      await client.script('LOAD', appendLua);
    }
  });
});
