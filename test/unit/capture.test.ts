/**
 * Capture (sidecar/capture/capture.ts) on a real LocalLog in a temp dir, no daemon: boot and
 * reattach markers where the chardev opens, output held while a connection is not
 * established, a gap marker (with the count lost) once a full queue has room again,
 * and one marker per rate-limit episode, written even when the guest goes quiet.
 */

import { pino } from 'pino';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { formatMarker } from '../../common/marker.js';
import { Capture, type CapturedChunk } from '../../sidecar/capture/capture.js';
import { RateLimiter } from '../../sidecar/capture/rate-limiter.js';
import { LocalLog, type LocalLogOptions } from '../../store/local-log.js';
import { removeTmpDirs, tmpDir } from '../support/tmp.js';
import { waitFor } from '../support/wait.js';

const logger = pino({ level: 'silent' });
const open: LocalLog[] = [];

afterEach(async () => {
  for (const log of open.splice(0)) await log.close();
});

afterAll(async () => {
  await removeTmpDirs();
});

async function openLog(overrides: Partial<LocalLogOptions> = {}): Promise<LocalLog> {
  const log = await LocalLog.open({
    dir: tmpDir('capture'),
    maxFileBytes: 1 << 20,
    maxFiles: 4,
    maxQueueBytes: 1 << 20,
    maxWriteBytes: 64 * 1024,
    fileMode: 0o640,
    diskRetryMs: 50,
    logger,
    ...overrides,
  });
  open.push(log);
  return log;
}

/** The whole log as latin1 text, once everything appended is in the files. */
async function text(log: LocalLog): Promise<string> {
  expect(await log.flush()).toBe(true);
  return (await log.read(0, log.end)).toString('latin1');
}

function boot(n: number, atMs: number): string {
  return formatMarker({ kind: 'boot', boot: n, at: new Date(atMs) }).toString('latin1');
}

