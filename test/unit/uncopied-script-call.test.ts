import { randomBytes } from 'node:crypto';
import { Command, type Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { guestKeys } from '../../store/replication/redis-keys.js';
import { type Segment, SharedLog } from '../../store/replication/shared-log.js';
import {
  EncodedArgs,
  encodeCommandOf,
  encodePieces,
  UncopiedScript,
} from '../../store/replication/uncopied-script-call.js';
import { type RedisHandle, startRedis, stopAllRedis } from '../support/redis-server.js';

let server: RedisHandle;
let client: Redis;

beforeAll(async () => {
  server = await startRedis();
  client = server.client();
});
afterAll(stopAllRedis);

/** Stores each argument under its own key and answers how many it got. */
const STORE_ARGS = `for i = 1, #ARGV do redis.call('SET', KEYS[1] .. ':' .. i, ARGV[i]) end
return #ARGV`;

async function scriptRuns(name: 'eval' | 'evalsha'): Promise<number> {
  const info = await client.info('commandstats');
  return Number(new RegExp(`^cmdstat_${name}:calls=(\\d+)`, 'm').exec(info)?.[1] ?? 0);
}

describe('a script call that writes large arguments as they are', () => {
  it('encodes a command byte for byte as ioredis does, for every kind of argument', () => {
    const cases: Array<[string, Array<string | Buffer | number>]> = [
      ['ping', []],
      [
        'evalsha',
        ['0123456789abcdef0123456789abcdef01234567', 2, 'k1', 'k2', 0, 9, 10, 99, 100, 123456789012],
      ],
      [
        'xadd',
        ['slot', 'NOMKSTREAM', '17-0', 'd', Buffer.alloc(0), 'h', 'höst-ü', Buffer.from([0, 13, 10, 255])],
      ],
      ['set', ['€'.repeat(1000), randomBytes(5000)]],
    ];
    for (const [name, args] of cases) {
      const command = new Command(name, args);
      const theirs = command.toWritable(null as never);
      const expected = typeof theirs === 'string' ? Buffer.from(theirs) : theirs;
      expect(encodeCommandOf(name, [command.args as (string | Buffer)[]]).equals(expected)).toBe(true);
    }
  });

  it('encodes lists of arguments, numbers of every kind and arguments encoded ahead as ioredis encodes the flat command', () => {
    const keys = new EncodedArgs(['consoled:{g-1}:log', 'consoled:{g-1}:owner', 'kéy-ü']);
    const numbers = [0, 7, 10, 99, 1e3, 2 ** 53 - 1, 2 ** 60, -1, -250, 1.5, 0.1, -0.5];
    const long = 'x'.repeat(65) + 'é';
    const lists = [
      ['0123456789abcdef0123456789abcdef01234567', 6],
      keys,
      [],
      numbers,
      keys,
      ['', 'ascii', long, 'y'.repeat(200), Buffer.from([0, 255, 13, 10]), Buffer.alloc(0)],
    ];
    const flat = lists.flatMap((l) => (l instanceof EncodedArgs ? l.args : l));
    const expected = new Command('evalsha', flat).toWritable(null as never);
    const ours = encodeCommandOf('evalsha', lists);
    expect(ours.toString('latin1')).toBe(Buffer.from(expected as string).toString('latin1'));
    // One piece without a large argument.
    expect(encodePieces('evalsha', lists)).toEqual([ours]);
  });

  it("cuts a command at its large arguments, which stay the caller's buffers, and joins the rest", () => {
    const large = randomBytes(16 * 1024);
    const larger = randomBytes(100 * 1024);
    const cases: Array<Array<Array<string | Buffer | number> | EncodedArgs>> = [
      [
        ['slot', 'NOMKSTREAM', '5-1'],
        ['d', large, 'h', 'hôst', 'e', 3],
      ],
      [[large]],
      [[large, larger], new EncodedArgs(['k1', 'k2']), [larger, 'tail']],
      [['a'], [large], [], ['b', 12345678901234, randomBytes(16 * 1024 - 1)]],
    ];
    for (const lists of cases) {
      const pieces = encodePieces('xadd', lists);
      const flat = lists.flatMap((l) => (l instanceof EncodedArgs ? l.args : l));
      const expected = new Command('xadd', flat).toWritable(null as never);
      expect(Buffer.concat(pieces).equals(Buffer.from(expected as Buffer))).toBe(true);
      const bigOnes = flat.filter((a): a is Buffer => Buffer.isBuffer(a) && a.length >= 16 * 1024);
      expect(pieces.filter((_, i) => i % 2 === 1)).toHaveLength(bigOnes.length);
      pieces.forEach((piece, i) => {
        if (i % 2 === 1) expect(piece).toBe(bigOnes[(i - 1) / 2]);
      });
      expect(pieces.length % 2).toBe(1);
    }
  });

  it('delivers every argument byte for byte, large and small, binary and UTF-8, in order with other commands', async () => {
    const fallbackCalls: unknown[][] = [];
    const script = new UncopiedScript(STORE_ARGS, (n, args) => {
      fallbackCalls.push(args);
      return client.eval(STORE_ARGS, n, ...args);
    });
    const large = randomBytes(1024 * 1024 + 3);
    const small = randomBytes(100);
    const exactlyAtBound = randomBytes(16 * 1024);
    const args = [
      'hôst ✓',
      large,
      42,
      small,
      exactlyAtBound,
      Buffer.alloc(0),
      large.subarray(5, 70_000),
      'tail',
    ];
    // The first call loads the script ahead (SCRIPT LOAD) and goes by SHA, as later ones do.
    expect(await script.call(client, 1, ['first', ...args])).toBe(args.length);
    expect(fallbackCalls).toHaveLength(0);

    // The socket is given the large arguments themselves, not a copy of them.
    const socket = (
      client as unknown as { stream: { write: (chunk: unknown, ...rest: unknown[]) => boolean } }
    ).stream;
    const written: unknown[] = [];
    const write = socket.write;
    socket.write = function (this: unknown, chunk: unknown, ...rest: unknown[]) {
      written.push(chunk);
      return write.call(this, chunk, ...rest);
    };
    const evalshaBefore = await scriptRuns('evalsha');
    // Other commands sent in the same turn, before and after, keep their order and replies.
    const [before, calls, after] = await Promise.all([
      client.set('between', 'before'),
      Promise.all([script.call(client, 1, ['second', ...args]), script.call(client, 1, ['third', ...args])]),
      client.getset('between', 'after'),
    ]);
    expect(before).toBe('OK');
    expect(calls).toEqual([args.length, args.length]);
    expect(after).toBe('before');
    socket.write = write;
    expect(written.filter((c) => c === large)).toHaveLength(2);
    expect(written.filter((c) => c === exactlyAtBound)).toHaveLength(2);
    expect(written.filter((c) => c === small)).toHaveLength(0);
    expect(await scriptRuns('evalsha')).toBe(evalshaBefore + 2);
    expect(fallbackCalls).toHaveLength(0);

    for (const prefix of ['second', 'third']) {
      const stored = await Promise.all(args.map((_, i) => client.getBuffer(`${prefix}:${i + 1}`)));
      expect(stored[0]!.toString()).toBe('hôst ✓');
      expect(stored[1]!.equals(large)).toBe(true);
      expect(stored[2]!.toString()).toBe('42');
      expect(stored[3]!.equals(small)).toBe(true);
      expect(stored[4]!.equals(exactlyAtBound)).toBe(true);
      expect(stored[5]!.length).toBe(0);
      expect(stored[6]!.equals(large.subarray(5, 70_000))).toBe(true);
      expect(stored[7]!.toString()).toBe('tail');
    }
  });

  it('after Redis forgot its scripts, runs the refused call once through the fallback, then loads the script ahead again', async () => {
    let fallbacks = 0;
    const script = new UncopiedScript(STORE_ARGS, (n, args) => {
      fallbacks++;
      return client.eval(STORE_ARGS, n, ...args);
    });
    const bytes = randomBytes(64 * 1024);
    await script.call(client, 1, ['loaded', bytes]);
    await client.script('FLUSH');
    const evalBefore = await scriptRuns('eval');
    expect(await script.call(client, 1, ['reloaded', bytes])).toBe(1);
    expect(fallbacks).toBe(1);
    expect(await scriptRuns('eval')).toBe(evalBefore + 1);
    expect((await client.getBuffer('reloaded:1'))!.equals(bytes)).toBe(true);
    // And by SHA again afterwards.
    const evalshaBefore = await scriptRuns('evalsha');
    expect(await script.call(client, 1, ['again', bytes])).toBe(1);
    expect(await scriptRuns('evalsha')).toBe(evalshaBefore + 1);
    expect(fallbacks).toBe(1);
  });

  it('appends of large binary segments, one and many per call, across a script flush: each stream equals what was sent', async () => {
    const shared = new SharedLog(client);
    const guests = ['large-0', 'large-1', 'large-2'];
    for (const g of guests) await shared.claim(g, { host: 'h1', expectedEpoch: 'any' });
    const sent = new Map(guests.map((g) => [g, [] as Buffer[]]));
    const offsets = new Map(guests.map((g) => [g, 0]));
    const segmentOf = (g: string, size: number): Segment => {
      const bytes = randomBytes(size);
      const offset = offsets.get(g)!;
      offsets.set(g, offset + size);
      sent.get(g)!.push(bytes);
      return { epoch: 1, host: 'h1', offset, bytes, boot: 1, timestampMs: 1 };
    };
    for (let round = 0; round < 6; round++) {
      if (round === 3) await client.script('FLUSH');
      // Round 0 and 3: one guest alone (one segment per call); the rest: all guests, large and small, in one turn.
      const active = round % 3 === 0 ? guests.slice(0, 1) : guests;
      const replies = await Promise.all(
        active.flatMap((g, i) => [
          shared.append(g, segmentOf(g, 64 * 1024 + i), 0),
          shared.append(g, segmentOf(g, 10 + i), 0),
        ]),
      );
      expect(replies.every((r) => r.status === 'appended')).toBe(true);
    }
    for (const g of guests) {
      const entries = await client.xrangeBuffer(guestKeys('consoled:', g).log, '-', '+');
      const stream = Buffer.concat(
        entries.map(([, fields]) => fields[fields.findIndex((f) => f.toString() === 'd') + 1]!),
      );
      expect(stream.equals(Buffer.concat(sent.get(g)!))).toBe(true);
    }
  });

  it('a call that times out while its bytes wait in the socket settles only once they left, so its buffer can be reused safely', async () => {
    const slow = server.client({ commandTimeout: 300 });
    const script = new UncopiedScript(STORE_ARGS, (n, args) => slow.eval(STORE_ARGS, n, ...args));
    await script.call(slow, 1, ['warm', 'up']);
    const pid = Number(/^process_id:(\d+)/m.exec(await slow.info('server'))?.[1]);
    // More than the loopback socket buffers hold (here at most 4 MiB sent and 32 MiB
    // received, net.ipv4.tcp_wmem and tcp_rmem), so part of it waits in the client while
    // Redis is stopped.
    const bytes = Buffer.alloc(48 * 1024 * 1024, 0x5a);
    for (let i = 0; i < bytes.length; i += 4096) bytes[i] = i & 0xff;
    const original = Buffer.from(bytes);
    process.kill(pid, 'SIGSTOP');
    let resumedAt = 0;
    const resume = setTimeout(() => {
      resumedAt = performance.now();
      process.kill(pid, 'SIGCONT');
    }, 1500);
    try {
      const failure = await script.call(slow, 1, ['late', bytes]).then(
        () => null,
        (err: unknown) => err,
      );
      const settledAt = performance.now();
      expect(String(failure)).toMatch(/timed out/i);
      // Settled after Redis read again (the timeout itself fired at 300 ms, while it was stopped).
      expect(resumedAt).toBeGreaterThan(0);
      expect(settledAt).toBeGreaterThanOrEqual(resumedAt);
      // The caller may now reuse the buffer: what Redis stores is what was sent.
      bytes.fill(0);
      // Redis runs the script once it has read it all; another connection polls for it.
      let stored: Buffer | null = null;
      for (let i = 0; i < 200 && !stored; i++) {
        stored = await client.getBuffer('late:1');
        if (!stored) await new Promise((r) => setTimeout(r, 50));
      }
      expect(stored?.equals(original)).toBe(true);
    } finally {
      clearTimeout(resume);
      process.kill(pid, 'SIGCONT');
    }
  });
});
