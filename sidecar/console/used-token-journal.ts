/**
 * Spent single-use token ids, kept across restarts: without them a token used once
 * would work again after a restart or an upgrade, until it expires.
 * `<stateDir>/used-tokens` is an id journal (id-journal.ts): each id is appended
 * before the connection is admitted, and the ones still valid are loaded at start.
 */
import type { Logger } from 'pino';
import { IdJournal } from './id-journal.js';
import { UsedTokenRegistry } from './viewer-token.js';

const FILE = 'used-tokens';

export class UsedTokenJournal {
  readonly registry: UsedTokenRegistry;
  private journal: IdJournal | null = null;

  private constructor(maxEntries: number) {
    this.registry = new UsedTokenRegistry({
      maxEntries,
      onRecord: (jti, exp) => this.journal?.append(jti, exp),
    });
  }

  /** Loads the spent ids still valid from `<stateDir>/used-tokens` and compacts the file. */
  static open(stateDir: string, maxEntries: number, logger: Logger): UsedTokenJournal {
    const used = new UsedTokenJournal(maxEntries);
    used.journal = IdJournal.open(stateDir, FILE, used.registry.ids, logger);
    return used;
  }

  close(): void {
    this.journal?.close();
  }
}
