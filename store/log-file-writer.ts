/**
 * The file writer of a local log, behind a small interface: it appends chunks to the
 * current file (`console.log`) and, when a chunk fills the file, rotates
 * (`console.log` → `.1` …, newest first) and opens a new current file. Everything
 * else (cutting chunks at file boundaries, offsets, anchors, recovery) is the
 * caller's (store/log-writer.ts), so another writer needs only `openLogFileWriter`.
 *
 * This one is rotating-file-stream, and it still leans on things that library does
 * not promise; they are left for the rebuild of the writer (the performance work),
 * which can write and rotate the files itself behind the same interface:
 * - its private file handle (`stream.file`): to check that the descriptor it opened
 *   is the file the path names, and to make each chunk written whole (`writeWholeChunks`).
 *   The public API has no hook on its writes, and without the patch a short write on
 *   a filling disk would lose bytes silently;
 * - short writes it ignores: the caller still cuts the file back to what was
 *   acknowledged before reopening after a failure, and `closeLogFileGaps`
 *   (store/log-files.ts) still closes the holes its one-at-a-time renames leave.
 * Rotations are told from the first open by a flag here, not by the order in
 * which `open` listeners were added.
 */
import { once } from 'node:events';
import type { FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { createStream, type RotatingFileStream } from 'rotating-file-stream';
import { LOG_FILE_NAME } from './log-files.js';
import { assertOpenedFile } from './safe-files.js';

export interface LogFileWriterOptions {
  readonly dir: string;
  /** A chunk that brings the current file to this size makes the writer rotate after it. */
  readonly maxFileBytes: number;
  /** Files kept in all, the current one included. */
  readonly maxFiles: number;
  readonly fileMode: number;
}

export interface LogFileWriterHooks {
  /**
   * Called before a rotation renames files and after every open, before anything is
   * written; throwing refuses (the write fails). The directory check of safe-files.ts.
   */
  check(): void;
  /** A rotation opened a new current file; no chunk is written into it before this returns. */
  rotated(writer: LogFileWriter): void;
  /** The writer failed; it is of no further use (the caller destroys it). */
  failed(writer: LogFileWriter, err: NodeJS.ErrnoException): void;
}

/** Appends to the current file of a log and rotates it. */
export interface LogFileWriter {
  /** Appends `chunk`; `done` once it is written, or with the error that failed it. */
  write(chunk: Buffer, done: (err: Error | null) => void): void;
  /** Writes what was handed and closes the file. */
  end(): Promise<void>;
  /** Closes at once, dropping what was not written. */
  destroy(): void;
}

/**
 * Opens the writer on `console.log` in `options.dir`; resolves once the file is open.
 * When the open fails, `hooks.failed` is called and the promise rejects.
 */
export async function openLogFileWriter(
  options: LogFileWriterOptions,
  hooks: LogFileWriterHooks,
): Promise<LogFileWriter> {
  const writer = new RotatingStreamWriter(options, hooks);
  await writer.opened;
  return writer;
}

class RotatingStreamWriter implements LogFileWriter {
  readonly opened: Promise<unknown>;
  private readonly stream: RotatingFileStream;
  private hasOpened = false;

  constructor(
    private readonly options: LogFileWriterOptions,
    hooks: LogFileWriterHooks,
  ) {
    const stream = createStream(LOG_FILE_NAME, {
      path: options.dir,
      size: `${options.maxFileBytes}B`,
      // Classical logrotate naming: console.log.1 … console.log.N, newest first.
      rotate: Math.max(1, options.maxFiles - 1),
      mode: options.fileMode,
    });
    this.stream = stream;
    // The stream renames and opens files by path, following links. Before a rotation's
    // renames, the directory must still be the one checked at open; after every open
    // (the listener runs inside the open, before anything is written), the descriptor
    // must be the file the path names. A refusal is thrown back into the stream, which
    // fails the write.
    stream.on('rotation', () => hooks.check());
    stream.on('open', () => {
      hooks.check();
      const handle = (stream as unknown as { file?: FileHandle }).file;
      if (handle) assertOpenedFile(handle.fd, join(this.options.dir, LOG_FILE_NAME));
      writeWholeChunks(stream);
      // Every open after the first is a rotation's: the stream has shifted the files
      // and opened a new console.log before it takes the next chunk.
      if (this.hasOpened) hooks.rotated(this);
      this.hasOpened = true;
    });
    stream.on('error', (err: NodeJS.ErrnoException) => hooks.failed(this, err));
    this.opened = once(stream, 'open').catch((err: NodeJS.ErrnoException) => {
      hooks.failed(this, err);
      throw err;
    });
  }

  write(chunk: Buffer, done: (err: Error | null) => void): void {
    this.stream.write(chunk, (err) => done(err ?? null));
  }

  async end(): Promise<void> {
    if (this.stream.destroyed) return;
    this.stream.end();
    await once(this.stream, 'finish').catch(() => undefined);
  }

  destroy(): void {
    if (!this.stream.destroyed) this.stream.destroy();
  }
}

/**
 * rotating-file-stream writes each chunk with one `FileHandle.write` and ignores the
 * count it returns. On a filling disk that count comes back short with no error (the
 * rest of the chunk is simply not written), so the log would lose bytes in the middle
 * of a file, unmarked, and every later offset would be off. Make the handle the stream
 * just opened finish each chunk: writing the rest hits ENOSPC, the chunk fails, and
 * the disk-error recovery cuts the file back to what was acknowledged.
 */
function writeWholeChunks(stream: RotatingFileStream): void {
  const handle = (stream as unknown as { file?: FileHandle }).file;
  if (!handle) return;
  const writeOnce = handle.write.bind(handle) as (
    b: Buffer,
    offset: number,
    length: number,
  ) => Promise<{ bytesWritten: number }>;
  Object.assign(handle, {
    write: async (buffer: Buffer) => {
      let done = 0;
      while (done < buffer.length) {
        const { bytesWritten } = await writeOnce(buffer, done, buffer.length - done);
        if (bytesWritten === 0) throw Object.assign(new Error('write made no progress'), { code: 'EIO' });
        done += bytesWritten;
      }
      return { bytesWritten: done, buffer };
    },
  });
}
