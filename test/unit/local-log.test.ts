/**
 * The rotating local log on a real temp dir: file names and modes, exact file sizes,
 * offsets that never reset (across rotation and close/reopen), byte-exact reads
 * across file boundaries, and reading a closed log with `LocalLog.inspect`.
 */
import { randomBytes } from 'node:crypto';
import { readdir, readFile, readlink, rename, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { LocalLog, type LocalLogOptions } from '../../store/local-log.js';
import { removeTmpDirs, tmpDir } from '../support/tmp.js';
import { waitFor } from '../support/wait.js';

const FILE_BYTES = 4096;
const MAX_FILES = 5;

function options(dir: string, overrides: Partial<LocalLogOptions> = {}): LocalLogOptions {
  return {
    dir,
    maxFileBytes: FILE_BYTES,
    maxFiles: MAX_FILES,
    maxQueueBytes: 4 * 1024 * 1024,
    maxWriteBytes: 64 * 1024,
    fileMode: 0o640,
    diskRetryMs: 50,
    ...overrides,
  };
}

/** Appends `total` random bytes in chunks of random sizes; returns what was appended. */
function appendRandom(log: LocalLog, total: number, maxChunk = 1500): Buffer {
  const data = randomBytes(total);
  for (let pos = 0; pos < total; ) {
    const n = Math.min(total - pos, 1 + Math.floor(Math.random() * maxChunk));
    const offset = log.append(data.subarray(pos, pos + n));
    expect(offset).toBe(log.end - n);
    pos += n;
  }
  return data;
}

async function flushed(log: LocalLog): Promise<void> {
  expect(await log.flush()).toBe(true);
  expect(log.flushedEnd).toBe(log.end);
}

/** The log's files, newest first, as the directory holds them. */
async function logFiles(dir: string): Promise<string[]> {
  const names = (await readdir(dir)).filter((n) => n.startsWith('console.log'));
  const index = (n: string) => (n === 'console.log' ? 0 : Number(n.slice('console.log.'.length)));
  return names.sort((a, b) => index(a) - index(b));
}

afterAll(async () => {
  await removeTmpDirs();
});

describe('LocalLog rotation', () => {
  it('rotates into console.log, console.log.1 … newest first, each rotated file exactly maxFileBytes, mode 0640', async () => {
    const dir = tmpDir('locallog');
    const log = await LocalLog.open(options(dir));
    const total = FILE_BYTES * 11 + 1234;
    const oldestSeen: number[] = [log.oldest];
    log.on('rotated', () => oldestSeen.push(log.oldest));
    const data = appendRandom(log, total);
    expect(log.end).toBe(total);
    await flushed(log);

    expect(await logFiles(dir)).toEqual([
      'console.log',
      'console.log.1',
      'console.log.2',
      'console.log.3',
      'console.log.4',
    ]);
    expect(log.counters.rotations).toBe(11);
    const spans = log.files();
    expect(spans.map((s) => s.index)).toEqual([0, 1, 2, 3, 4]);
    // Newest first: console.log holds the last 1234 bytes, console.log.N the oldest kept.
    expect(log.oldest).toBe(total - 1234 - 4 * FILE_BYTES);
    for (const span of spans) {
      const st = await stat(span.path);
      expect(st.mode & 0o777, span.path).toBe(0o640);
      expect(st.size, span.path).toBe(span.index === 0 ? 1234 : FILE_BYTES);
      expect(span.start).toBe(total - 1234 - span.index * FILE_BYTES);
      // The file holds exactly the bytes appended at its offsets.
      const bytes = await readFile(span.path);
      expect(bytes.equals(data.subarray(span.start, span.start + span.size)), span.path).toBe(true);
    }
    // Offsets of the files follow from the sizes: each file starts where the next older one ends.
    for (let i = 0; i + 1 < spans.length; i++)
      expect(spans[i]!.start).toBe(spans[i + 1]!.start + spans[i + 1]!.size);

    // The oldest offset advances by one file per rotation once all files are in use.
    for (let i = 1; i < oldestSeen.length; i++)
      expect(oldestSeen[i]!).toBeGreaterThanOrEqual(oldestSeen[i - 1]!);
    expect(oldestSeen.slice(-6)).toEqual([6, 7, 8, 9, 10, 11].map((k) => (k - 4) * FILE_BYTES));
    await log.close();
  });

  it('reads any range across file boundaries byte-exact, and refuses nothing inside the bounds', async () => {
    const dir = tmpDir('locallog');
    const log = await LocalLog.open(options(dir));
    const data = appendRandom(log, FILE_BYTES * 7 + 77);
    await flushed(log);
    const { oldest, next } = await log.bounds();
    expect(next).toBe(data.length);
    expect(await log.read(oldest, next)).toEqual(data.subarray(oldest, next));
    // Every boundary, and ranges that span two and three files.
    for (const span of log.files()) {
      const b = span.start;
      if (b - 10 >= oldest)
        expect(await log.read(b - 10, Math.min(next, b + 10))).toEqual(
          data.subarray(b - 10, Math.min(next, b + 10)),
        );
    }
    for (let k = 0; k < 50; k++) {
      const start = oldest + Math.floor(Math.random() * (next - oldest));
      const end = start + Math.floor(Math.random() * (next - start + 1));
      expect((await log.read(start, end)).equals(data.subarray(start, end)), `[${start}, ${end})`).toBe(true);
    }
    expect(await log.read(next, next)).toEqual(Buffer.alloc(0));
    await log.close();
  });

  it('keeps offsets across close and reopen, and appends after the last byte', async () => {
    const dir = tmpDir('locallog');
    let log = await LocalLog.open(options(dir));
    const first = appendRandom(log, FILE_BYTES * 2 + 500);
    await log.close();

    log = await LocalLog.open(options(dir));
    expect(log.end).toBe(first.length);
    expect(log.flushedEnd).toBe(first.length);
    const second = randomBytes(FILE_BYTES * 3 + 10);
    expect(log.append(second)).toBe(first.length);
    await flushed(log);
    const all = Buffer.concat([first, second]);
    const { oldest, next } = await log.bounds();
    expect(next).toBe(all.length);
    // The read crosses the seam of the reopen and several file boundaries.
    expect((await log.read(oldest, next)).equals(all.subarray(oldest))).toBe(true);
    expect(await log.read(first.length - 100, first.length + 100)).toEqual(
      all.subarray(first.length - 100, first.length + 100),
    );
    await log.close();

    // Reopened again with no new bytes: same bounds, same files.
    log = await LocalLog.open(options(dir));
    expect(await log.bounds()).toEqual({ oldest, next });
    await log.close();
  });

  it('keeps boots and the awaiting-boot flag across close and reopen', async () => {
    const dir = tmpDir('locallog');
    let log = await LocalLog.open(options(dir));
    log.startBoot(1000);
    log.append(Buffer.from('boot one\r\n'));
    const b2 = log.startBoot(2000);
    log.append(Buffer.from('boot two\r\n'));
    log.setAwaitingBoot(true);
    await log.close();
    expect(b2).toEqual({ boot: 2, offset: 10, atMs: 2000 });

    log = await LocalLog.open(options(dir));
    expect(log.boots).toEqual([
      { boot: 1, offset: 0, atMs: 1000 },
      { boot: 2, offset: 10, atMs: 2000 },
    ]);
    expect(log.currentBoot).toBe(2);
    expect(log.awaitingBoot).toBe(true);
    await log.close();
  });

  it('loads a state file written before the boot index (boots and the awaiting flag in log-state.json)', async () => {
    const dir = tmpDir('locallog');
    // What the previous version writes: version 1, every boot record in the state file.
    await writeFile(join(dir, 'console.log'), 'boot one\r\nboot two\r\n');
    const { ino } = await stat(join(dir, 'console.log'));
    await writeFile(
      join(dir, 'log-state.json'),
      JSON.stringify({
        version: 1,
        anchor: { ino, start: 0 },
        end: 20,
        boots: [
          { boot: 1, offset: 0, atMs: 1000 },
          { boot: 2, offset: 10, atMs: 2000 },
        ],
        awaitingBoot: true,
      }),
    );
    let log = await LocalLog.open(options(dir));
    expect(log.boots).toEqual([
      { boot: 1, offset: 0, atMs: 1000 },
      { boot: 2, offset: 10, atMs: 2000 },
    ]);
    expect(log.awaitingBoot).toBe(true);
    expect(log.startBoot(3000)).toEqual({ boot: 3, offset: 20, atMs: 3000 });
    await log.close();
    log = await LocalLog.open(options(dir));
    expect(log.boots.map((b) => b.boot)).toEqual([1, 2, 3]);
    expect(log.awaitingBoot).toBe(false);
    await log.close();
  });

  it('appends boots to the boot index without rewriting the state file, and folds it in now and then', async () => {
    const dir = tmpDir('locallog');
    const log = await LocalLog.open(options(dir));
    const stateIno = async () => (await stat(join(dir, 'log-state.json'))).ino;
    const indexLines = async () =>
      (await readFile(join(dir, 'boot-index.jsonl'), 'utf8')).split('\n').length - 1;
    const ino = await stateIno();
    for (let i = 1; i <= 10; i++) log.startBoot(i);
    log.setAwaitingBoot(true);
    // Header, ten boots, the awaiting flag: appended, the state file untouched.
    await waitFor('the boot index lines', async () => (await indexLines()) === 12);
    expect(await stateIno()).toBe(ino);

    // The index is bounded: past its size it is folded into the state file.
    for (let i = 11; i <= 600; i++) log.startBoot(i);
    await waitFor(
      'the boot index folded',
      async () => (await stateIno()) !== ino && (await indexLines()) < 300,
    );
    await log.close();

    // A SIGKILL leaves the index as it is: a reopen reads the state file and the index together.
    const again = await LocalLog.open(options(dir));
    expect(again.boots.map((b) => b.boot)).toEqual(Array.from({ length: 600 }, (_, i) => i + 1));
    const last = again.startBoot(9999);
    expect(last.boot).toBe(601);
    await waitFor('the new boot in the index', async () =>
      (await readFile(join(dir, 'boot-index.jsonl'), 'utf8')).includes('"boot":601'),
    );
    // No close: as after a SIGKILL. A second instance (the restarted daemon) finds every boot.
    const afterKill = await LocalLog.inspect(dir, options(dir));
    expect(afterKill!.boots.map((b) => b.boot).slice(-2)).toEqual([600, 601]);
    await again.close();
  });

  it('ignores a boot index of another generation and a line a crash cut short', async () => {
    const dir = tmpDir('locallog');
    let log = await LocalLog.open(options(dir));
    log.startBoot(1);
    await log.close();
    const state = JSON.parse(await readFile(join(dir, 'log-state.json'), 'utf8')) as { bootIndex: number };
    const index = join(dir, 'boot-index.jsonl');
    // Left over from before the last fold (its generation is older): ignored.
    await writeFile(
      index,
      `${JSON.stringify({ generation: state.bootIndex - 1 })}\n{"boot":7,"offset":0,"atMs":7}\n`,
    );
    log = await LocalLog.open(options(dir));
    expect(log.boots.map((b) => b.boot)).toEqual([1]);
    await log.close();
    // Of the current generation, with a torn last line: the whole lines count.
    const current = (JSON.parse(await readFile(join(dir, 'log-state.json'), 'utf8')) as { bootIndex: number })
      .bootIndex;
    await writeFile(
      index,
      `${JSON.stringify({ generation: current })}\n{"boot":2,"offset":0,"atMs":2}\n{"boot":3,"off`,
    );
    log = await LocalLog.open(options(dir));
    expect(log.boots.map((b) => b.boot)).toEqual([1, 2]);
    expect(log.startBoot(4).boot).toBe(3);
    await log.close();
    log = await LocalLog.open(options(dir));
    expect(log.boots.map((b) => b.boot)).toEqual([1, 2, 3]);
    await log.close();
  });

  it('replays the awaiting-boot flag of the index only when no later boot is known', async () => {
    const dir = tmpDir('locallog');
    const boot = (n: number) => ({ boot: n, offset: 0, atMs: n });
    const write = async (boots: object[], lines: object[]) => {
      await writeFile(
        join(dir, 'log-state.json'),
        JSON.stringify({ version: 1, anchor: null, end: 0, boots, awaitingBoot: false, bootIndex: 5 }),
      );
      await writeFile(
        join(dir, 'boot-index.jsonl'),
        [{ generation: 5 }, ...lines].map((l) => `${JSON.stringify(l)}\n`).join(''),
      );
    };
    // The guest side closed during boot 1: the next attach is a new boot.
    await write([boot(1)], [{ awaitingBoot: true, afterBoot: 1 }]);
    expect((await LocalLog.inspect(dir, options(dir)))!.awaitingBoot).toBe(true);
    // A crash after the state file was saved with boot 2 but before boot 2's line was appended.
    await write([boot(1), boot(2)], [{ awaitingBoot: true, afterBoot: 1 }]);
    const log = (await LocalLog.inspect(dir, options(dir)))!;
    expect(log.awaitingBoot).toBe(false);
    expect(log.currentBoot).toBe(2);
  });

  it('serves reads while it rotates under a writer', async () => {
    const dir = tmpDir('locallog');
    const log = await LocalLog.open(options(dir));
    const data = randomBytes(FILE_BYTES * 40);
    let written = 0;
    let reads = 0;
    while (written < data.length) {
      const n = Math.min(data.length - written, 700);
      log.append(data.subarray(written, written + n));
      written += n;
      // Read the newest flushed bytes, whichever files they are in right now.
      const { next } = await log.bounds();
      const start = Math.max((await log.bounds()).oldest, next - 3000);
      const got = await log.read(start, next);
      expect(got.equals(data.subarray(start, next)), `[${start}, ${next})`).toBe(true);
      reads++;
    }
    await flushed(log);
    expect(reads).toBeGreaterThan(100);
    expect(log.counters.rotations).toBe(40);
    await log.close();
  });
  it('completes a read spanning many files while a fast writer rotates them', async () => {
    // Regression: a read restarted from scratch whenever a rotation renamed a file under
    // it, and gave up after five tries, so a large range never came back under load.
    const dir = tmpDir('locallog');
    const log = await LocalLog.open(options(dir, { maxFiles: 100 }));
    const data = randomBytes(FILE_BYTES * 300);
    let written = 0;
    let stop = false;
    const writer = (async () => {
      while (written < data.length && !stop) {
        log.append(data.subarray(written, written + 2048));
        written += 2048;
        // As fast as the disk takes it, a few files ahead.
        while (log.queuedBytes > 4 * FILE_BYTES && !stop) await new Promise((r) => setTimeout(r, 1));
      }
    })();
    let reads = 0;
    let rotatedAway = 0;
    try {
      while (written < data.length) {
        const { oldest, next } = await log.bounds();
        if (next - oldest < 80 * FILE_BYTES) {
          await new Promise((r) => setTimeout(r, 1));
          continue;
        }
        // 20 files, starting 40 files inside the retention so they stay kept during the
        // read unless the writer gets 40 files ahead of it (a loaded CI machine).
        const start = oldest + 40 * FILE_BYTES;
        const end = start + 20 * FILE_BYTES;
        let got: Buffer;
        try {
          got = await log.read(start, end);
        } catch (err) {
          // Rotated away during the read: refused, as a read of bytes no longer kept is.
          if (start < (await log.bounds()).oldest) {
            rotatedAway++;
            continue;
          }
          throw err;
        }
        expect(got.equals(data.subarray(start, end)), `[${start}, ${end})`).toBe(true);
        reads++;
      }
    } finally {
      stop = true;
      await writer;
    }
    await flushed(log);
    expect(reads).toBeGreaterThan(3);
    expect(rotatedAway).toBeLessThan(reads);
    await log.close();
  });
});

/** What this process's descriptors open inside `dir` (their link targets; "(deleted)" marks a removed file). */
async function descriptorsInto(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const fd of await readdir('/proc/self/fd')) {
    const target = await readlink(`/proc/self/fd/${fd}`).catch(() => '');
    if (target.startsWith(`${dir}/`)) out.push(target);
  }
  return out;
}

