/**
 * Rate limits on a real daemon: a guest flooding past its bucket keeps about what the
 * bucket allows, and its log says exactly how much was dropped (the suppressed-bytes
 * markers add up to sent − kept); a guest beside it is untouched; the host-wide bucket
 * limits guests together.
 */
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import {
  checkCounterLog,
  closeAllPeers,
  counterLine,
  type DaemonHandle,
  readWholeLog,
  SocketPeer,
  startDaemon,
  stopAllDaemons,
} from '../support/daemon.js';
import { removeTmpDirs } from '../support/tmp.js';
import { sleep, waitFor } from '../support/wait.js';

const MARKER = /\r\n\[consoled\] ([^\r\n]*)\r\n/g;
const SUPPRESSED = /^(\d+) bytes suppressed by rate limit$/;

interface Status {
  state: string;
  drops: { suppressedBytes: number; lostBytes: number; suppressing: boolean };
  rateLimit: { bytesPerSec: number; burstBytes: number };
}

/** The guest's bytes in a log (markers removed) and the suppressed counts of its markers. */
function splitLog(log: Buffer): { kept: Buffer; suppressed: number[]; markers: string[] } {
  const text = log.toString('latin1');
  const markers = [...text.matchAll(MARKER)].map((m) => m[1]!);
  const suppressed = markers
    .map((m) => SUPPRESSED.exec(m))
    .filter((m) => m !== null)
    .map((m) => Number(m[1]));
  return { kept: Buffer.from(text.replace(MARKER, ''), 'latin1'), suppressed, markers };
}

/** A guest that writes counter lines in batches on a timer, counting what it sent. */
class TimedFlood {
  next = 0;
  sent = 0;

  constructor(private readonly peer: SocketPeer) {}

  /** Writes `batchLines` lines every `everyMs` until `totalBytes` are sent. */
  async run(totalBytes: number, batchLines: number, everyMs = 5): Promise<void> {
    while (this.sent < totalBytes) {
      this.line(batchLines);
      await sleep(everyMs);
    }
  }

  line(count = 1): void {
    let batch = '';
    for (let i = 0; i < count; i++) batch += counterLine(this.next++);
    this.sent += batch.length;
    this.peer.send(batch);
  }
}

/**
 * Ends a suppression episode: once the bucket has refilled, the next chunk is kept and
 * the marker with the episode's count goes before it. Sends one line at a time until
 * the guest is not suppressing any more and the last line is in the log.
 */
async function endEpisode(d: DaemonHandle, id: string, flood: TimedFlood): Promise<void> {
  await waitFor(
    `${id}: the suppression episode to end`,
    async () => {
      flood.line();
      await sleep(100);
      const s = await d.json<Status>('GET', `/v1/guests/${id}`);
      if (s.drops.suppressing) return false;
      const { bytes } = await readWholeLog(d, id);
      return bytes.toString('latin1').endsWith(counterLine(flood.next - 1));
    },
    { timeoutMs: 20_000 },
  );
}

async function attachPeer(
  d: DaemonHandle,
  id: string,
  extra: Record<string, unknown> = {},
): Promise<SocketPeer> {
  const peer = await SocketPeer.listen();
  await d.json('PUT', `/v1/guests/${id}`, {
    source: { type: 'tcp', host: '127.0.0.1', port: peer.port },
    ...extra,
  });
  await peer.waitForConnections(1);
  await waitFor(
    `${id} connected`,
    async () => (await d.json<Status>('GET', `/v1/guests/${id}`)).state === 'connected',
  );
  return peer;
}

/** The metric sample for one guest from `/metrics`. */
async function metric(d: DaemonHandle, name: string, guest: string): Promise<number> {
  const text = await (await d.api('GET', '/metrics')).text();
  const line = text.split('\n').find((l) => l.startsWith(`${name}{guest="${guest}"}`));
  if (!line) throw new Error(`no ${name} for ${guest} in /metrics`);
  return Number(line.split(' ').pop());
}

afterEach(async () => {
  await stopAllDaemons();
  await closeAllPeers();
});

afterAll(async () => {
  await removeTmpDirs();
});

