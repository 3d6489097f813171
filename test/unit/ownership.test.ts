/**
 * The ownership state machine and its one decision (store/replication/ownership.ts),
 * on their own: which events each role allows, and what an owner record means to a
 * host, for every standing (docs/design.md "Ownership").
 */
import { describe, expect, it } from 'vitest';
import {
  type Knowledge,
  learn,
  NO_KNOWLEDGE,
  type Standing,
  transition,
  verdict,
} from '../../store/replication/ownership.js';
import type { OwnerRecord } from '../../store/replication/shared-log.js';

function record(patch: Partial<OwnerRecord>): OwnerRecord {
  return {
    epoch: 0,
    host: null,
    next: null,
    boot: null,
    handoff: 'none',
    target: null,
    sealedAt: null,
    skippedBytes: 0,
    oldestOffset: null,
    streamEnd: null,
    entries: 0,
    prevHost: null,
    prevHandoff: 'none',
    ...patch,
  };
}

const owner = (epoch: number, sealed = false): Standing => ({ kind: 'owner', epoch, sealed });
const claimer: Standing = { kind: 'claim-if-unowned' };
const follower: Standing = { kind: 'follower' };
const knows = (epoch: number, host: string | null = null): Knowledge => ({ epoch, host });

describe('transition', () => {
  it('follows the table and refuses what it does not allow', () => {
    expect(transition('unverified', 'confirmed')).toBe('owner');
    expect(transition('owner', 'handoff-requested')).toBe('handing-off');
    expect(transition('handing-off', 'sealed')).toBe('sealed');
    expect(transition('sealed', 'handed-off')).toBe('handed-off');
    expect(transition('owner', 'release-requested')).toBe('releasing');
    expect(transition('incoming', 'incoming-claimed')).toBe('adopting');
    expect(() => transition('follower', 'claimed')).toThrow(/not allowed/);
    expect(() => transition('handed-off', 'confirmed')).toThrow(/not allowed/);
    expect(() => transition('released', 'may-claim')).toThrow(/not allowed/);
  });
});

describe('verdict', () => {
  it('a restarted source that handed off never claims, whatever the record says', () => {
    for (const r of [
      record({ epoch: 2, host: 'b' }),
      record({}),
      record({ epoch: 2, handoff: 'released' }),
      record({ epoch: 1, host: 'c' }),
    ]) {
      expect(verdict('a', follower, knows(2, 'b'), r).kind).toBe('follow');
    }
  });

  it('an explicit attach claims only an unowned stream it knows nothing newer than', () => {
    expect(verdict('a', claimer, NO_KNOWLEDGE, record({}))).toEqual({ kind: 'claim', expectedEpoch: 0 });
    expect(verdict('a', claimer, knows(3), record({ epoch: 3, handoff: 'released' }))).toEqual({
      kind: 'claim',
      expectedEpoch: 3,
    });
    expect(verdict('a', claimer, NO_KNOWLEDGE, record({ epoch: 1, host: 'b' })).kind).toBe('follow');
    const empty = verdict('a', claimer, knows(2, 'b'), record({}));
    expect(empty.kind).toBe('follow');
    expect(empty.kind === 'follow' && empty.reason).toMatch(/knows epoch 2/);
  });

  it('an owner reclaims only what Redis lost, and is fenced by any later epoch', () => {
    expect(verdict('a', owner(3), knows(3, 'a'), record({}))).toEqual({ kind: 'reclaim', expectedEpoch: 0 });
    expect(verdict('a', owner(3), knows(3, 'a'), record({ epoch: 2, host: 'c' }))).toEqual({
      kind: 'reclaim',
      expectedEpoch: 2,
    });
    expect(verdict('a', owner(3), knows(3, 'a'), record({ epoch: 4, host: 'b' })).kind).toBe('fenced');
    expect(verdict('a', owner(3, true), knows(3, 'a'), record({ epoch: 4, host: 'b' })).kind).toBe(
      'handed-off',
    );
    expect(verdict('a', owner(3), knows(5, 'b'), record({})).kind).toBe('fenced');
    expect(verdict('a', owner(3), knows(3, 'a'), record({ epoch: 3, handoff: 'released' })).kind).toBe(
      'released',
    );
    expect(verdict('a', owner(3), knows(3, 'a'), record({ epoch: 3, host: 'c' })).kind).toBe('fenced');
  });

  it('a record naming this host is ownership, unless the host knows a later epoch', () => {
    expect(verdict('a', follower, knows(4, 'a'), record({ epoch: 4, host: 'a', handoff: 'sealed' }))).toEqual(
      {
        kind: 'own',
        epoch: 4,
        sealed: true,
      },
    );
    expect(verdict('a', claimer, knows(5, 'b'), record({ epoch: 4, host: 'a' })).kind).toBe('follow');
  });

  it('learn keeps the highest epoch and its holder', () => {
    expect(learn(knows(2, 'b'), { epoch: 1, host: 'a' })).toEqual(knows(2, 'b'));
    expect(learn(knows(2, 'b'), { epoch: 3, host: 'c' })).toEqual(knows(3, 'c'));
    expect(learn(knows(2, null), { epoch: 2, host: 'b' })).toEqual(knows(2, 'b'));
  });
});
