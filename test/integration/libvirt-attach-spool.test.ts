/**
 * The daemon's side of the libvirt hook, on the built daemon: the spool replayed at
 * start (sidecar/libvirt/attach-spool.ts) and `PUT ?waitConnectedMs=` (README "libvirt").
 */
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ensureSpoolDir, type SpoolEntry, writeSpoolEntry } from '../../sidecar/libvirt/spool-entry.js';
import { closeAllPeers, SocketPeer, startDaemon, stopAllDaemons } from '../support/daemon.js';
import { freePort } from '../support/free-port.js';
import { removeTmpDirs, tmpDir } from '../support/tmp.js';
import { waitFor } from '../support/wait.js';

afterAll(async () => {
  await stopAllDaemons();
  await closeAllPeers();
  await removeTmpDirs();
});

function attach(guest: string, port: number): SpoolEntry {
  return {
    version: 1,
    event: 'attach',
    guest,
    spec: { source: { type: 'tcp', host: '127.0.0.1', port } },
    domain: guest,
    operation: 'started',
    at: new Date().toISOString(),
  };
}

function detach(guest: string): SpoolEntry {
  return {
    version: 1,
    event: 'detach',
    guest,
    domain: guest,
    operation: 'release',
    at: new Date().toISOString(),
  };
}

describe('the libvirt spool replay', () => {
  it('applies the latest request per guest at start, removes what it applied, and keeps what it refused', async () => {
    const peer = await SocketPeer.listen();
    const stateDir = tmpDir('state');
    const spool = join(stateDir, 'libvirt-spool');
    await ensureSpoolDir(spool, null);
    // started then released while the daemon was away: never attached.
    await writeSpoolEntry(spool, attach('gone', peer.port), null);
    await writeSpoolEntry(spool, detach('gone'), null);
    // released then started again: attached.
    await writeSpoolEntry(spool, detach('back'), null);
    await writeSpoolEntry(spool, attach('back', peer.port), null);
    // a spec the daemon refuses
    await writeSpoolEntry(spool, { ...attach('bad', 1), spec: { source: { type: 'nope' } } }, null);
    const daemon = await startDaemon({ stateDir });
    const back = await daemon.json<{ state: string }>('GET', '/v1/guests/back');
    expect(back.state).not.toBe('stopped');
    await peer.waitForConnections(1);
    expect((await daemon.api('GET', '/v1/guests/gone')).status).toBe(404);
    expect((await daemon.api('GET', '/v1/guests/bad')).status).toBe(404);
    expect((await readdir(spool)).filter((n) => n.endsWith('.json'))).toEqual([]);
    const failed = await readdir(join(spool, 'failed'));
    expect(failed).toHaveLength(1);
    expect(failed[0]).toMatch(/-bad\.json$/);
    expect(daemon.logs()).toContain('libvirt spool: request not applied');
  });

  it('PUT ?waitConnectedMs answers once the source is connected, or after the bound with its state', async () => {
    const daemon = await startDaemon();
    const peer = await SocketPeer.listen();
    const connected = await daemon.json<{ state: string }>('PUT', '/v1/guests/w1?waitConnectedMs=5000', {
      source: { type: 'tcp', host: '127.0.0.1', port: peer.port },
    });
    expect(connected.state).toBe('connected');
    const nobody = await freePort();
    const waited = await daemon.json<{ state: string }>('PUT', '/v1/guests/w2?waitConnectedMs=300', {
      source: { type: 'tcp', host: '127.0.0.1', port: nobody },
    });
    expect(waited.state).not.toBe('connected');
    const refused = await daemon.api('PUT', '/v1/guests/w3?waitConnectedMs=30001', {
      source: { type: 'tcp', host: '127.0.0.1', port: nobody },
    });
    expect(refused.status).toBe(400);
    expect(((await refused.json()) as { error: { code: string } }).error.code).toBe('BAD_PARAMETER');
    await waitFor('w3 never attached', async () => (await daemon.api('GET', '/v1/guests/w3')).status === 404);
  });
});
