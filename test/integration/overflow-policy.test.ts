/**
 * The overflow policy (docs/design.md "Local store", invariant 1) against a real TCP
 * guest flooding counter lines:
 * - `block` with a working disk: the guest is held (its source not read) while the queue
 *   is above its high-water mark, and every byte it sent is in the log, none dropped;
 * - `drop` with the same flood and queue (20 and 100 ms read-coalescing windows): bytes are
 *   dropped and marked, every dropped byte under a marker, the guest never held;
 * - `block` with a disk that stops (a small tmpfs that fills): the daemon reads the guest
 *   again once the disk acknowledged less than `store.minProgressBytes` in
 *   `store.maxStallMs`, the guest keeps making progress while the disk is full, and the
 *   gap marker counts exactly what was dropped.
 * The tmpfs needs root (mount); that case is skipped, with the reason, where mounting is
 * not allowed.
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import {
  CAPTURE_GAP_MARKER,
  COUNTER_LINE_BYTES,
  CounterFlood,
  checkCounterLog,
  closeAllPeers,
  readWholeLog,
  SocketPeer,
  startDaemon,
  stopAllDaemons,
} from '../support/daemon.js';
import { removeTmpDirs, tmpDir } from '../support/tmp.js';
import { mountTmpfs, tmpfsUnavailableReason, unmountAllTmpfs } from '../support/tmpfs.js';
import { waitFor } from '../support/wait.js';

const GAP = CAPTURE_GAP_MARKER;

interface Status {
  offset: number;
  flushedOffset: number;
  chardev: { bytesIn: number };
  drops: { lostBytes: number };
  disk: { state: string; lastError: string | null; queuedBytes: number };
  overflow: { policy: string; blocking: boolean; diskStalled: boolean; holds: number; stalls: number };
}

const cannotMount = tmpfsUnavailableReason();

afterAll(async () => {
  await stopAllDaemons();
  await closeAllPeers();
  unmountAllTmpfs();
  await removeTmpDirs();
});

/** Bytes of guest output in a log: everything but consoled's markers. */
function guestBytes(log: Buffer): number {
  return log.toString('latin1').replace(/\r\n\[consoled\] [^\r\n]*\r\n/g, '').length;
}

/** Floods `lines` counter lines into a guest with `overflow` and a small queue; returns what the log holds. */
async function flood(
  overflow: 'block' | 'drop',
  lines: number,
  readCoalescing: { windowMs: number } = { windowMs: 20 },
) {
  const peer = await SocketPeer.listen();
  const d = await startDaemon({
    config: {
      defaults: { rateLimit: { bytesPerSec: 0, burstBytes: 1 }, readCoalescing },
      // A 256 KiB queue written 16 KiB at a time: a flood from the same machine outruns it.
      store: { maxQueueBytes: 256 * 1024, maxWriteBytes: 16 * 1024 },
    },
  });
  await d.json('PUT', '/v1/guests/flood', {
    source: { type: 'tcp', host: '127.0.0.1', port: peer.port },
    rotation: { maxFileBytes: 64 * 1024 * 1024, maxFiles: 2 },
    overflow,
  });
  await peer.waitForConnections(1);
  const sender = new CounterFlood(peer, { linesPerConnection: lines, batchLines: 256 });
  const status = () => d.json<Status>('GET', '/v1/guests/flood');
  await waitFor('the flood to be sent', () => sender.latestBurstDone, { timeoutMs: 60_000 });
  const settled = await waitFor(
    'the log to settle',
    async () => {
      const s = await status();
      // Every byte sent was read (bytesIn counts the dropped ones too), and the log is flushed.
      return s.chardev.bytesIn >= sender.sentBytes && s.flushedOffset === s.offset && s.disk.queuedBytes === 0
        ? s
        : undefined;
    },
    { timeoutMs: 60_000 },
  );
  // A marker for what was dropped is written once there is room: wait for its bytes too.
  const { bytes } = await readWholeLog(d, 'flood');
  await d.stop();
  return { settled, bytes, sent: sender.sentBytes, last: sender.next - 1 };
}

