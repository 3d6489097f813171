import type { EventEmitter } from 'node:events';
import type { LockReservation } from './writer-lock.js';

/**
 * A guest's seams in a live migration, as the console needs them: `sealed` when this
 * host sealed the stream for a destination and `moved` once the destination claimed it
 * (`offset`, both: the final offset, where the destination's log goes on), `role` on
 * every change of this host's ownership role (store/replication/ownership.ts).
 */
export interface SeamEvents {
  sealed: [guestId: string, seam: { target: string | null; offset: number }];
  moved: [guestId: string, seam: { host: string; offset: number }];
  role: [guestId: string, role: string];
}

/** Where a guest's console is served from, as this host sees it. */
export type ConsolePlace =
  /** Attached here and this host serves its console (owner, or no Redis). */
  | 'here'
  /** Arriving here in a live migration: its log is renumbered once the stream is adopted. */
  | 'arriving'
  /** Not served here: not attached, or handed off or fenced; proxied to its owner. */
  | 'elsewhere';

/** The host that owns a guest's stream, as the host registry names it. */
export interface OwnerAddress {
  readonly hostId: string;
  /** The owner's API base URL (`advertise.apiUrl`). */
  readonly apiUrl: string;
}

/**
 * What the console needs from the cluster (docs/design.md "Console across hosts"),
 * implemented over Redis by sidecar/replication/console-directory.ts; absent without
 * a `redis:` section, when every console is served where its guest is attached.
 */
export interface ConsoleCluster {
  readonly hostId: string;
  readonly seams: EventEmitter<SeamEvents>;
  place(guestId: string): ConsolePlace;
  /** The owner of the guest's stream and its API; null when nobody owns it or the owner is not registered. */
  locateOwner(guestId: string): Promise<OwnerAddress | null>;
  /** Keeps the writer lock for the destination of a migration (the source calls it). */
  keepWriter(guestId: string, reservation: LockReservation): Promise<void>;
  /** The writer lock the source kept, if any (the destination calls it once it adopted). */
  keptWriter(guestId: string): Promise<LockReservation | null>;
}
