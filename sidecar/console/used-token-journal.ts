/**
 * Spent single-use token ids, kept across restarts: without them a token used once
 * would work again after a restart or an upgrade, until it expires.
 *
 * `<stateDir>/used-tokens` holds one line per spent id, `<jti> <expiry ms>\n`,
 * appended (synchronously, before the connection is admitted) as each token is
 * spent. At start the lines still valid are loaded and the file is rewritten without
 * the expired ones; it is rewritten the same way whenever it has grown to several
 * times the live entries. Synchronous, because a token is spent inside a synchronous
 * check; files are opened with `O_NOFOLLOW` (a link planted in the state directory is
 * refused with UNSAFE_PATH, as store/safe-files.ts does for the other state files), the
 * temporary file, unlinked first, with `O_EXCL`.
 */
import { closeSync, constants, openSync, readFileSync, renameSync, unlinkSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { ConsoledError } from '../../common/errors.js';
import { unsafePath } from '../../store/safe-files.js';
import { UsedTokenRegistry } from './viewer-token.js';

const FILE = 'used-tokens';
const LINE = /^([A-Za-z0-9_-]{1,64}) (\d{1,16})$/;
/** Rewrite once the file holds this many lines more than live entries. */
const COMPACT_SLACK = 1024;

function openNoFollow(path: string, flags: number): number;
function openNoFollow(path: string, flags: number, missingOk: true): number | null;
function openNoFollow(path: string, flags: number, missingOk = false): number | null {
  try {
    return openSync(path, flags | constants.O_NOFOLLOW, 0o600);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (missingOk && code === 'ENOENT') return null;
    // O_NOFOLLOW on a link fails with ELOOP.
    if (code === 'ELOOP') throw unsafePath(path, 'is a symbolic link');
    throw new ConsoledError('STORE_FAILED', `${path}: cannot be opened (${code})`);
  }
}

export class UsedTokenJournal {
  readonly registry: UsedTokenRegistry;
  private readonly path: string;
  private fd: number | null = null;
  private lines = 0;
  private loading = false;

  private constructor(
    stateDir: string,
    maxEntries: number,
    private readonly logger: Logger,
  ) {
    this.path = join(stateDir, FILE);
    this.registry = new UsedTokenRegistry({
      maxEntries,
      onRecord: (jti, exp) => this.append(jti, exp),
    });
  }

  /** Loads the spent ids still valid from `<stateDir>/used-tokens` and compacts the file. */
  static open(stateDir: string, maxEntries: number, logger: Logger): UsedTokenJournal {
    const journal = new UsedTokenJournal(stateDir, maxEntries, logger);
    journal.load();
    journal.compact();
    return journal;
  }

  private load(): void {
    const fd = openNoFollow(this.path, constants.O_RDONLY, true);
    if (fd === null) return;
    let text: string;
    try {
      text = readFileSync(fd, 'latin1');
    } finally {
      closeSync(fd);
    }
    const now = Date.now();
    let bad = 0;
    this.loading = true;
    try {
      for (const line of text.split('\n')) {
        if (line === '') continue;
        const m = LINE.exec(line);
        if (!m) {
          bad++; // a line torn by a crash mid-append
          continue;
        }
        this.registry.markUsed(m[1]!, Number(m[2]), now);
      }
    } finally {
      this.loading = false;
    }
    if (bad > 0) this.logger.warn({ path: this.path, bad }, 'used-token journal: skipped malformed lines');
  }

  /** Rewrites the file with the live entries only, then appends to the new one. */
  private compact(): void {
    const tmp = `${this.path}.tmp`;
    try {
      unlinkSync(tmp);
    } catch {
      // no leftover from an interrupted compaction
    }
    const live = [...this.registry.entries()];
    const fd = openNoFollow(tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL);
    try {
      writeSync(fd, live.map(([jti, exp]) => `${jti} ${exp}\n`).join(''));
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, this.path);
    if (this.fd !== null) closeSync(this.fd);
    this.fd = openNoFollow(this.path, constants.O_WRONLY | constants.O_APPEND);
    this.lines = live.length;
  }

  private append(jti: string, expiresAtMs: number): void {
    if (this.loading) return;
    if (this.fd === null) throw new ConsoledError('INTERNAL', 'the used-token journal is closed');
    writeSync(this.fd, `${jti} ${expiresAtMs}\n`);
    this.lines++;
    if (this.lines > 4 * this.registry.size + COMPACT_SLACK) this.compact();
  }

  close(): void {
    if (this.fd !== null) closeSync(this.fd);
    this.fd = null;
  }
}
