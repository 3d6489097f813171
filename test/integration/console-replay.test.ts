/**
 * Late joiners and resume by offset under a flood, over real sockets against a real
 * daemon: every viewer's bytes are compared byte for byte with the log read through
 * the API. No gap and no duplicate between replay and live bytes, nor across a
 * reconnect, whether the resume point is in memory (the ring) or only in the files.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { issueViewerToken, type ViewerMode } from '../../sidecar/console/viewer-token.js';
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
import { waitFor } from '../support/wait.js';

const SECRET = 'console-replay-test-secret-0123456789abc';
const REPLAY_BYTES = 16 * 1024;
const MiB = 1024 * 1024;

function token(guest: string, mode: ViewerMode = 'ro'): string {
  return issueViewerToken(Buffer.from(SECRET), { guest, mode, ttlMs: 600_000 });
}

/** Deterministic bytes of every value (NULs and escape bytes included), in chunks of varying size. */
class Flood {
  sent = 0;
  done = false;
  private state = 0x9e3779b9;

  constructor(
    private readonly peer: SocketPeer,
    private readonly total: number,
  ) {}

  private random(): number {
    // xorshift32
    let x = this.state;
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    this.state = x >>> 0;
    return this.state;
  }

  async run(): Promise<void> {
    const socket = this.peer.current!;
    while (this.sent < this.total) {
      const size = Math.min(this.total - this.sent, 1 + (this.random() % (16 * 1024)));
      const chunk = Buffer.allocUnsafe(size);
      for (let i = 0; i < size; i++) chunk[i] = this.random() & 0xff;
      this.sent += size;
      if (!socket.write(chunk)) await new Promise((r) => socket.once('drain', r));
      // Let the daemon and the viewers run between chunks now and then.
      if (this.random() % 8 === 0) await new Promise((r) => setImmediate(r));
    }
    this.done = true;
  }

  reached(bytes: number): Promise<true> {
    return waitFor(`the flood to pass ${bytes} bytes`, () => this.sent >= bytes || undefined, {
      timeoutMs: 60_000,
      intervalMs: 2,
    });
  }
}

let d: InProcessDaemon;

async function statusOf(id: string): Promise<GuestStatusJson> {
  return (await (await d.api('GET', `/v1/guests/${id}`)).json()) as never;
}

/** Checks that each of a viewer's segments is the log at its offset. */
function expectMatchesLog(viewer: ConsoleViewer, log: Buffer, logStart: number, label: string): void {
  expect(viewer.protocolErrors, label).toEqual([]);
  for (const seg of viewer.segments) {
    const got = Buffer.concat(seg.bytes);
    const want = log.subarray(seg.offset - logStart, seg.offset - logStart + got.length);
    expect(want.length, `${label}: segment at ${seg.offset} lies within the log`).toBe(got.length);
    expect(got.equals(want), `${label}: segment at ${seg.offset} (+${got.length}) equals the log`).toBe(true);
  }
}

beforeAll(async () => {
  d = await startInProcessDaemon({
    config: {
      // Viewers here must never skip: a generous bound, a small replay (so resumes reach the files).
      console: { tokenSecret: SECRET, replayBytes: REPLAY_BYTES, viewerBufferBytes: 64 * MiB },
    },
  });
});

afterAll(async () => {
  await stopAllInProcessDaemons();
  await closeAllPeers();
  await removeTmpDirs();
});