describe('per-guest rate limit', () => {
  it('keeps about what the bucket allows, accounts for every dropped byte, and leaves the other guest alone', async () => {
    const d = await startDaemon();
    const began = Date.now();
    const flooderPeer = await attachPeer(d, 'flooder', {
      rateLimit: { bytesPerSec: 16 * 1024, burstBytes: 32 * 1024 },
    });
    const quietPeer = await attachPeer(d, 'quiet');
    const flood = new TimedFlood(flooderPeer);

    // The quiet guest writes a line now and then while the other floods (~1.3 MB/s).
    let quietSent = '';
    const quiet = (async () => {
      for (let i = 0; i < 100; i++) {
        const line = `quiet ${i} \x00\xff\x1b[0m\r\n`;
        quietSent += line;
        quietPeer.send(Buffer.from(line, 'latin1'));
        await sleep(15);
      }
    })();
    await flood.run(2 * 1024 * 1024, 200); // ~1.3 MB/s for ~1.5 s
    await quiet;
    await endEpisode(d, 'flooder', flood);
    const elapsedSec = (Date.now() - began) / 1000;

    const { bytes } = await readWholeLog(d, 'flooder');
    const { kept, suppressed, markers } = splitLog(bytes);
    const droppedByMarkers = suppressed.reduce((a, b) => a + b, 0);
    const context = `sent ${flood.sent}, kept ${kept.length}, markers ${JSON.stringify(markers)}`;
    expect(suppressed.length, context).toBeGreaterThanOrEqual(1);
    // Every byte sent is either in the log or counted by a marker: exactly.
    expect(kept.length + droppedByMarkers, context).toBe(flood.sent);
    // About what the bucket allows: at least the burst, at most burst + rate × time.
    expect(kept.length, context).toBeGreaterThanOrEqual(32 * 1024);
    expect(kept.length, context).toBeLessThanOrEqual(32 * 1024 + 16 * 1024 * elapsedSec + 1024);
    expect(flood.sent, context).toBeGreaterThan(4 * kept.length);
    // What was kept is whole stretches of the guest's output, in order, cut only where a marker says so.
    const report = checkCounterLog(bytes);
    for (const jump of report.jumps) expect(jump.marker).toMatch(SUPPRESSED);
    expect(report.lines[report.lines.length - 1]).toBe(flood.next - 1);

    const status = await d.json<Status>('GET', '/v1/guests/flooder');
    expect(status.drops.suppressedBytes, context).toBe(droppedByMarkers);
    expect(status.drops.suppressing).toBe(false);
    expect(status.drops.lostBytes).toBe(0);
    expect(status.rateLimit).toEqual({ bytesPerSec: 16 * 1024, burstBytes: 32 * 1024 });
    expect(await metric(d, 'consoled_guest_bytes_suppressed_total', 'flooder')).toBe(droppedByMarkers);

    // The quiet guest got everything, byte for byte, and no marker but its boot.
    const quietLog = splitLog((await readWholeLog(d, 'quiet')).bytes);
    expect(quietLog.kept.equals(Buffer.from(quietSent, 'latin1'))).toBe(true);
    expect(quietLog.markers).toEqual([expect.stringMatching(/^boot 1 started at /)]);
    expect((await d.json<Status>('GET', '/v1/guests/quiet')).drops.suppressedBytes).toBe(0);
  });
});

describe('host-wide rate limit', () => {
  it('limits all guests together, each one accounting for its own drops', async () => {
    const d = await startDaemon({
      config: {
        hostRateLimit: { bytesPerSec: 16 * 1024, burstBytes: 32 * 1024 },
        defaults: { rateLimit: { bytesPerSec: 0, burstBytes: 1 } },
      },
    });
    const began = Date.now();
    const a = new TimedFlood(await attachPeer(d, 'host-a'));
    const b = new TimedFlood(await attachPeer(d, 'host-b'));
    await Promise.all([a.run(1024 * 1024, 100), b.run(1024 * 1024, 100)]);
    await endEpisode(d, 'host-a', a);
    await endEpisode(d, 'host-b', b);
    const elapsedSec = (Date.now() - began) / 1000;

    let keptTotal = 0;
    for (const [id, flood] of [
      ['host-a', a],
      ['host-b', b],
    ] as const) {
      const { bytes } = await readWholeLog(d, id);
      const { kept, suppressed, markers } = splitLog(bytes);
      const dropped = suppressed.reduce((x, y) => x + y, 0);
      const context = `${id}: sent ${flood.sent}, kept ${kept.length}, markers ${JSON.stringify(markers)}`;
      expect(suppressed.length, context).toBeGreaterThanOrEqual(1);
      expect(kept.length + dropped, context).toBe(flood.sent);
      expect((await d.json<Status>('GET', `/v1/guests/${id}`)).drops.suppressedBytes, context).toBe(dropped);
      checkCounterLog(bytes);
      keptTotal += kept.length;
    }
    // Neither guest has a limit of its own: only the shared bucket held them back.
    expect(keptTotal).toBeGreaterThanOrEqual(32 * 1024);
    expect(keptTotal).toBeLessThanOrEqual(32 * 1024 + 16 * 1024 * elapsedSec + 2048);
    expect(a.sent + b.sent).toBeGreaterThan(4 * keptTotal);
  });
});