describe('Capture', () => {
  it('the first open of an empty log starts boot 1 with its marker; output follows it and every byte is emitted in order', async () => {
    const log = await openLog();
    const capture = new Capture(log, null, logger);
    const chunks: CapturedChunk[] = [];
    const boots: number[] = [];
    capture.connect('console', {
      output: (c) => chunks.push(c),
      boot: (b) => boots.push(b.boot),
    });
    capture.sourceOpened();
    capture.ingest(Buffer.from('hello\r\n'));
    const b1 = log.boots[0]!;
    expect(b1).toMatchObject({ boot: 1, offset: 0 });
    expect(boots).toEqual([1]);
    expect(await text(log)).toBe(`${boot(1, b1.atMs)}hello\r\n`);
    expect(Buffer.concat(chunks.map((c) => c.bytes)).toString('latin1')).toBe(await text(log));
    expect(chunks.map((c) => c.offset)).toEqual([0, boot(1, b1.atMs).length]);
    expect(log.markersIn(0, log.end)).toEqual([{ offset: 0, length: boot(1, b1.atMs).length, kind: 'boot' }]);
    expect(capture.counters).toMatchObject({ capturedBytes: 7, markers: 1, lostBytes: 0 });
  });

  it('our own reconnect is a reattach; the guest closing an established connection makes the next open boot 2', async () => {
    const log = await openLog();
    const capture = new Capture(log, null, logger);
    capture.sourceOpened();
    capture.ingest(Buffer.from('one '));
    capture.sourceClosed('self', true);
    capture.sourceOpened();
    capture.ingest(Buffer.from('two '));
    expect(log.currentBoot).toBe(1);
    capture.sourceClosed('guest', true);
    expect(log.awaitingBoot).toBe(true);
    capture.sourceOpened();
    capture.ingest(Buffer.from('three'));
    expect(log.currentBoot).toBe(2);
    const kinds = log.markersIn(0, log.end).map((m) => m.kind);
    expect(kinds).toEqual(['boot', 'reattach', 'boot']);
    const t = await text(log);
    expect(t.replace(/\r\n\[consoled\] [^\r\n]*\r\n/g, '|')).toBe('|one |two |three');
    expect(t).toContain('[consoled] reattached at ');
    expect(log.boots[1]!.offset).toBe(log.markersIn(0, log.end)[2]!.offset);
  });

  it('after a connection that closed unestablished, output is held until the next one is established, then follows boot 2', async () => {
    const log = await openLog();
    const capture = new Capture(log, null, logger);
    capture.sourceOpened();
    capture.ingest(Buffer.from('up '));
    capture.sourceClosed('guest', false);
    capture.sourceOpened();
    capture.ingest(Buffer.from('held '));
    expect(log.currentBoot).toBe(1);
    expect((await text(log)).endsWith('up ')).toBe(true);
    capture.sourceEstablished();
    expect(log.currentBoot).toBe(2);
    const b2 = log.boots[1]!;
    expect((await text(log)).endsWith(`up ${boot(2, b2.atMs)}held `)).toBe(true);
  });

  it('a chardev that connects while the spool is copied into the log (a restarted destination) is a reattach, in order after the spool', async () => {
    // The spool an incoming guest's first process filled before it was killed.
    const spool = await openLog();
    const first = new Capture(spool, null, logger);
    first.sourceOpened();
    first.ingest(Buffer.from('spooled '));
    expect(await spool.flush()).toBe(true);
    // Its restart: output goes to the spool again, then waits in memory during the copy.
    const log = await openLog();
    const capture = new Capture(log, null, logger);
    capture.setContinuing(true);
    capture.holdInSpool(spool);
    capture.holdInMemory();
    capture.sourceOpened(); // what the guest printed while nobody read is gone
    capture.ingest(Buffer.from('live'));
    const copy = await spool.read(0, spool.end);
    capture.appendToLog(copy, spool.markersIn(0, spool.end));
    capture.endHold();
    const t = await text(log);
    expect(t.replace(/\r\n\[consoled\] [^\r\n]*\r\n/g, '|')).toBe('|spooled |live');
    expect(log.markersIn(0, log.end).map((m) => m.kind)).toEqual(['boot', 'reattach']);
    expect(t.slice(log.markersIn(0, log.end)[1]!.offset)).toMatch(
      /^\r\n\[consoled\] reattached at [^\r\n]*\r\nlive$/,
    );
  });

  it('the first connection of a destination whose spool is empty is no reattach, in the spool or during its copy', async () => {
    const spool = await openLog();
    const log = await openLog();
    const capture = new Capture(log, null, logger);
    capture.setContinuing(true);
    capture.holdInSpool(spool);
    capture.holdInMemory();
    capture.sourceOpened();
    capture.ingest(Buffer.from('first'));
    capture.endHold();
    expect(await text(log)).toBe('first');
    expect(log.markersIn(0, log.end)).toEqual([]);
  });

  it('drops output the full queue cannot take and marks the gap, with its count, before the next bytes kept', async () => {
    const log = await openLog({ maxQueueBytes: 4096 });
    const capture = new Capture(log, null, logger);
    capture.sourceOpened();
    // All synchronous, so nothing leaves the 4096-byte queue in between (256 bytes of it
    // stay free for the marker): 3000 fit, 2000 and 1000 more do not, 100 do after the marker.
    capture.ingest(Buffer.alloc(3000, 'a'));
    capture.ingest(Buffer.alloc(2000, 'b'));
    expect(capture.pendingLostBytes).toBe(2000);
    capture.ingest(Buffer.alloc(1000, 'c'));
    expect(capture.pendingLostBytes).toBe(3000);
    capture.ingest(Buffer.alloc(100, 'd'));
    expect(capture.pendingLostBytes).toBe(0);
    const gap = formatMarker({ kind: 'gap', bytes: 3000, reason: 'queue-overflow' }).toString('latin1');
    expect(await text(log)).toBe(`${boot(1, log.boots[0]!.atMs)}${'a'.repeat(3000)}${gap}${'d'.repeat(100)}`);
    expect(capture.counters).toMatchObject({ lostBytes: 3000, gapEpisodes: 1, capturedBytes: 3100 });
    expect(log.markersIn(0, log.end).map((m) => m.kind)).toEqual(['boot', 'gap']);
  });

  it('writes the gap marker once the queue has drained even when the guest writes nothing more', async () => {
    const log = await openLog({ maxQueueBytes: 4096 });
    const capture = new Capture(log, null, logger);
    capture.sourceOpened();
    capture.ingest(Buffer.alloc(3700, 'a'));
    capture.ingest(Buffer.alloc(700, 'b'));
    expect(capture.pendingLostBytes).toBe(700);
    await waitFor('the gap marker', () => log.markersIn(0, log.end).some((m) => m.kind === 'gap'));
    const gap = formatMarker({ kind: 'gap', bytes: 700, reason: 'queue-overflow' }).toString('latin1');
    expect((await text(log)).endsWith(`${'a'.repeat(3700)}${gap}`)).toBe(true);
    expect(capture.pendingLostBytes).toBe(0);
  });

  it('a rate-limit episode is one marker with the bytes dropped, written when the bucket refills though the guest went quiet', async () => {
    const log = await openLog();
    const capture = new Capture(log, new RateLimiter({ bytesPerSec: 2000, burstBytes: 1000 }, null), logger);
    capture.sourceOpened();
    capture.ingest(Buffer.alloc(1500, 'a'));
    capture.ingest(Buffer.alloc(300, 'b'));
    expect(capture.counters.suppressEpisodes).toBe(1);
    // Markers are never rate limited: a reattach marker goes in during the episode.
    capture.sourceClosed('self', true);
    capture.sourceOpened();
    await waitFor('the suppressed marker', () =>
      log.markersIn(0, log.end).some((m) => m.kind === 'suppressed'),
    );
    capture.ingest(Buffer.from('after'));
    const t = await text(log);
    const suppressed = formatMarker({ kind: 'suppressed', bytes: 800 }).toString('latin1');
    expect(
      t.startsWith(`${boot(1, log.boots[0]!.atMs)}${'a'.repeat(1000)}\r\n[consoled] reattached at `),
    ).toBe(true);
    expect(t.endsWith(`${suppressed}after`)).toBe(true);
    expect(log.markersIn(0, log.end).map((m) => m.kind)).toEqual(['boot', 'reattach', 'suppressed']);
    expect(capture.counters).toMatchObject({ suppressEpisodes: 1, capturedBytes: 1005 });
    capture.close();
  });
});
