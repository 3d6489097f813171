import type { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ConsoledError } from '../../common/errors.js';
import { guestKeys } from '../../store/replication/redis-keys.js';
import { type Segment, SharedLog } from '../../store/replication/shared-log.js';
import { type RedisHandle, startRedis, stopAllRedis } from '../support/redis-server.js';

let server: RedisHandle;
let client: Redis;
let shared: SharedLog;
let guestNumber = 0;

beforeAll(async () => {
  server = await startRedis();
  client = server.client();
  shared = new SharedLog(client);
});
afterAll(stopAllRedis);

function newGuest(): string {
  guestNumber++;
  return `fenced-${guestNumber}`;
}

function segment(epoch: number, host: string, offset: number, text: string): Segment {
  return { epoch, host, offset, bytes: Buffer.from(text), boot: 1, timestampMs: 1 };
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

/** Everything Redis holds for a guest, to prove a refused call changed nothing. */
async function snapshot(guest: string): Promise<unknown> {
  const keys = guestKeys('consoled:', guest);
  return {
    log: (await client.xrangeBuffer(keys.log, '-', '+')).map(([id, f]) => [
      id.toString('hex'),
      f.map((b) => b.toString('hex')),
    ]),
    owner: await client.hgetall(keys.owner),
    boots: await client.zrange(keys.boots, '0', '-1', 'WITHSCORES'),
  };
}

describe('claim', () => {
  it('first ownership takes epoch 1; each claim bumps it', async () => {
    const guest = newGuest();
    const first = await shared.claim(guest, { host: 'h1', expectedEpoch: 'any' });
    expect(first).toEqual({
      epoch: 1,
      next: null,
      previousEpoch: 0,
      previousHost: null,
      previousHandoff: 'none',
    });
    await shared.append(guest, segment(1, 'h1', 0, 'abc'), 0);

    const second = await shared.claim(guest, { host: 'h2', expectedEpoch: 1 });
    expect(second).toEqual({
      epoch: 2,
      next: 3,
      previousEpoch: 1,
      previousHost: 'h1',
      previousHandoff: 'none',
    });
    expect(await shared.owner(guest)).toMatchObject({ epoch: 2, host: 'h2', next: 3, handoff: 'none' });
  });

  it('a claim with a stale expected epoch is refused and changes nothing', async () => {
    const guest = newGuest();
    await shared.claim(guest, { host: 'h1', expectedEpoch: 'any' });
    await shared.claim(guest, { host: 'h1', expectedEpoch: 1 });
    const before = await snapshot(guest);
    const err = await errorOf(shared.claim(guest, { host: 'h2', expectedEpoch: 1 }));
    expect(err.code).toBe('FENCED');
    expect(err.details).toEqual({ epoch: 2, host: 'h1' });
    expect(await snapshot(guest)).toEqual(before);
  });

  it('of two racing claims with the same expected epoch, exactly one wins', async () => {
    const guest = newGuest();
    await shared.claim(guest, { host: 'h1', expectedEpoch: 'any' });
    const results = await Promise.allSettled([
      shared.claim(guest, { host: 'h2', expectedEpoch: 1 }),
      shared.claim(guest, { host: 'h3', expectedEpoch: 1 }),
    ]);
    expect(results.filter((r) => r.status === 'fulfilled')).toHaveLength(1);
    const rejected = results.find((r) => r.status === 'rejected');
    expect(rejected?.status === 'rejected' && (rejected.reason as ConsoledError).code).toBe('FENCED');
  });

  it('knownEpoch restores an epoch Redis lost, so epochs never go back', async () => {
    const guest = newGuest();
    await shared.claim(guest, { host: 'h1', expectedEpoch: 'any' });
    // h2 held epoch 7 before a failover lost its claim; Redis now says epoch 1.
    const err = await errorOf(shared.append(guest, segment(7, 'h2', 0, 'x'), 0));
    expect(err.code).toBe('FENCED');
    expect(err.details).toEqual({ epoch: 1, host: 'h1' });
    const claimed = await shared.claim(guest, { host: 'h2', expectedEpoch: 1, knownEpoch: 7 });
    expect(claimed.epoch).toBe(8);
    expect((await shared.append(guest, segment(8, 'h2', 0, 'x'), 0)).status).toBe('appended');
  });

  it('refuses a claim from a host that knows less than the stream: it does not know the latest owner', async () => {
    const guest = newGuest();
    await shared.claim(guest, { host: 'h1', expectedEpoch: 'any' });
    await shared.claim(guest, { host: 'h2', expectedEpoch: 1 });
    const before = await snapshot(guest);
    const err = await errorOf(shared.claim(guest, { host: 'h1', expectedEpoch: 'any', knownEpoch: 1 }));
    expect(err.code).toBe('FENCED');
    expect(err.details).toEqual({ epoch: 2, host: 'h2' });
    expect(await snapshot(guest)).toEqual(before);
    expect((await shared.claim(guest, { host: 'h1', expectedEpoch: 'any', knownEpoch: 2 })).epoch).toBe(3);
  });
});

describe('fencing', () => {
  it('a stale epoch cannot append and the stream is unchanged', async () => {
    const guest = newGuest();
    await shared.claim(guest, { host: 'h1', expectedEpoch: 'any' });
    await shared.append(guest, segment(1, 'h1', 0, 'hello '), 0);
    await shared.claim(guest, { host: 'h2', expectedEpoch: 1 });
    await shared.append(guest, segment(2, 'h2', 6, 'world'), 0);

    const before = await snapshot(guest);
    for (const attempt of [
      segment(1, 'h1', 11, 'late'),
      segment(1, 'h1', 6, 'zombie'),
      segment(1, 'h1', 0, 'hello '),
    ]) {
      const err = await errorOf(shared.append(guest, attempt, 0));
      expect(err.code).toBe('FENCED');
      expect(err.details).toEqual({ epoch: 2, host: 'h2' });
    }
    // A future epoch nobody was granted is fenced too, and so is the current epoch from another host.
    expect((await errorOf(shared.append(guest, segment(3, 'h3', 11, 'x'), 0))).code).toBe('FENCED');
    expect((await errorOf(shared.append(guest, segment(2, 'h3', 11, 'x'), 0))).code).toBe('FENCED');
    expect(await snapshot(guest)).toEqual(before);
    expect((await shared.readRange(guest, 0)).bytes.toString()).toBe('hello world');
  });
});

describe('an unowned guest (new, or Redis lost the owner hash)', () => {
  it('refuses every append: ownership is taken by a claim, never by an append', async () => {
    const guest = newGuest();
    const err = await errorOf(shared.append(guest, segment(3, 'h1', 500, 'from h1'), 0));
    expect(err.code).toBe('FENCED');
    expect(err.details).toEqual({ epoch: 0, host: null });
    expect(await shared.owner(guest)).toMatchObject({ epoch: 0, host: null, entries: 0 });
  });

  it('of two hosts claiming it with requireUnowned, exactly one wins and the other is fenced', async () => {
    const guest = newGuest();
    const results = await Promise.allSettled([
      shared.claim(guest, { host: 'h1', expectedEpoch: 0, knownEpoch: 3, requireUnowned: true }),
      shared.claim(guest, { host: 'h2', expectedEpoch: 0, knownEpoch: 3, requireUnowned: true }),
    ]);
    const won = results.filter((r) => r.status === 'fulfilled');
    expect(won).toHaveLength(1);
    expect(won[0]?.status === 'fulfilled' && won[0].value.epoch).toBe(4);
    const lost = results.find((r) => r.status === 'rejected');
    expect(lost?.status === 'rejected' && (lost.reason as ConsoledError).code).toBe('FENCED');
  });
});

describe('release', () => {
  it('gives the stream up at next: appends are refused, anyone may claim it and continue there', async () => {
    const guest = newGuest();
    await shared.claim(guest, { host: 'h1', expectedEpoch: 'any' });
    await shared.append(guest, segment(1, 'h1', 0, 'before release'), 0);
    expect((await errorOf(shared.release(guest, 1, 'h1', 3))).code).toBe('OFFSET_MISMATCH');
    expect((await errorOf(shared.release(guest, 1, 'h2', 14))).code).toBe('FENCED');
    expect(await shared.release(guest, 1, 'h1', 14)).toBe(14);
    expect(await shared.release(guest, 1, 'h1', 14)).toBe(14); // again: a no-op
    expect(await shared.owner(guest)).toMatchObject({ epoch: 1, host: null, handoff: 'released', next: 14 });
    expect((await errorOf(shared.append(guest, segment(1, 'h1', 14, 'late'), 0))).code).toBe('FENCED');
    const asked = await errorOf(shared.requestHandoff(guest, 'h2', 'any'));
    expect(asked.code).toBe('HANDOFF_STATE');
    expect(asked.details).toMatchObject({ handoff: 'unowned' });
    const claim = await shared.claim(guest, { host: 'h2', expectedEpoch: 1, requireUnowned: true });
    expect(claim).toMatchObject({ epoch: 2, next: 14, previousHost: null, previousHandoff: 'released' });
    expect((await shared.append(guest, segment(2, 'h2', 14, ' after'), 0)).status).toBe('appended');
    expect((await shared.readRange(guest, 0)).bytes.toString()).toBe('before release after');
  });

  it('is refused while a handoff is pending: the owner hands over instead', async () => {
    const guest = newGuest();
    await shared.claim(guest, { host: 'h1', expectedEpoch: 'any' });
    await shared.append(guest, segment(1, 'h1', 0, 'x'), 0);
    await shared.requestHandoff(guest, 'h2', 1);
    const err = await errorOf(shared.release(guest, 1, 'h1', 1));
    expect(err.code).toBe('HANDOFF_STATE');
    expect(err.details).toMatchObject({ handoff: 'pending', target: 'h2' });
  });
});

describe('migration handoff', () => {
  async function ownedBySource(): Promise<string> {
    const guest = newGuest();
    await shared.claim(guest, { host: 'src', expectedEpoch: 'any' });
    await shared.append(guest, segment(1, 'src', 0, 'before migration\r\n'), 0);
    return guest;
  }

  it('request, source keeps appending, seal, destination claims and continues at the seal', async () => {
    const guest = await ownedBySource();
    const requested = await shared.requestHandoff(guest, 'dst', 1);
    expect(requested).toEqual({ epoch: 1, host: 'src', next: 18 });
    expect(await shared.requestHandoff(guest, 'dst', 1)).toEqual(requested); // idempotent
    expect(await shared.owner(guest)).toMatchObject({ handoff: 'pending', target: 'dst', epoch: 1 });

    // The guest still runs on the source: it keeps appending while pending.
    await shared.append(guest, segment(1, 'src', 18, 'still on source\r\n'), 0);
    // The destination cannot take over before the seal.
    const early = await errorOf(shared.claim(guest, { host: 'dst', expectedEpoch: 1, requireSealed: true }));
    expect(early.code).toBe('HANDOFF_STATE');
    expect(early.details).toMatchObject({ handoff: 'pending', target: 'dst' });

    // The source seals only once everything it has reached the stream.
    const unflushed = await errorOf(shared.seal(guest, 1, 'src', 20));
    expect(unflushed.code).toBe('OFFSET_MISMATCH');
    expect(unflushed.details).toEqual({ next: 35, reason: 'not-flushed' });
    await shared.append(guest, segment(1, 'src', 35, '[handoff]'), 0);
    expect(await shared.seal(guest, 1, 'src', 44)).toEqual({ sealedAt: 44, epoch: 1, target: 'dst' });
    expect(await shared.seal(guest, 1, 'src', 44)).toEqual({ sealedAt: 44, epoch: 1, target: 'dst' });
    expect((await errorOf(shared.seal(guest, 1, 'src', 50))).code).toBe('HANDOFF_STATE');

    // Sealed: the source's epoch is still current but it may not append.
    const afterSeal = await errorOf(shared.append(guest, segment(1, 'src', 44, 'oops'), 0));
    expect(afterSeal.code).toBe('HANDOFF_STATE');
    expect(afterSeal.details).toEqual({ handoff: 'sealed', target: 'dst', sealedAt: 44 });
    // Only the target completes a targeted handoff.
    expect(
      (await errorOf(shared.claim(guest, { host: 'other', expectedEpoch: 1, requireSealed: true }))).code,
    ).toBe('HANDOFF_STATE');

    const claimed = await shared.claim(guest, { host: 'dst', expectedEpoch: 1, requireSealed: true });
    expect(claimed).toEqual({
      epoch: 2,
      next: 44,
      previousEpoch: 1,
      previousHost: 'src',
      previousHandoff: 'sealed',
    });
    const status = await shared.owner(guest);
    expect(status).toMatchObject({
      epoch: 2,
      host: 'dst',
      next: 44,
      handoff: 'none',
      target: null,
      sealedAt: null,
    });
    await shared.append(guest, segment(2, 'dst', 44, 'on destination\r\n'), 0);
    expect((await errorOf(shared.append(guest, segment(1, 'src', 44, 'oops'), 0))).code).toBe('FENCED');
    expect((await shared.readRange(guest, 0)).bytes.toString()).toBe(
      'before migration\r\nstill on source\r\n[handoff]on destination\r\n',
    );
  });

  it('force_complete: without a seal the destination fences the source', async () => {
    const guest = await ownedBySource();
    await shared.requestHandoff(guest, 'dst', 1);
    const forced = await shared.claim(guest, { host: 'dst', expectedEpoch: 1 });
    expect(forced).toMatchObject({ epoch: 2, next: 18, previousHandoff: 'pending' });
    expect((await errorOf(shared.append(guest, segment(1, 'src', 18, 'late'), 0))).code).toBe('FENCED');
    expect((await errorOf(shared.seal(guest, 1, 'src', 18))).code).toBe('FENCED');
  });

  it('cancel returns to none, only for the named target; a sealed source may append again', async () => {
    const guest = await ownedBySource();
    expect(await shared.cancelHandoff(guest, 'dst')).toBe('none');
    await shared.requestHandoff(guest, 'dst', 1);
    expect((await errorOf(shared.cancelHandoff(guest, 'other'))).code).toBe('HANDOFF_STATE');
    expect(await shared.cancelHandoff(guest, 'dst')).toBe('pending');
    expect(await shared.owner(guest)).toMatchObject({ handoff: 'none', target: null });

    await shared.requestHandoff(guest, 'dst', 1);
    await shared.seal(guest, 1, 'src', 18);
    expect(await shared.cancelHandoff(guest)).toBe('sealed');
    expect((await shared.append(guest, segment(1, 'src', 18, 'back'), 0)).status).toBe('appended');
  });

  it('refuses a handoff of an unowned guest, to its owner, or to a second destination', async () => {
    const unowned = newGuest();
    const none = await errorOf(shared.requestHandoff(unowned, 'dst', 'any'));
    expect(none.code).toBe('HANDOFF_STATE');
    expect(none.details).toMatchObject({ handoff: 'unowned' });

    const guest = await ownedBySource();
    expect((await errorOf(shared.requestHandoff(guest, 'src', 1))).code).toBe('HANDOFF_STATE');
    expect((await errorOf(shared.requestHandoff(guest, 'dst', 5))).code).toBe('FENCED');
    await shared.requestHandoff(guest, 'dst', 1);
    const second = await errorOf(shared.requestHandoff(guest, 'dst2', 1));
    expect(second.code).toBe('HANDOFF_STATE');
    expect(second.details).toMatchObject({ handoff: 'pending', target: 'dst' });
  });

  it('only the owner with its epoch can seal', async () => {
    const guest = await ownedBySource();
    expect((await errorOf(shared.seal(guest, 1, 'dst', 18))).code).toBe('FENCED');
    expect((await errorOf(shared.seal(guest, 2, 'src', 18))).code).toBe('FENCED');
    expect((await errorOf(shared.seal(newGuest(), 1, 'src', 0))).code).toBe('FENCED');
    // A source that never appended seals at 0.
    const empty = newGuest();
    await shared.claim(empty, { host: 'src', expectedEpoch: 'any' });
    expect(await shared.seal(empty, 1, 'src', 0)).toEqual({ sealedAt: 0, epoch: 1, target: null });
    expect(await shared.lastOffset(empty)).toBe(0);
  });
});
