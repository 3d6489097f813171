/**
 * The audit file: the daemon's audit lines (console opens and refusals, history purges,
 * forced handoffs; `"component":"audit"`) in a file of their own besides the daemon's
 * log, rotated by size as logrotate would (`audit.log`, `audit.log.1`, …). Written by
 * rotating-file-stream, which suits a low-volume, line-oriented log; the guests' logs
 * have a writer of their own (docs/benchmarks.md "Writer").
 *
 * The file is opened by path, following links like any logrotate-style writer: its
 * directory must be one only consoled writes (docs/design.md "Local store"; the unit's
 * LogsDirectory=consoled), and a loosely moded one is refused.
 */
import { lstat } from 'node:fs/promises';
import { basename, dirname } from 'node:path';
import { createStream, type RotatingFileStream } from 'rotating-file-stream';
import { ConsoledError } from '../../common/errors.js';
import type { ComponentCopy } from '../../common/logger.js';
import type { Config } from '../config.js';

export class AuditFile {
  private constructor(private readonly stream: RotatingFileStream) {}

  /** Opens the configured audit file; null when none is configured. */
  static async open(config: Readonly<Pick<Config, 'audit'>>): Promise<AuditFile | null> {
    const { file, maxFileBytes, maxFiles } = config.audit;
    if (!file) return null;
    const dir = dirname(file);
    const info = await lstat(dir).catch(() => null);
    if (!info?.isDirectory()) throw new ConsoledError('BAD_CONFIG', `audit.file: ${dir} is not a directory`);
    if ((info.mode & 0o022) !== 0)
      throw new ConsoledError('BAD_CONFIG', `audit.file: ${dir} is writable by others than its owner`);
    const stream = createStream(basename(file), {
      path: dir,
      size: `${Math.max(1, Math.floor(maxFileBytes / 1024))}K`,
      rotate: maxFiles,
      mode: 0o640,
    });
    const audit = new AuditFile(stream);
    stream.on('error', (err) => {
      // The lines are in the daemon's log as well: a failing audit file loses no record.
      process.stderr.write(`consoled: audit file ${file}: ${String(err)}\n`);
    });
    return audit;
  }

  /** What the logger copies here: the lines of the `audit` component. */
  get copy(): ComponentCopy {
    return { component: 'audit', stream: this.stream };
  }

  /** Writes what is buffered and closes the file. */
  close(): Promise<void> {
    return new Promise((resolve) => {
      this.stream.end(() => resolve());
    });
  }
}
