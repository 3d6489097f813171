import type { RateLimitState } from '../capture/rate-limiter.js';
import type { LockReservation } from '../console/writer-lock.js';

/**
 * What the process being upgraded tells its successor (docs/design.md "Upgrade"):
 * the messages over the IPC channel, and the manifest that says which inherited file
 * descriptor is whose. Only types and constants: both sides import it.
 */

/** Set (to `1`) in the successor's environment: adopt what the manifest lists. */
export const HANDOVER_ENV = 'CONSOLED_HANDOVER';

/**
 * For tests only: the successor's command line as a JSON array, instead of this
 * node and entry script with the same arguments (README "Upgrades and restarts").
 */
export const SUCCESSOR_COMMAND_ENV = 'CONSOLED_SUCCESSOR_COMMAND';

/** The successor's descriptors: 0 to 2 are stdio, 3 the IPC channel, the inherited ones from here. */
export const FIRST_INHERITED_FD = 4;

/** One guest's chardev, by descriptor number in the successor. */
export type ManifestChardev =
  | { readonly kind: 'socket'; readonly fd: number }
  | { readonly kind: 'listen'; readonly serverFd: number; readonly socketFd: number | null }
  | { readonly kind: 'tty'; readonly fd: number }
  /** Nothing to hand over (`exec`): the successor starts the program again. */
  | { readonly kind: 'restart' };

export interface HandoverManifest {
  readonly version: 1;
  readonly fromPid: number;
  readonly fromVersion: string;
  /** The HTTP API's listening socket, or null when the successor listens itself. */
  readonly apiFd: number | null;
  /** The TLS listener's descriptor (`listen.tls`), or null. */
  readonly apiTlsFd?: number | null;
  readonly guests: ReadonlyArray<{
    readonly id: string;
    readonly chardev: ManifestChardev;
    /** The guest's rate-limit bucket and running suppression episode. */
    readonly rateLimit: RateLimitState;
  }>;
  /** Writer locks kept for writers whose consoles the upgrade closed, by guest. */
  readonly writerReservations: Readonly<Record<string, LockReservation>>;
}

/** Parent to successor. */
export type ParentMessage =
  | { readonly type: 'manifest'; readonly manifest: HandoverManifest }
  /** The parent let go of everything: the successor is the daemon now. */
  | { readonly type: 'commit' };

/** Successor to parent. */
export type SuccessorMessage =
  | { readonly type: 'ready'; readonly pid: number; readonly version: string }
  /** The successor could not start; the parent takes the guests back. */
  | { readonly type: 'failed'; readonly error: string }
  /** The successor took over as the main process (after `commit`). */
  | { readonly type: 'main' };
