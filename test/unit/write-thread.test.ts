/**
 * The write thread of the local logs (store/write-thread.ts) on real files: a turn's
 * small writes to many files, at generated positions, all land where they were asked
 * to, as do large ones (through libuv's pool); a failing write reports its errno and
 * the other writes of its batch land all the same; a state file is replaced whole
 * (a leftover or a planted link at its temporary name replaced, never followed; a
 * failed rename reported and its temporary file gone); and a process whose writes are
 * done is not kept alive by the thread.
 */
import { execFile } from 'node:child_process';
import {
  closeSync,
  lstatSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, describe, expect, it } from 'vitest';
import { replaceFile, SMALL_WRITE_BYTES, writeAt } from '../../store/write-thread.js';
import { prng } from '../support/prng.js';
import { removeTmpDirs, tmpDir } from '../support/tmp.js';

afterAll(removeTmpDirs);

type Written = { err: NodeJS.ErrnoException | null; written: number };

function write(fd: number, buffers: Buffer[], position: number): Promise<Written> {
  const size = buffers.reduce((n, b) => n + b.length, 0);
  return new Promise((resolve) =>
    writeAt(fd, buffers, size, position, (err, written) => resolve({ err, written })),
  );
}

describe('the write thread', () => {
  it.each([
    [1, false],
    [2, false],
    [3, true],
    [4, true],
  ])(
    'lands every write at its position, small and large, across files (seed %i, across turns: %s)',
    async (seed, acrossTurns) => {
      const random = prng(seed);
      const dir = tmpDir('write-thread-');
      const files = Array.from({ length: 8 }, (_, i) => join(dir, `f${i}`));
      const fds = files.map((f) => openSync(f, 'w+'));
      const expected = files.map(() => Buffer.alloc(0));
      const pending: Array<Promise<Written>> = [];
      // Each file is written in consecutive stretches, asked for in one turn (as many
      // guests' logs in one turn of the event loop) or across turns, a few larger than
      // the thread takes.
      const ends = files.map(() => 0);
      for (let i = 0; i < 400; i++) {
        const f = Math.floor(random() * files.length);
        const large = random() < 0.02;
        const size = large
          ? SMALL_WRITE_BYTES + 1 + Math.floor(random() * 100_000)
          : 1 + Math.floor(random() * 3000);
        const bytes = Buffer.alloc(size);
        for (let k = 0; k < size; k++) bytes[k] = Math.floor(random() * 256);
        // Cut into several buffers, as a queue of appends is.
        const cut = Math.floor(random() * size);
        const buffers = cut > 0 ? [bytes.subarray(0, cut), bytes.subarray(cut)] : [bytes];
        pending.push(write(fds[f]!, buffers, ends[f]!));
        // Across turns, some writes are asked for while an earlier batch is with the thread.
        if (acrossTurns && random() < 0.1) await new Promise((r) => setImmediate(r));
        expected[f] = Buffer.concat([expected[f]!, bytes]);
        ends[f]! += size;
      }
      const results = await Promise.all(pending);
      for (const fd of fds) closeSync(fd);
      expect(results.every((r) => r.err === null)).toBe(true);
      for (let f = 0; f < files.length; f++) expect(readFileSync(files[f]!).equals(expected[f]!)).toBe(true);
    },
  );

  it('reports a failing write with its errno, and the rest of its batch lands', async () => {
    const dir = tmpDir('write-thread-');
    const path = join(dir, 'ok');
    const fd = openSync(path, 'w');
    const readOnly = join(dir, 'ro');
    writeFileSync(readOnly, '');
    const roFd = openSync(readOnly, 'r');
    const [bad, good] = await Promise.all([
      write(roFd, [Buffer.from('refused')], 0),
      write(fd, [Buffer.from('landed')], 0),
    ]);
    closeSync(fd);
    closeSync(roFd);
    expect(bad.err?.code).toBe('EBADF');
    expect(bad.written).toBe(0);
    expect(good).toEqual({ err: null, written: 6 });
    expect(readFileSync(path, 'utf8')).toBe('landed');
  });

  it('replaces a file whole, over a leftover or a planted link at its temporary name', async () => {
    const dir = tmpDir('write-thread-');
    const outside = join(tmpDir('write-thread-outside-'), 'target');
    writeFileSync(outside, 'outside');
    const leftover = join(dir, 'a.json');
    writeFileSync(`${leftover}.tmp`, '{"torn":');
    const linked = join(dir, 'b.json');
    symlinkSync(outside, `${linked}.tmp`);
    const replace = (path: string, text: string, mode: number) =>
      new Promise<NodeJS.ErrnoException | null>((resolve) =>
        replaceFile(path, `${path}.tmp`, Buffer.from(text), mode, resolve),
      );
    // Asked for in one turn, with a log write: one batch.
    const fd = openSync(join(dir, 'log'), 'w');
    const [a, b, w] = await Promise.all([
      replace(leftover, '{"v":1}', 0o600),
      replace(linked, '{"v":2}', 0o640),
      write(fd, [Buffer.from('log')], 0),
    ]);
    closeSync(fd);
    expect([a, b, w.err]).toEqual([null, null, null]);
    expect(readFileSync(leftover, 'utf8')).toBe('{"v":1}');
    expect(readFileSync(linked, 'utf8')).toBe('{"v":2}');
    expect(lstatSync(leftover).mode & 0o777).toBe(0o600);
    expect(lstatSync(linked).isSymbolicLink()).toBe(false);
    expect(readFileSync(outside, 'utf8')).toBe('outside');
    expect(readdirSync(dir).sort()).toEqual(['a.json', 'b.json', 'log']);
  });

  it('reports a failed rename with its errno and leaves no temporary file', async () => {
    const dir = tmpDir('write-thread-');
    const path = join(dir, 'taken');
    mkdirSync(join(path, 'inside'), { recursive: true }); // a non-empty directory cannot be renamed over
    const err = await new Promise<NodeJS.ErrnoException | null>((resolve) =>
      replaceFile(path, `${path}.tmp`, Buffer.from('{}'), 0o600, resolve),
    );
    expect(err?.code).toBe('EISDIR');
    expect(readdirSync(dir)).toEqual(['taken']);
  });

  it('does not keep a process alive once its writes are done', async () => {
    const dir = tmpDir('write-thread-');
    const path = join(dir, 'out');
    const module = new URL('../../dist/store/write-thread.js', import.meta.url).pathname;
    const script = `
      import { openSync } from 'node:fs';
      import { writeAt } from ${JSON.stringify(module)};
      const fd = openSync(${JSON.stringify(path)}, 'w');
      writeAt(fd, [Buffer.from('bye')], 3, 0, (err, n) => console.log(err ? err.code : n));`;
    const { stdout } = await promisify(execFile)(process.execPath, ['--input-type=module', '-e', script], {
      timeout: 10_000,
    });
    expect(stdout.trim()).toBe('3');
    expect(readFileSync(path, 'utf8')).toBe('bye');
  });
});