describe('LocalLog read handles', () => {
  it('keeps a handle open between reads, never one on a file rotated away, and none after close', async () => {
    const dir = tmpDir('locallog');
    const log = await LocalLog.open(options(dir, { maxFiles: 3 }));
    const data = randomBytes(FILE_BYTES * 30);
    let written = 0;
    let reads = 0;
    while (written < data.length) {
      log.append(data.subarray(written, written + 1024));
      written += 1024;
      await flushed(log);
      // Read the oldest kept bytes: the file the next rotation removes.
      const { oldest, next } = await log.bounds();
      const got = await log.read(oldest, Math.min(next, oldest + 2048));
      expect(got.equals(data.subarray(oldest, Math.min(next, oldest + 2048)))).toBe(true);
      reads++;
      // Closing a handle takes a trip through the thread pool: wait for it, briefly.
      const open = await waitFor(
        `no removed file held open after ${written} bytes`,
        async () => {
          const targets = await descriptorsInto(dir);
          return targets.every((t) => !t.endsWith('(deleted)')) && targets;
        },
        { timeoutMs: 2000, intervalMs: 5 },
      );
      // The writer's file, and at most two kept for reads.
      expect(open.length).toBeLessThanOrEqual(3);
    }
    expect(log.counters.rotations).toBeGreaterThan(20);
    expect(reads).toBe(120);
    // A read leaves its handle open for the next one.
    const { oldest } = await log.bounds();
    await log.read(oldest, oldest + 10);
    expect((await descriptorsInto(dir)).some((t) => t.endsWith('console.log.2'))).toBe(true);
    await log.close();
    const none = async () => (await descriptorsInto(dir)).length === 0;
    await waitFor('no descriptor left after close', none, { timeoutMs: 2000, intervalMs: 5 });
    // A log opened only to be read (a detached guest's) keeps none: nobody closes it.
    const inspected = (await LocalLog.inspect(dir, options(dir, { maxFiles: 3 })))!;
    const kept = await inspected.bounds();
    const again = await inspected.read(kept.oldest, kept.next);
    expect(again.equals(data.subarray(kept.oldest, kept.next))).toBe(true);
    await waitFor('no descriptor left by a read of an inspected log', none, {
      timeoutMs: 2000,
      intervalMs: 5,
    });
  });
});

