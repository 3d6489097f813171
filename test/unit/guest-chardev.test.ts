/**
 * The chardev's stages (sidecar/guest.ts CHARDEV_STAGES) on a real guest reading a
 * real TCP peer: whatever the order sinks connect in, `handoff` sees each event
 * before capture acted on it and `console` and `replication` after, so a byte is
 * seen unnumbered at `handoff` and in the log at the later stages.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { SocketPeer } from '../support/daemon.js';
import { openTcpGuest } from '../support/tcp-guest.js';
import { removeTmpDirs } from '../support/tmp.js';
import { waitFor } from '../support/wait.js';

afterAll(async () => {
  await removeTmpDirs();
});

describe('Guest chardev stages', () => {
  it('calls handoff before capture, then console, then replication, whatever the order they connected in', async () => {
    const peer = await SocketPeer.listen();
    const guest = await openTcpGuest(peer, 'guest-stages');
    const seen: string[] = [];
    const at = (stage: string, what: string) => seen.push(`${stage} ${what} end=${guest.log.end}`);
    guest.observeChardev('replication', {
      open: () => at('replication', 'open'),
      data: (chunk) => at('replication', `data ${chunk.length}`),
    });
    guest.observeChardev('console', {
      open: () => at('console', 'open'),
      data: (chunk) => at('console', `data ${chunk.length}`),
    });
    guest.observeChardev('handoff', {
      open: () => at('handoff', 'open'),
      data: (chunk) => at('handoff', `data ${chunk.length}`),
    });
    try {
      guest.start();
      await peer.waitForConnections(1);
      await waitFor('the open', () => seen.length >= 3);
      const marker = guest.log.end; // capture started boot 1 on the open
      expect(marker).toBeGreaterThan(0);
      expect(seen).toEqual([
        'handoff open end=0',
        `console open end=${marker}`,
        `replication open end=${marker}`,
      ]);
      peer.send('0123456789');
      await waitFor('the data', () => seen.length >= 6);
      expect(seen.slice(3)).toEqual([
        `handoff data 10 end=${marker}`,
        `console data 10 end=${marker + 10}`,
        `replication data 10 end=${marker + 10}`,
      ]);
    } finally {
      await guest.close(5_000);
      await peer.close();
    }
  });
});
