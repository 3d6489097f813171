import { join } from 'node:path';
import { JsonStateFile } from '../json-state-file.js';
import { type Knowledge, NO_KNOWLEDGE, type OwnershipRole, type Standing } from './ownership.js';

/** The file, in the guest's directory, holding what replication must remember across restarts. */
export const REPLICATION_STATE_FILE = 'replication.json';

/** The version this build writes; docs/design.md "State files" says what each version reads. */
export const REPLICATION_STATE_VERSION = 2;

/** Every role but `unverified`, which is never saved: a restart always verifies again. */
export type PersistedRole = Exclude<OwnershipRole, 'unverified'>;

/** An incoming migration's request (the destination's side). */
export interface IncomingHandoff {
  readonly requestedAtMs: number;
  readonly sourceHost: string | null;
  readonly sourceEpoch: number | null;
  /** The completion timeout passed with `timeoutAction: abort`. */
  readonly aborted: boolean;
}

/**
 * A claim made and not yet reflected in the local log:
 * - `renumber`: an explicit attach claimed an unowned stream; the local log's offset
 *   `from` becomes the stream's `to` (null: the stream was empty, nothing moves);
 * - `spool`: a migration's destination claimed at `next`; it writes the seam's markers
 *   (a gap marker first when `forced`), then the output it held, from `spoolFrom`.
 */
export type PendingAdoption =
  | { readonly kind: 'renumber'; readonly from: number; readonly to: number | null }
  | {
      readonly kind: 'spool';
      readonly next: number | null;
      readonly forced: boolean;
      readonly source: string | null;
      /** The local offset after the seam's markers (set once they are on disk). */
      readonly spoolFrom?: number;
    };

export interface ReplicationState {
  readonly version: typeof REPLICATION_STATE_VERSION;
  /** The host that wrote this file (a state dir copied to another host is not trusted). */
  readonly host: string;
  /** The last role this host had; `claiming`: attached explicitly, claims if nobody owns the stream. */
  readonly role: PersistedRole;
  /** The fencing epoch this host holds or held; 0 before its first claim. */
  readonly epoch: number;
  /** The highest epoch this host has known for the stream, its own or another host's. */
  readonly known: Knowledge;
  /**
   * The stream holds every byte of this log before this offset (acknowledged appends).
   * A hint saved at most every `stateSaveIntervalMs`: the stream's own `next` is the
   * truth, and reconciliation starts from it.
   */
  readonly cursor: number;
  /** Claiming: the local offset a claim renumbers from (the log's oldest at attach). */
  readonly spoolStart?: number;
  /** Incoming: the handoff asked for. */
  readonly handoff?: IncomingHandoff;
  readonly adopt?: PendingAdoption;
  /** Owner sealing for a handoff: the offset it sealed at (it stops there). */
  readonly sealedAt?: number;
  /** The stream has acknowledged at least one append of this host (so an empty stream means Redis lost data). */
  readonly published?: boolean;
  /** Bytes the stream jumped over because this log had rotated them away. */
  readonly skippedBytes: number;
}

export function initialState(
  host: string,
  role: PersistedRole,
  cursor: number,
  known: Knowledge = NO_KNOWLEDGE,
): ReplicationState {
  return { version: REPLICATION_STATE_VERSION, host, role, epoch: 0, known, cursor, skippedBytes: 0 };
}

/** What a saved role means for the decision after a (re)connect (ownership.ts `verdict`). */
export function standingOf(state: ReplicationState): Standing {
  switch (state.role) {
    case 'owner':
    case 'handing-off':
    case 'releasing':
    case 'sealed':
      return { kind: 'owner', epoch: state.epoch, sealed: state.sealedAt !== undefined };
    case 'claiming':
      return { kind: 'claim-if-unowned' };
    default:
      return { kind: 'follower' };
  }
}

