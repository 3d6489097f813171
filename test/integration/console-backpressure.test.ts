/**
 * A stalled viewer (a client that stops reading its socket) against a real daemon:
 * it must not slow a fast viewer or the capture, and it gets `skipped` (with the
 * offset to continue from) or is closed with 4429 VIEWER_TOO_SLOW. What it did get
 * is still the log, byte for byte, around the holes it was told about.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { issueViewerToken } from '../../sidecar/console/viewer-token.js';
import { ConsoleViewer, type GuestStatusJson } from '../support/console-viewer.js';
import {
  closeAllPeers,
  type InProcessDaemon,
  readLog,
  SocketPeer,
  startInProcessDaemon,
  stopAllInProcessDaemons,
} from '../support/daemon.js';
import { removeTmpDirs } from '../support/tmp.js';
import { sleep, waitFor } from '../support/wait.js';

const SECRET = 'console-backpressure-test-secret-012345678';
const MiB = 1024 * 1024;
const TOTAL = 32 * MiB;

let d: InProcessDaemon;

async function statusOf(id: string): Promise<GuestStatusJson> {
  return (await (await d.api('GET', `/v1/guests/${id}`)).json()) as GuestStatusJson;
}

beforeAll(async () => {
  d = await startInProcessDaemon({
    config: {
      console: {
        tokenSecret: SECRET,
        viewerBufferBytes: 1 * MiB,
        socketHighWaterBytes: 256 * 1024,
        slowViewerTimeoutMs: 2000,
        keepaliveIntervalMs: 600_000,
      },
    },
  });
});

afterAll(async () => {
  await stopAllInProcessDaemons();
  await closeAllPeers();
  await removeTmpDirs();
});

describe('a stalled viewer', () => {
  it('skips ahead or is closed, and never slows the fast viewer or the capture', async () => {
    const peer = await SocketPeer.listen();
    await d.api('PUT', '/v1/guests/stall', {
      source: { type: 'tcp', host: '127.0.0.1', port: peer.port },
      rateLimit: { bytesPerSec: 0, burstBytes: 1 },
      rotation: { maxFileBytes: 64 * MiB, maxFiles: 2 },
    });
    await peer.waitForConnections(1);
    const tok = issueViewerToken(Buffer.from(SECRET), { guest: 'stall', mode: 'ro', ttlMs: 600_000 });
    const fast = await ConsoleViewer.connect(d.url, 'stall', { token: tok });
    const stalled = await ConsoleViewer.connect(d.url, 'stall', { token: tok });
    stalled.ws.pause(); // stops reading: its kernel buffers fill, then consoled's bound

    const socket = peer.current!;
    let sent = 0;
    const chunk = Buffer.alloc(64 * 1024);
    for (let n = 0; sent < TOTAL; n++) {
      chunk.fill(0x20 + (n % 90));
      sent += chunk.length;
      if (!socket.write(chunk)) await new Promise((r) => socket.once('drain', r));
      // Bursts of 512 KiB, about 32 MiB/s: far above any serial console, within what the
      // disk here takes, and what the fast viewer (in this process, beside the daemon) reads
      // on a busy machine.
      if (n % 8 === 7) await sleep(16);
    }
    await waitFor('the log to be flushed', async () => {
      const s = await statusOf('stall');
      return s.flushedOffset === s.offset && s.offset >= TOTAL;
    });
    const s = await statusOf('stall');
    const end = s.offset as number;
    // The capture kept everything (nothing dropped toward the log).
    expect(s.drops).toMatchObject({ lostBytes: 0, suppressedBytes: 0 });
    await fast.waitForOffset(end, 60_000);

    // Before the stalled viewer reads again, consoled has already made it skip (or closed it).
    await waitFor('the stalled viewer to be skipped or closed', async () => {
      const c = (await statusOf('stall')).console;
      return c.skippedBytes > 0 || c.slowDisconnects > 0;
    });
    stalled.ws.resume();
    const outcome = await Promise.race([
      stalled.waitFor('skipped', () => true, 0, 30_000).then(() => 'skipped'),
      stalled.closed.then((c) => `closed ${c.code} ${c.reason}`),
    ]);
    expect(outcome).toMatch(/^(skipped|closed (4429 VIEWER_TOO_SLOW|1006 ))$/);

    const log = await readLog(d, 'stall', { start: 0, limit: end });
    expect(log.start).toBe(0);
    // The fast viewer: everything, one contiguous run, byte for byte.
    expect(fast.messages.filter((m) => m.type === 'skipped')).toEqual([]);
    expect(fast.segments.length).toBe(1);
    const f = fast.segments[0]!;
    expect(f.offset + f.length).toBe(end);
    expect(Buffer.concat(f.bytes).equals(log.bytes.subarray(f.offset, end))).toBe(true);

    // The stalled viewer: what it got is the log at the offsets it was told, and every hole was announced.
    // A sleep: frames already sent to the stalled viewer may still be in flight; what
    // is checked is only what arrived, so a longer wait cannot hide a defect.
    await sleep(300);
    for (const seg of stalled.segments) {
      const got = Buffer.concat(seg.bytes);
      expect(got.equals(log.bytes.subarray(seg.offset, seg.offset + got.length))).toBe(true);
    }
    const skipped = stalled.messages.filter((m) => m.type === 'skipped');
    let holes = 0;
    for (let i = 1; i < stalled.segments.length; i++) {
      const prev = stalled.segments[i - 1]!;
      holes += stalled.segments[i]!.offset - (prev.offset + prev.length);
      expect(skipped.some((m) => m.offset === stalled.segments[i]!.offset)).toBe(true);
    }
    expect(skipped.reduce((n, m) => n + (m['bytes'] as number), 0)).toBeGreaterThanOrEqual(holes);
    const c = (await statusOf('stall')).console;
    expect(c.skippedBytes).toBeGreaterThan(0);
    expect(c.skippedBytes).toBeGreaterThanOrEqual(holes);

    // The daemon is fine and the fast viewer still works.
    socket.write('still-alive');
    await fast.waitForText('still-alive');
    expect((await fetch(`${d.url}/healthz`)).status).toBe(200);
    await fast.close();
    if (!stalled.closeInfo) await stalled.close();
  });
});
