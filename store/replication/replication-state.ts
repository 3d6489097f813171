import { join } from 'node:path';
import { JsonStateFile } from '../json-state-file.js';

/** The file, in the guest's directory, holding what replication must remember across restarts. */
export const REPLICATION_STATE_FILE = 'replication.json';

/**
 * What this host is to the guest's shared stream:
 * - `owner`: it appends (with `epoch`);
 * - `incoming`: a migration's destination, spooling into its local log, publishing nothing;
 * - `adopting`: it claimed the stream and is renumbering its spool (`adopt`) to continue it;
 * - `handed-off`: it sealed the stream for a migration's destination and stopped;
 * - `fenced`: another host took the guest with a higher epoch; the bytes it kept are local only;
 * - `cancelled`: an incoming migration was cancelled before this host owned the guest.
 */
export type ReplicationRole = 'owner' | 'incoming' | 'adopting' | 'handed-off' | 'fenced' | 'cancelled';

export interface ReplicationState {
  readonly version: 1;
  /** The host that wrote this file (a state dir copied to another host is not trusted). */
  readonly host: string;
  readonly role: ReplicationRole;
  /** The fencing epoch this host holds or held; 0 before its first claim. */
  readonly epoch: number;
  /**
   * The stream holds every byte of this log before this offset (acknowledged appends).
   * A hint saved at most every `stateSaveIntervalMs`: the stream's own `next` is the
   * truth, and reconciliation starts from it.
   */
  readonly cursor: number;
  /** Incoming: the local offset where the spool begins (the log's end at attach). */
  readonly spoolStart?: number;
  /** Incoming: when the handoff was asked for (ms), and of whom. */
  readonly handoff?: {
    readonly requestedAtMs: number;
    readonly sourceHost: string | null;
    readonly sourceEpoch: number | null;
    /** The completion timeout passed with `timeoutAction: abort`. */
    readonly aborted: boolean;
  };
  /** Adopting: the spool offset `from` becomes stream offset `to` (null: the stream was empty). */
  readonly adopt?: { readonly from: number; readonly to: number | null; readonly forced: boolean };
  /** Owner sealing for a handoff: the offset it sealed at (it stops there). */
  readonly sealedAt?: number;
  /** The stream has acknowledged at least one append of this host (so an empty stream means Redis lost data). */
  readonly published?: boolean;
  /** Bytes the stream jumped over because this log had rotated them away (invariant 2). */
  readonly skippedBytes: number;
}

export function initialState(host: string, role: ReplicationRole, cursor: number): ReplicationState {
  return { version: 1, host, role, epoch: 0, cursor, skippedBytes: 0 };
}

/**
 * The replication state of one guest, `<guest dir>/replication.json`. Saves are
 * atomic (rename) and not fsynced: what they must survive is a SIGKILL; a state lost
 * with the machine is rebuilt from the stream by reconciliation.
 */
export class ReplicationStateFile {
  private readonly file: JsonStateFile<ReplicationState>;

  constructor(
    readonly dir: string,
    fileMode = 0o640,
  ) {
    this.file = new JsonStateFile(join(dir, REPLICATION_STATE_FILE), fileMode, false);
  }

  async load(): Promise<ReplicationState | null> {
    const raw = await this.file.load();
    if (raw?.version !== 1 || typeof raw.role !== 'string') return null;
    return raw;
  }

  save(state: ReplicationState): Promise<void> {
    return this.file.save(state);
  }
}