const PERSISTED_ROLES: ReadonlySet<string> = new Set<PersistedRole>([
  'claiming',
  'owner',
  'handing-off',
  'sealed',
  'releasing',
  'released',
  'handed-off',
  'follower',
  'fenced',
  'incoming',
  'adopting',
  'cancelled',
]);

/** What `load` found: a state, or why there is none usable. */
export type LoadedState =
  | { readonly kind: 'state'; readonly state: ReplicationState }
  | { readonly kind: 'missing' }
  | { readonly kind: 'unreadable'; readonly why: string };

/**
 * The replication state of one guest, `<guest dir>/replication.json`. Saves are
 * atomic (rename) and not fsynced: what they must survive is a SIGKILL; a state lost
 * with the machine makes the host a follower until a handoff or an operator decides.
 */
export class ReplicationStateFile {
  private readonly file: JsonStateFile<Record<string, unknown>>;

  constructor(
    readonly dir: string,
    fileMode = 0o640,
  ) {
    this.file = new JsonStateFile(join(dir, REPLICATION_STATE_FILE), fileMode, false);
  }

  /** Reads the state; version 1 (before ownership was a state machine) is upgraded. */
  async load(): Promise<LoadedState> {
    let raw: Record<string, unknown> | null;
    try {
      raw = await this.file.load();
    } catch (err) {
      return { kind: 'unreadable', why: err instanceof Error ? err.message : String(err) };
    }
    if (raw === null) return { kind: 'missing' };
    if (typeof raw !== 'object' || typeof raw['host'] !== 'string' || typeof raw['epoch'] !== 'number')
      return { kind: 'unreadable', why: 'not a replication state' };
    if (raw['version'] === 1) return upgradeV1(raw);
    if (raw['version'] !== REPLICATION_STATE_VERSION)
      return { kind: 'unreadable', why: `version ${String(raw['version'])} is not one this build reads` };
    if (typeof raw['role'] !== 'string' || !PERSISTED_ROLES.has(raw['role']))
      return { kind: 'unreadable', why: `unknown role ${JSON.stringify(raw['role'])}` };
    const known = raw['known'] as Knowledge | undefined;
    if (!known || typeof known.epoch !== 'number') return { kind: 'unreadable', why: 'no known epoch' };
    return { kind: 'state', state: raw as unknown as ReplicationState };
  }

  save(state: ReplicationState): Promise<void> {
    return this.file.save(state as unknown as Record<string, unknown>);
  }
}

/**
 * Version 1 had roles owner, incoming, adopting, handed-off, fenced and cancelled, and
 * no known epoch: a handed-off or fenced host knew of a later epoch, at least its own
 * plus one. A v1 `incoming`, `adopting` or `cancelled` state (a migration cut short by
 * the upgrade) is not carried over: the host follows (docs/design.md "State files").
 */
function upgradeV1(raw: Record<string, unknown>): LoadedState {
  const epoch = raw['epoch'] as number;
  const role = raw['role'];
  const base = {
    version: REPLICATION_STATE_VERSION,
    host: raw['host'] as string,
    epoch,
    cursor: typeof raw['cursor'] === 'number' ? raw['cursor'] : 0,
    skippedBytes: typeof raw['skippedBytes'] === 'number' ? raw['skippedBytes'] : 0,
    ...(raw['published'] === true ? { published: true } : {}),
  } as const;
  switch (role) {
    case 'owner':
      return {
        kind: 'state',
        state: {
          ...base,
          role: 'owner',
          known: { epoch, host: base.host },
          ...(typeof raw['sealedAt'] === 'number' ? { sealedAt: raw['sealedAt'] } : {}),
        },
      };
    case 'handed-off':
    case 'fenced':
      return { kind: 'state', state: { ...base, role, known: { epoch: epoch + 1, host: null } } };
    default:
      // incoming, adopting, cancelled: a migration cut short by the upgrade. The
      // destination's spool was numbered in the log by version 1; it cannot be held
      // apart now: follow, and let an operator or a new handoff decide.
      return { kind: 'unreadable', why: `version 1 role ${String(role)} is not carried over` };
  }
}
