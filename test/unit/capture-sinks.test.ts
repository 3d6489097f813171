/**
 * Capture (sidecar/capture/capture.ts) against a real local log in a temp dir: its sinks are
 * called in CAPTURE_STAGES order whatever the order they connected in, each chunk at
 * the offset the log gave it; a boot reaches the sinks after its marker; and
 * `setContinuing` decides whether a reopened chardev is a reattach or nothing.
 */
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { silentLogger } from '../../common/logger.js';
import { Capture, type CapturedChunk } from '../../sidecar/capture/capture.js';
import { LocalLog } from '../../store/local-log.js';
import { removeTmpDirs, tmpDir } from '../support/tmp.js';

async function openLog(): Promise<LocalLog> {
  return LocalLog.open({
    dir: join(tmpDir('capture'), 'g'),
    maxFileBytes: 64 * 1024,
    maxFiles: 2,
    maxQueueBytes: 1024 * 1024,
    maxWriteBytes: 64 * 1024,
    fileMode: 0o640,
    diskRetryMs: 50,
  });
}

afterAll(async () => {
  await removeTmpDirs();
});

describe('Capture', () => {
  it('calls its sinks in stage order, console before replication, each chunk at its offset', async () => {
    const log = await openLog();
    const capture = new Capture(log, null, silentLogger());
    const seen: string[] = [];
    const chunks: CapturedChunk[] = [];
    capture.connect('replication', {
      output: (chunk) => {
        seen.push(`replication ${chunk.offset}`);
        chunks.push(chunk);
      },
      boot: (record) => seen.push(`replication boot ${record.boot}`),
    });
    const stopConsole = capture.connect('console', {
      output: (chunk) => seen.push(`console ${chunk.offset}`),
      boot: (record) => seen.push(`console boot ${record.boot}`),
    });
    capture.sourceOpened(); // an empty log: boot 1
    capture.ingest(Buffer.from('hello\r\n'));
    const marker = chunks[0]!;
    expect(marker.bytes.toString()).toMatch(/boot 1 started/);
    expect(seen).toEqual([
      'console 0',
      'replication 0',
      'console boot 1',
      'replication boot 1',
      `console ${marker.bytes.length}`,
      `replication ${marker.bytes.length}`,
    ]);
    stopConsole();
    capture.ingest(Buffer.from('more'));
    expect(seen.at(-1)).toBe(`replication ${log.end - 4}`);
    expect(seen.filter((s) => s.startsWith('console'))).toHaveLength(3);
    expect(await log.flush()).toBe(true);
    const text = (await log.read(0, log.flushedEnd)).toString();
    expect(text.endsWith('hello\r\nmore')).toBe(true);
    capture.close();
    await log.close();
  });

  it('while continuing, a reopened chardev writes no reattach marker; otherwise it does', async () => {
    const log = await openLog();
    const capture = new Capture(log, null, silentLogger());
    const outputs: string[] = [];
    capture.connect('console', { output: (chunk) => outputs.push(chunk.bytes.toString()) });
    capture.sourceOpened();
    expect(log.currentBoot).toBe(1);
    capture.sourceClosed('self', true);

    capture.setContinuing(true);
    const before = log.end;
    capture.sourceOpened();
    expect(log.end).toBe(before); // the guest neither rebooted nor reattached: nothing written
    capture.sourceClosed('self', true);

    capture.setContinuing(false);
    capture.sourceOpened();
    expect(outputs.at(-1)).toMatch(/reattach/);
    expect(log.currentBoot).toBe(1);

    // The guest side closed: even while continuing, the next open is a new boot.
    capture.sourceClosed('guest', true);
    capture.setContinuing(true);
    capture.sourceOpened();
    expect(log.currentBoot).toBe(2);
    capture.close();
    await log.close();
  });
});
