/**
 * Revoked viewer-token ids (`DELETE /v1/tokens/{jti}`, README "Tokens"). A revoked id
 * matches every token whose `jti` or chain id (`chn`, else its own `jti`) is that id,
 * so revoking the first token of a chain ends its renewals and successors too. Each
 * id is held until no token it matches can still verify: the revoking host computes
 * that time (console-service.ts), and a later revocation of the same id can only move
 * it later. Bounded like the spent single-use ids (expiring-ids.ts); persisted in
 * `<stateDir>/revoked-tokens` (id-journal.ts) when opened with a state directory.
 */
import type { Logger } from 'pino';
import { ExpiringIds, type ExpiringIdsStats } from './expiring-ids.js';
import { IdJournal } from './id-journal.js';

const FILE = 'revoked-tokens';
/**
 * Revoked ids held at once. Revocations are an operator's calls, so this is far above
 * any real use; past it the id that expires soonest is forgotten and counted.
 */
export const MAX_REVOKED_IDS = 100_000;

export class TokenRevocations {
  private readonly ids: ExpiringIds;
  private journal: IdJournal | null = null;

  /** An in-memory registry; {@link TokenRevocations.open} for one kept in the state directory. */
  constructor(
    private readonly logger: Logger | null = null,
    maxEntries: number = MAX_REVOKED_IDS,
  ) {
    this.ids = new ExpiringIds(maxEntries);
  }

  /** Loads the revocations still in force from `<stateDir>/revoked-tokens` and compacts the file. */
  static open(stateDir: string, logger: Logger, maxEntries: number = MAX_REVOKED_IDS): TokenRevocations {
    const revocations = new TokenRevocations(logger, maxEntries);
    revocations.journal = IdJournal.open(stateDir, FILE, revocations.ids, logger);
    return revocations;
  }

  /**
   * Holds `id` as revoked until `untilMs` (or until later, when it already was).
   * Returns the time it is held until. Persisted before it returns.
   */
  revoke(id: string, untilMs: number, nowMs: number = Date.now()): number {
    const evictions = this.ids.evictions;
    if (this.ids.set(id, untilMs, nowMs)) this.journal?.append(id, untilMs);
    if (this.ids.evictions > evictions) {
      this.logger?.warn(
        { max: this.ids.maxEntries, evictions: this.ids.evictions },
        'revoked token ids: the registry is full, the soonest-expiring revocation was forgotten',
      );
    }
    return this.ids.get(id, nowMs) ?? untilMs;
  }

  /** The revoked id that a token with this `jti` and chain id matches, or null. */
  match(jti: string, chain: string, nowMs: number = Date.now()): string | null {
    if (this.ids.has(jti, nowMs)) return jti;
    if (chain !== jti && this.ids.has(chain, nowMs)) return chain;
    return null;
  }

  /** Whether `id` is held as revoked, and until when (ms). */
  until(id: string, nowMs: number = Date.now()): number | undefined {
    return this.ids.get(id, nowMs);
  }

  stats(): ExpiringIdsStats {
    this.ids.forgetExpired();
    return this.ids.stats();
  }

  close(): void {
    this.journal?.close();
  }
}