describe('LocalLog recovery', () => {
  it("recovers every file after a SIGKILL in the middle of a rotation's renames", async () => {
    // A rotation renames .N-1 → .N, …, .1 → .2, console.log → .1, one after the
    // other (store/log-file-writer.ts). Killed half way, the directory holds a hole: here .4 is gone,
    // renamed to .5 (and .5 to .6), while .3, .2, .1 and console.log were not moved yet.
    const dir = tmpDir('locallog');
    let log = await LocalLog.open(options(dir, { maxFiles: 10 }));
    const data = appendRandom(log, FILE_BYTES * 6 - 1000);
    await log.close();
    expect(await logFiles(dir)).toEqual([
      'console.log',
      'console.log.1',
      'console.log.2',
      'console.log.3',
      'console.log.4',
      'console.log.5',
    ]);
    await rename(join(dir, 'console.log.5'), join(dir, 'console.log.6'));
    await rename(join(dir, 'console.log.4'), join(dir, 'console.log.5'));

    log = await LocalLog.open(options(dir, { maxFiles: 10 }));
    // Nothing that was on disk is lost, and every offset still names the same byte.
    expect(await log.bounds()).toEqual({ oldest: 0, next: data.length });
    expect((await log.read(0, data.length)).equals(data)).toBe(true);
    // The log goes on rotating normally from there, and the files form one chain again.
    const more = appendRandom(log, FILE_BYTES * 2);
    await flushed(log);
    const all = Buffer.concat([data, more]);
    expect((await log.read(0, all.length)).equals(all)).toBe(true);
    const names = await logFiles(dir);
    expect(names).toEqual(['console.log', ...names.slice(1).map((_, i) => `console.log.${i + 1}`)]);
    await log.close();
  });

  it('recovers after a SIGKILL between the last rename of a rotation and the new console.log', async () => {
    const dir = tmpDir('locallog');
    let log = await LocalLog.open(options(dir, { maxFiles: 10 }));
    const data = appendRandom(log, FILE_BYTES * 4);
    await log.close();
    // The rotation's renames all happened; the new console.log was never created.
    expect(await logFiles(dir)).toEqual([
      'console.log',
      'console.log.1',
      'console.log.2',
      'console.log.3',
      'console.log.4',
    ]);
    expect((await stat(join(dir, 'console.log'))).size).toBe(0);
    for (let i = 4; i >= 1; i--)
      await rename(join(dir, `console.log.${i}`), join(dir, `console.log.${i + 1}`));
    await rename(join(dir, 'console.log'), join(dir, 'console.log.1'));

    log = await LocalLog.open(options(dir, { maxFiles: 10 }));
    expect(await log.bounds()).toEqual({ oldest: 0, next: data.length });
    const more = Buffer.from('after the kill\r\n');
    expect(log.append(more)).toBe(data.length);
    await flushed(log);
    expect((await log.read(0, data.length + more.length)).equals(Buffer.concat([data, more]))).toBe(true);
    await log.close();
  });
});

