/**
 * The local log's state (store/local-log.ts): every change goes through one setter
 * that logs `old -> new`, on a real temp dir: open → closing → closed on close, and
 * open → disk-error → open when a rotation is refused (the directory was swapped) and
 * then succeeds (it was put back), with the `disk-error` and `recovered` events and
 * no byte lost or doubled.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, rename, rmdir } from 'node:fs/promises';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import pino from 'pino';
import { afterAll, describe, expect, it } from 'vitest';
import { LocalLog, type LocalLogOptions } from '../../store/local-log.js';
import { removeTmpDirs, tmpDir } from '../support/tmp.js';
import { waitFor } from '../support/wait.js';

const FILE_BYTES = 4096;

/** A debug logger whose state changes are collected as `from -> to`. */
function recordingLogger(): { logger: pino.Logger; changes: string[] } {
  const changes: string[] = [];
  const sink = new Writable({
    write(line: Buffer, _enc, done) {
      const entry = JSON.parse(line.toString()) as { from?: string; to?: string };
      if (entry.from !== undefined && entry.to !== undefined) changes.push(`${entry.from} -> ${entry.to}`);
      done();
    },
  });
  return { logger: pino({ level: 'debug' }, sink), changes };
}

function options(dir: string, logger: pino.Logger): LocalLogOptions {
  return {
    dir,
    maxFileBytes: FILE_BYTES,
    maxFiles: 3,
    maxQueueBytes: 1024 * 1024,
    maxWriteBytes: 64 * 1024,
    fileMode: 0o640,
    diskRetryMs: 20,
    logger,
  };
}

afterAll(async () => {
  await removeTmpDirs();
});

describe('LocalLog state', () => {
  it('logs each change old -> new: open, closing, closed', async () => {
    const { logger, changes } = recordingLogger();
    const log = await LocalLog.open(options(join(tmpDir('logstate'), 'g'), logger));
    expect(log.state).toBe('open');
    log.append(Buffer.from('hello\n'));
    await log.close();
    expect(log.state).toBe('closed');
    await waitFor('the log lines', () => changes.length >= 2);
    expect(changes).toEqual(['open -> closing', 'closing -> closed']);
  });

  it('goes to disk-error when a rotation is refused, and back to open once it can write again, bytes intact', async () => {
    const { logger, changes } = recordingLogger();
    const dir = join(tmpDir('logstate'), 'g');
    const log = await LocalLog.open(options(dir, logger));
    const events: string[] = [];
    log.on('disk-error', (code) => events.push(`disk-error ${code}`));
    log.on('recovered', () => events.push('recovered'));

    // The directory is swapped: the rotation after this file-full chunk is refused.
    await rename(dir, `${dir}.moved`);
    await mkdir(dir, { mode: 0o750 });
    const data = randomBytes(FILE_BYTES + 100);
    log.append(data);
    await waitFor('disk-error', () => log.state === 'disk-error');
    expect(log.counters.diskErrors).toBeGreaterThan(0);
    expect(log.lastDiskError).toBe('UNSAFE_PATH');
    // The full file was written through the descriptor opened before the swap (the
    // file is ours); the rotation after it, renames and open, was refused.
    expect(log.flushedEnd).toBe(FILE_BYTES);

    // Put back: the retry cuts the file to what was acknowledged and writes again.
    await rmdir(dir);
    await rename(`${dir}.moved`, dir);
    await waitFor('recovered', () => log.state === 'open' && events.includes('recovered'));
    expect(await log.flush()).toBe(true);
    expect((await log.read(0, data.length)).equals(data)).toBe(true);
    expect(log.counters.rotations).toBe(1);
    await log.close();
    await waitFor('the log lines', () => changes.length >= 4);
    expect(changes).toEqual([
      'open -> disk-error',
      'disk-error -> open',
      'open -> closing',
      'closing -> closed',
    ]);
    expect(events[0]).toBe('disk-error UNSAFE_PATH');
    expect(events.at(-1)).toBe('recovered');
  });
});
