/**
 * Single-use viewer tokens stay spent across a restart (issue 12, "Also"): the built
 * daemon records each spent id in `<stateDir>/used-tokens` before admitting the
 * connection, loads the valid ones at start and prunes the expired ones. The attack:
 * replay a spent token after the daemon restarted or was upgraded.
 */
import { readFile, stat, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ConsoleViewer } from '../support/console-viewer.js';
import {
  closeAllPeers,
  type DaemonHandle,
  runDaemonToExit,
  SocketPeer,
  startDaemon,
  stopAllDaemons,
} from '../support/daemon.js';
import { removeTmpDirs, tmpDir } from '../support/tmp.js';
import { waitFor } from '../support/wait.js';

interface Issued {
  token: string;
  id: string;
}

let peer: SocketPeer;
let d: DaemonHandle;

beforeAll(async () => {
  peer = await SocketPeer.listen();
  d = await startDaemon({
    config: { guests: [{ id: 'vm', source: { type: 'tcp', host: '127.0.0.1', port: peer.port } }] },
  });
});

afterAll(async () => {
  await stopAllDaemons();
  await closeAllPeers();
  await removeTmpDirs();
});

describe('spent single-use tokens', () => {
  it('are refused after a restart, and expired ids are pruned from the journal at start', async () => {
    const once = await d.json<Issued>('POST', '/v1/guests/vm/tokens', {
      mode: 'ro',
      ttl: '10m',
      singleUse: true,
    });
    const brief = await d.json<Issued>('POST', '/v1/guests/vm/tokens', {
      mode: 'ro',
      ttl: 1500,
      singleUse: true,
    });
    for (const t of [once, brief]) {
      const v = await ConsoleViewer.connect(d.url, 'vm', { token: t.token });
      await v.close();
    }
    const journal = join(d.stateDir, 'used-tokens');
    expect(((await stat(journal)).mode & 0o777).toString(8)).toBe('600');
    expect(await readFile(journal, 'utf8')).toContain(brief.id);

    await d.restart();
    expect(await ConsoleViewer.refusedBothWays(d.url, 'vm', once.token)).toMatchObject({
      frame: { kind: 'close', closeCode: 4405, reason: 'TOKEN_REUSED' },
      header: { kind: 'http', status: 401, code: 'TOKEN_REUSED' },
    });
    // A new single-use token still works once.
    const fresh = await d.json<Issued>('POST', '/v1/guests/vm/tokens', {
      mode: 'ro',
      ttl: '10m',
      singleUse: true,
    });
    const v = await ConsoleViewer.connect(d.url, 'vm', { token: fresh.token });
    await v.close();

    // The brief token expired: the next start drops its line.
    await waitFor('the brief token to expire', async () => {
      const r = await ConsoleViewer.refusal(d.url, 'vm', { token: brief.token });
      return r.kind === 'close' && r.reason === 'TOKEN_EXPIRED';
    });
    await d.restart();
    const text = await readFile(journal, 'utf8');
    expect(text).toContain(once.id);
    expect(text).toContain(fresh.id);
    expect(text).not.toContain(brief.id);
  });

  it('are refused after an upgrade, by the successor, and one spent there stays spent', async () => {
    const spent = await d.json<Issued>('POST', '/v1/guests/vm/tokens', {
      mode: 'ro',
      ttl: '10m',
      singleUse: true,
    });
    const v = await ConsoleViewer.connect(d.url, 'vm', { token: spent.token });
    await v.close();
    const before = d.pid;
    await d.upgrade();
    expect(d.pid).not.toBe(before);
    expect(await ConsoleViewer.refusal(d.url, 'vm', { token: spent.token })).toMatchObject({
      kind: 'close',
      closeCode: 4405,
      reason: 'TOKEN_REUSED',
    });
    // Spent in the successor: refused after the next upgrade too.
    const next = await d.json<Issued>('POST', '/v1/guests/vm/tokens', {
      mode: 'ro',
      ttl: '10m',
      singleUse: true,
    });
    const w = await ConsoleViewer.connect(d.url, 'vm', { token: next.token });
    await w.close();
    await d.upgrade();
    for (const t of [spent, next]) {
      expect(await ConsoleViewer.refusal(d.url, 'vm', { token: t.token })).toMatchObject({
        kind: 'close',
        reason: 'TOKEN_REUSED',
      });
    }
  });

  it('a symbolic link planted as the journal is refused, not followed', async () => {
    const stateDir = tmpDir('state');
    const outside = join(tmpDir('outside'), 'victim');
    await writeFile(outside, 'precious\n');
    await symlink(outside, join(stateDir, 'used-tokens'));
    const { code, stderr } = await runDaemonToExit({
      stateDir,
      listen: { host: '127.0.0.1', port: 0 },
      adminToken: 'a-long-enough-admin-token-0123456789',
    });
    expect(code).toBe(1);
    expect(stderr).toContain(`UNSAFE_PATH: ${join(stateDir, 'used-tokens')} is a symbolic link`);
    expect(await readFile(outside, 'utf8')).toBe('precious\n');
  });
});
