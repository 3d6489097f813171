/**
 * The replicator's hands on a real guest reading a real TCP peer
 * (sidecar/replication/guest-control.ts): draining the chardev before a handoff's
 * seal must not take a pause in reading for a quiet guest.
 */
import { afterAll, describe, expect, it } from 'vitest';
import type { Guest } from '../../sidecar/guest.js';
import { GuestHandle } from '../../sidecar/replication/guest-control.js';
import { SocketPeer } from '../support/daemon.js';
import { openTcpGuest } from '../support/tcp-guest.js';
import { removeTmpDirs } from '../support/tmp.js';
import { waitFor } from '../support/wait.js';

afterAll(async () => {
  await removeTmpDirs();
});

/** A started guest, its handle and its connected peer, closed after `body`. */
async function withGuest(body: (guest: Guest, handle: GuestHandle, peer: SocketPeer) => Promise<void>) {
  const peer = await SocketPeer.listen();
  const guest = await openTcpGuest(peer, 'guest-control');
  const handle = new GuestHandle(guest);
  try {
    guest.start();
    await peer.waitForConnections(1);
    await body(guest, handle, peer);
  } finally {
    handle.dispose();
    await guest.close(5_000);
    await peer.close();
  }
}

describe('draining the chardev before a handoff', () => {
  it('waits while reading is paused, and ends only once what waited in the socket is in the log', async () => {
    await withGuest(async (guest, handle, peer) => {
      peer.send('before\r\n');
      await waitFor('the first line', () => guest.log.end > 0 && guest.capture.counters.capturedBytes >= 8);
      // Reading pauses (as for a log queue above its high-water mark); the guest's last
      // line waits in the socket, and the guest then goes quiet (the migration's pause).
      guest.source.pauseReading('test');
      peer.send('last line\r\n');
      const endBefore = guest.log.end;
      let resumedAt = 0;
      const resume = setTimeout(() => {
        resumedAt = performance.now();
        guest.source.resumeReading('test');
      }, 400);
      await handle.drainSource(50, 5_000);
      const drainedAt = performance.now();
      clearTimeout(resume);
      expect(resumedAt).toBeGreaterThan(0);
      expect(drainedAt - resumedAt).toBeGreaterThanOrEqual(49);
      expect(guest.log.end).toBe(endBefore + 'last line\r\n'.length);

      // With reading on, a quiet guest drains after the quiet time, not the timeout.
      const started = performance.now();
      await handle.drainSource(50, 5_000);
      expect(performance.now() - started).toBeLessThan(2_000);
    });
  });

  it('gives up at the timeout if reading stays paused', async () => {
    await withGuest(async (guest, handle) => {
      guest.source.pauseReading('test');
      const started = performance.now();
      await handle.drainSource(50, 300);
      expect(performance.now() - started).toBeGreaterThanOrEqual(299);
      guest.source.resumeReading('test');
    });
  });
});