describe('late joiners and resume under a flood', () => {
  it('gives every viewer exactly the log, with no gap and no duplicate', async () => {
    const peer = await SocketPeer.listen();
    await d.api('PUT', '/v1/guests/flood', {
      source: { type: 'tcp', host: '127.0.0.1', port: peer.port },
      rateLimit: { bytesPerSec: 0, burstBytes: 1 },
      rotation: { maxFileBytes: 64 * MiB, maxFiles: 2 },
    });
    await peer.waitForConnections(1);
    // Some output before anyone watches, so the first replay is a real one.
    peer.send(Buffer.alloc(40 * 1024, 0x41));
    await waitFor('the prelude in the log', async () => (await statusOf('flood')).flushedOffset > 40 * 1024);

    const flood = new Flood(peer, 8 * MiB);
    const early = await ConsoleViewer.connect(d.url, 'flood', { token: token('flood') });
    expect(early.welcome).toMatchObject({ clamped: false });
    // The replay: the last REPLAY_BYTES of what was there.
    const endAtJoin = (await statusOf('flood')).offset;
    expect(early.welcome?.offset).toBe(endAtJoin - REPLAY_BYTES);

    const flooding = flood.run();
    await flood.reached(0.5 * MiB);
    const resumer = await ConsoleViewer.connect(d.url, 'flood', { token: token('flood') });
    await flood.reached(1 * MiB);
    const late1 = await ConsoleViewer.connect(d.url, 'flood', { token: token('flood') });
    const fromZero = await ConsoleViewer.connect(d.url, 'flood', { token: token('flood'), from: 0 });
    expect(fromZero.welcome).toMatchObject({ offset: 0, clamped: false });

    await flood.reached(2 * MiB);
    await resumer.waitForOffset((resumer.welcome?.offset as number) + 1);
    await resumer.close();
    const resumeAt = resumer.next;
    await flood.reached(4 * MiB);
    // Far behind the ring now: the resume reads the files while the flood goes on.
    const resumed = await ConsoleViewer.connect(d.url, 'flood', { token: token('flood'), from: resumeAt });
    expect(resumed.welcome).toMatchObject({ offset: resumeAt, clamped: false });

    await flood.reached(5 * MiB);
    const late2 = await ConsoleViewer.connect(d.url, 'flood', { token: token('flood') });
    // Close and come straight back: the resume point is still in memory.
    await flood.reached(6 * MiB);
    await late2.waitForOffset((late2.welcome?.offset as number) + 1);
    await late2.close();
    const quickAt = late2.next;
    const quick = await ConsoleViewer.connect(d.url, 'flood', { token: token('flood'), from: quickAt });
    expect(quick.welcome).toMatchObject({ offset: quickAt, clamped: false });

    await flooding;
    await waitFor('the log to be flushed', async () => {
      const s = await statusOf('flood');
      return s.flushedOffset === s.offset && s.offset >= 40 * 1024 + 8 * MiB;
    });
    const { offset: end } = await statusOf('flood');
    const all = [early, resumed, late1, fromZero, quick];
    for (const v of all) await v.waitForOffset(end, 60_000);

    const log = await readLog(d, 'flood', { start: 0, limit: end });
    expect(log.start).toBe(0);
    expect(log.bytes.length).toBe(end);
    for (const [label, v] of Object.entries({ early, resumer, resumed, late1, fromZero, late2, quick })) {
      expect(
        v.messages.filter((m) => m.type === 'skipped'),
        label,
      ).toEqual([]);
      expectMatchesLog(v, log.bytes, 0, label);
    }
    // One contiguous run each, up to the end of the log.
    for (const v of all) {
      expect(v.segments.length).toBe(1);
      expect(v.next).toBe(end);
    }
    // Across the reconnects: the second connection starts exactly where the first stopped.
    expect(resumed.segments[0]!.offset).toBe(resumer.next);
    expect(quick.segments[0]!.offset).toBe(late2.next);
    expect(fromZero.segments[0]!.offset).toBe(0);
    const consoleStatus = (await statusOf('flood')).console;
    expect(consoleStatus.skippedBytes).toBe(0);
    // fromZero started before the ring and was served from the files first (resumed too,
    // unless a live viewer still held the ring back to where it resumed).
    expect(consoleStatus.startsFromLog).toBeGreaterThanOrEqual(1);
    for (const v of all) await v.close();
  });

  it('clamps a resume from before the oldest byte kept, and says so', async () => {
    const peer = await SocketPeer.listen();
    await d.api('PUT', '/v1/guests/tiny', {
      source: { type: 'tcp', host: '127.0.0.1', port: peer.port },
      rateLimit: { bytesPerSec: 0, burstBytes: 1 },
      rotation: { maxFileBytes: 4096, maxFiles: 2 },
    });
    await peer.waitForConnections(1);
    for (let i = 0; i < 256; i++) peer.send(Buffer.alloc(1024, 0x30 + (i % 10)));
    await waitFor('output to rotate away', async () => {
      const s = await statusOf('tiny');
      return s.flushedOffset === s.offset && s.offset >= 256 * 1024 && s.oldestOffset > 0;
    });
    const v = await ConsoleViewer.connect(d.url, 'tiny', { token: token('tiny'), from: 0 });
    expect(v.welcome?.['clamped']).toBe(true);
    const start = v.welcome?.offset as number;
    expect(start).toBeGreaterThan(0);
    const s = await statusOf('tiny');
    await v.waitForOffset(s.offset);
    const log = await readLog(d, 'tiny', { start: 0 });
    expect(start).toBeLessThanOrEqual(log.start);
    expect(v.output.subarray(log.start - start).equals(log.bytes)).toBe(true);

    // A resume point past the end serves from the end.
    const ahead = await ConsoleViewer.connect(d.url, 'tiny', { token: token('tiny'), from: s.offset + 1000 });
    expect(ahead.welcome).toMatchObject({ offset: s.offset, clamped: false });
    peer.send('after');
    await ahead.waitForText('after');
    expect(ahead.text).toBe('after');
    await v.close();
    await ahead.close();
  });
});