describe('overflow policy', () => {
  it('block, with a working disk: the guest is held and loses nothing', async () => {
    const lines = Math.ceil((24 * 1024 * 1024) / COUNTER_LINE_BYTES);
    const { settled, bytes, sent, last } = await flood('block', lines);
    expect(settled.overflow.policy).toBe('block');
    // The guest was slowed: its source was not read while the queue was high.
    expect(settled.overflow.holds).toBeGreaterThan(0);
    expect(settled.overflow.stalls).toBe(0);
    expect(settled.drops.lostBytes).toBe(0);
    const report = checkCounterLog(bytes);
    expect(report.jumps).toEqual([]);
    expect(report.markers.filter((m) => GAP.test(m))).toEqual([]);
    expect(report.lines.length).toBe(lines);
    expect(report.lines.at(-1)).toBe(last);
    expect(guestBytes(bytes)).toBe(sent);
  });

  // With 100 ms read-coalescing windows a read can exceed the whole queue
  // and be dropped while nothing is queued: no write is under way then to carry the
  // gap's marker, so it is written at once (capture.ts reportGapIfIdle).
  for (const windowMs of [20, 100]) {
    it(`drop, with the same flood and queue (${windowMs} ms read windows): bytes are dropped and marked, the guest never held`, async () => {
      const lines = Math.ceil((24 * 1024 * 1024) / COUNTER_LINE_BYTES);
      const { settled, bytes, sent } = await flood('drop', lines, { windowMs });
      expect(settled.overflow.policy).toBe('drop');
      expect(settled.overflow.holds).toBe(0);
      expect(settled.drops.lostBytes).toBeGreaterThan(0);
      const report = checkCounterLog(bytes);
      for (const jump of report.jumps) expect(jump.marker).toMatch(GAP);
      const lost = report.markers.map((m) => GAP.exec(m)).reduce((sum, m) => sum + (m ? Number(m[1]) : 0), 0);
      expect(lost).toBe(settled.drops.lostBytes);
      expect(guestBytes(bytes) + lost).toBe(sent);
    });
  }

  it.skipIf(cannotMount !== null)(
    `block, with a disk that fills: the guest is read again, and the gap is counted exactly${cannotMount ? ` (skipped: cannot mount a tmpfs: ${cannotMount})` : ''}`,
    async () => {
      const stateDir = join(tmpDir('overflow'), 'state');
      mkdirSync(stateDir);
      mountTmpfs(stateDir, '1m');
      const peer = await SocketPeer.listen();
      const d = await startDaemon({
        stateDir,
        config: {
          defaults: { rateLimit: { bytesPerSec: 0, burstBytes: 1 }, overflow: 'block' },
          store: { maxQueueBytes: 512 * 1024, maxWriteBytes: 64 * 1024, diskRetryMs: 50, maxStallMs: 200 },
        },
      });
      await d.json('PUT', '/v1/guests/full', {
        source: { type: 'tcp', host: '127.0.0.1', port: peer.port },
        rotation: { maxFileBytes: 256 * 1024, maxFiles: 16 },
      });
      const status = () => d.json<Status>('GET', '/v1/guests/full');
      await peer.waitForConnections(1);
      const sender = new CounterFlood(peer, { bytesPerSec: 2 * 1024 * 1024 });

      // The disk fills and stops acknowledging: the gate judges it stalled.
      const stalled = await waitFor('the disk to be judged stalled', async () => {
        const s = await status();
        return s.disk.state === 'disk-error' && s.overflow.diskStalled ? s : undefined;
      });
      expect(stalled.disk.lastError).toBe('ENOSPC');
      expect(stalled.overflow.blocking).toBe(false);
      // The guest is not held by the stuck disk: the daemon goes on reading it (well past
      // what the queue holds), dropping what does not fit, and the sender goes on sending.
      const readAt = stalled.chardev.bytesIn;
      const sentAt = sender.sentBytes;
      await waitFor('the guest to be read on while the disk is full', async () => {
        const s = await status();
        return (
          s.disk.state === 'disk-error' &&
          s.chardev.bytesIn > readAt + 4 * 1024 * 1024 &&
          sender.sentBytes > sentAt + 4 * 1024 * 1024
        );
      });
      expect((await status()).drops.lostBytes).toBeGreaterThan(0);

      // Room again: the log resumes, the gap is marked with its exact count.
      execFileSync('mount', ['-o', 'remount,size=64m', stateDir]);
      await waitFor('the log to be writable again', async () => (await status()).disk.state === 'open', {
        timeoutMs: 40_000,
      });
      sender.stop();
      const settled = await waitFor('the log to settle', async () => {
        const s = await status();
        return s.chardev.bytesIn >= sender.sentBytes &&
          s.flushedOffset === s.offset &&
          s.disk.queuedBytes === 0
          ? s
          : undefined;
      });
      const { bytes, start } = await readWholeLog(d, 'full');
      expect(start).toBe(0);
      const report = checkCounterLog(bytes);
      for (const jump of report.jumps) expect(jump.marker).toMatch(GAP);
      const gaps = report.markers.map((m) => GAP.exec(m)).filter((m) => m !== null);
      expect(gaps.length).toBeGreaterThanOrEqual(1);
      const lost = gaps.reduce((sum, m) => sum + Number(m[1]), 0);
      expect(lost).toBe(settled.drops.lostBytes);
      expect(guestBytes(bytes) + lost).toBe(sender.sentBytes);
      expect(settled.overflow.stalls).toBeGreaterThan(0);
      await d.stop();
    },
  );
});