describe('LocalLog.inspect', () => {
  it('reads a closed log without writing to it', async () => {
    const dir = tmpDir('locallog');
    const log = await LocalLog.open(options(dir));
    log.startBoot(5);
    const data = appendRandom(log, FILE_BYTES * 6 + 99);
    await log.close();
    const before = await Promise.all(
      (await logFiles(dir)).map(async (n) => [n, (await stat(join(dir, n))).mtimeMs] as const),
    );

    const seen = await LocalLog.inspect(dir, options(dir));
    expect(seen).not.toBeNull();
    expect(seen!.state).toBe('closed');
    const { oldest, next } = await seen!.bounds();
    expect(next).toBe(data.length);
    expect(oldest).toBe(data.length - 99 - 4 * FILE_BYTES);
    expect((await seen!.read(oldest, next)).equals(data.subarray(oldest))).toBe(true);
    expect(await seen!.bootStarts()).toEqual([{ boot: 1, offset: 0, atMs: 5 }]);
    expect(() => seen!.append(Buffer.from('x'))).toThrow();
    // waitForData on a closed log returns at once instead of hanging a follower.
    await seen!.waitForData(next, AbortSignal.timeout(5000));

    const after = await Promise.all(
      (await logFiles(dir)).map(async (n) => [n, (await stat(join(dir, n))).mtimeMs] as const),
    );
    expect(after).toEqual(before);
  });

  it('returns null for a directory that never held a log', async () => {
    expect(await LocalLog.inspect(join(tmpDir('locallog'), 'nothing'), options('/unused'))).toBeNull();
  });
});
