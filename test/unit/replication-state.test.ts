/**
 * The replication state file (store/replication/replication-state.ts, docs/design.md
 * "State files") on a real directory: what `load` makes of a missing file, a file of
 * an unknown version or role, and each role of version 1. Anything it cannot read is
 * `unreadable` (the host then follows), never a state that would let it claim.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  initialState,
  REPLICATION_STATE_FILE,
  REPLICATION_STATE_VERSION,
  ReplicationStateFile,
} from '../../store/replication/replication-state.js';

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'replication-state-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

const writeRaw = (value: unknown) => writeFile(join(dir, REPLICATION_STATE_FILE), JSON.stringify(value));

describe('ReplicationStateFile.load', () => {
  it('says missing when there is no file, and reads back what it saved', async () => {
    const file = new ReplicationStateFile(dir);
    expect(await file.load()).toEqual({ kind: 'missing' });
    const state = { ...initialState('host-a', 'owner', 120), epoch: 3, known: { epoch: 3, host: 'host-a' } };
    await file.save(state);
    expect(await file.load()).toEqual({ kind: 'state', state });
  });

  it('refuses a version it does not know, newer or older, and a role it does not know', async () => {
    const file = new ReplicationStateFile(dir);
    const good = { ...initialState('host-a', 'owner', 0), epoch: 1, known: { epoch: 1, host: 'host-a' } };
    for (const version of [REPLICATION_STATE_VERSION + 1, 0, '2', null]) {
      await writeRaw({ ...good, version });
      const loaded = await file.load();
      expect(loaded.kind, `version ${JSON.stringify(version)}`).toBe('unreadable');
    }
    await writeRaw({ ...good, role: 'supreme-owner' });
    expect(await file.load()).toMatchObject({
      kind: 'unreadable',
      why: expect.stringContaining('unknown role'),
    });
    await writeRaw({ ...good, role: 'unverified' }); // never saved: a restart always verifies again
    expect((await file.load()).kind).toBe('unreadable');
    await writeRaw({ ...good, known: undefined });
    expect((await file.load()).kind).toBe('unreadable');
    await writeRaw(['not', 'a', 'state']);
    expect((await file.load()).kind).toBe('unreadable');
  });

  it('upgrades version 1: an owner keeps its epoch; a handed-off or fenced host knows of a later one', async () => {
    const file = new ReplicationStateFile(dir);
    const v1 = { version: 1, host: 'host-a', epoch: 4, cursor: 900, skippedBytes: 7, published: true };
    await writeRaw({ ...v1, role: 'owner', sealedAt: 900 });
    expect(await file.load()).toEqual({
      kind: 'state',
      state: {
        version: REPLICATION_STATE_VERSION,
        host: 'host-a',
        role: 'owner',
        epoch: 4,
        known: { epoch: 4, host: 'host-a' },
        cursor: 900,
        skippedBytes: 7,
        published: true,
        sealedAt: 900,
      },
    });
    for (const role of ['handed-off', 'fenced'] as const) {
      await writeRaw({ ...v1, role });
      const loaded = await file.load();
      expect(loaded).toMatchObject({
        kind: 'state',
        state: { role, epoch: 4, known: { epoch: 5, host: null } },
      });
    }
  });

  it('does not carry over a version 1 migration cut short: the host follows instead', async () => {
    const file = new ReplicationStateFile(dir);
    for (const role of ['incoming', 'adopting', 'cancelled']) {
      await writeRaw({ version: 1, host: 'host-b', epoch: 2, cursor: 0, role });
      expect(await file.load(), role).toMatchObject({
        kind: 'unreadable',
        why: expect.stringContaining(role),
      });
    }
  });
});
