/** A real guest (sidecar/guest.ts) reading a real TCP peer, with a config of its own. */
import { silentLogger } from '../../common/logger.js';
import { validateConfig } from '../../sidecar/config.js';
import { Guest } from '../../sidecar/guest.js';
import type { SocketPeer } from './daemon.js';
import { tmpDir } from './tmp.js';

export async function openTcpGuest(peer: SocketPeer, name: string): Promise<Guest> {
  const config = validateConfig({
    stateDir: tmpDir(name),
    listen: { host: '127.0.0.1', port: 0 },
    adminToken: 'a'.repeat(32),
  });
  return Guest.open({
    id: 'g',
    spec: { source: { type: 'tcp', host: '127.0.0.1', port: peer.port } },
    declared: true,
    config,
    hostBucket: null,
    logger: silentLogger(),
  });
}
