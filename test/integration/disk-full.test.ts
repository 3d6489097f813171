/**
 * A full disk: the state dir lives on a 1 MiB tmpfs, a guest floods a counter pattern
 * until the disk is full. The daemon must stay up and say so (`disk.state`
 * 'disk-error', ENOSPC); when the tmpfs grows, the log resumes with a capture-gap
 * marker, every dropped byte is counted, and the file holds no partial or duplicated
 * chunk. Needs root (mount); skipped, with the reason, where mounting is not allowed.
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import {
  CAPTURE_GAP_MARKER,
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
const cannotMount = tmpfsUnavailableReason();

afterAll(async () => {
  await stopAllDaemons();
  await closeAllPeers();
  unmountAllTmpfs();
  await removeTmpDirs();
});

interface Status {
  offset: number;
  flushedOffset: number;
  chardev: { bytesIn: number };
  drops: { lostBytes: number; suppressedBytes: number };
  disk: { state: string; lastError: string | null; queuedBytes: number };
}

describe(`disk full${cannotMount ? ` (skipped: cannot mount a tmpfs: ${cannotMount})` : ''}`, () => {
  it.skipIf(cannotMount !== null)(
    'stays up, reports ENOSPC, and resumes with a counted gap and no torn or repeated chunk',
    async () => {
      const stateDir = join(tmpDir('disk'), 'state');
      mkdirSync(stateDir);
      mountTmpfs(stateDir, '1m');
      const peer = await SocketPeer.listen();
      const d = await startDaemon({
        stateDir,
        config: {
          defaults: { rateLimit: { bytesPerSec: 0, burstBytes: 1 } },
          // A 1 MiB queue: half a second of the flood, so it overflows because the disk
          // failed, not because a busy machine wrote a little late.
          store: { maxQueueBytes: 1024 * 1024, maxWriteBytes: 64 * 1024, diskRetryMs: 50 },
        },
      });
      await d.json('PUT', '/v1/guests/full', {
        source: { type: 'tcp', host: '127.0.0.1', port: peer.port },
        // 16 files of 256 KiB: four times what the disk holds, so it fills before anything rotates away.
        rotation: { maxFileBytes: 256 * 1024, maxFiles: 16 },
      });
      const status = () => d.json<Status>('GET', '/v1/guests/full');
      await peer.waitForConnections(1);
      // ~2 MB/s: fills the 1 MiB disk, then the queue, in about a second.
      const flood = new CounterFlood(peer, { bytesPerSec: 2 * 1024 * 1024 });

      // The disk fills: the daemon keeps answering and says why it cannot write.
      const failing = await waitFor('disk-error', async () => {
        const s = await status();
        return s.disk.state === 'disk-error' ? s : undefined;
      });
      expect(failing.disk.lastError).toBe('ENOSPC');
      await waitFor('the queue to overflow', async () => (await status()).drops.lostBytes > 0);
      expect((await fetch(`${d.url}/healthz`)).status).toBe(200);
      expect((await d.api('GET', '/v1/guests')).status).toBe(200);
      const metrics = await (await d.api('GET', '/metrics')).text();
      expect(metrics).toMatch(/consoled_guest_disk_errors_total\{guest="full"\} [1-9]/);

      // Room again: the log resumes by itself.
      execFileSync('mount', ['-o', 'remount,size=64m', stateDir]);
      await waitFor('the log to be writable again', async () => (await status()).disk.state === 'open', {
        timeoutMs: 40_000,
      });
      const resumedAt = (await status()).flushedOffset;
      await waitFor(
        'more output after the gap',
        async () => (await status()).flushedOffset > resumedAt + 256 * 1024,
      );
      flood.stop();
      // Settled: every byte sent was read (none left in the socket while the overflow gate
      // held the guest), and every byte read is in the files or dropped.
      const settled = await waitFor('the log to settle', async () => {
        const s = await status();
        return s.chardev.bytesIn >= flood.sentBytes &&
          s.flushedOffset === s.offset &&
          s.disk.queuedBytes === 0
          ? s
          : undefined;
      });

      const { bytes, start } = await readWholeLog(d, 'full');
      // Nothing rotated away, so every byte sent is in the log or counted by a marker.
      expect(start).toBe(0);
      const report = checkCounterLog(bytes); // no torn, repeated or out-of-order line
      const gaps = report.markers.map((m) => GAP.exec(m)).filter((m) => m !== null);
      expect(gaps.length, JSON.stringify(report.markers)).toBeGreaterThanOrEqual(1);
      expect(
        gaps.some((m) => m[2] === 'disk-error'),
        JSON.stringify(report.markers),
      ).toBe(true);
      // Lines are missing only where a gap marker says so, and the counts add up exactly.
      for (const jump of report.jumps) expect(jump.marker).toMatch(GAP);
      const lost = gaps.reduce((sum, m) => sum + Number(m[1]), 0);
      expect(settled.drops.lostBytes).toBe(lost);
      const kept = bytes.toString('latin1').replace(/\r\n\[consoled\] [^\r\n]*\r\n/g, '').length;
      expect(kept + lost).toBe(flood.sentBytes);
      expect(report.lines[report.lines.length - 1]).toBe(flood.next - 1);
      // No file holds a zero-filled hole or a stray byte: the files are exactly the log.
      const dir = join(stateDir, 'guests', 'full');
      const names = (await readdir(dir)).filter((n) => n.startsWith('console.log'));
      const sorted = names.sort((a, b) =>
        b === 'console.log'
          ? -1
          : a === 'console.log'
            ? 1
            : Number(b.split('.')[2]) - Number(a.split('.')[2]),
      );
      const files = Buffer.concat(await Promise.all(sorted.map((n) => readFile(join(dir, n)))));
      expect(files.equals(bytes)).toBe(true);

      await d.stop();
    },
  );
});
