/**
 * The shapes the replicator's parts share (docs/design.md "Ownership", "Migration
 * handoff"): what it needs of the Redis connection and of the guest, its options, and
 * what its status reports.
 */
import type { Logger } from 'pino';
import type { MarkerEvent } from '../../common/marker.js';
import type { LocalLog } from '../local-log.js';
import type { MarkerRecord } from '../marker-index.js';
import type { InFlightBudget } from './in-flight-budget.js';
import type { OwnershipRole } from './ownership.js';
import type { RedisClient } from './redis-commands.js';
import type { ReplicationState, ReplicationStateFile } from './replication-state.js';
import type { SegmentClock } from './segment-clock.js';
import type { SharedLog } from './shared-log.js';

/** What the replicators need to know of the Redis connection (the sidecar owns the client). */
export interface RedisLink {
  readonly ready: boolean;
  /** Grows on every (re)connect: a replicator verifies its role again when it changes. */
  readonly generation: number;
  /** Resolves once ready, or when `signal` aborts. */
  waitReady(signal: AbortSignal): Promise<void>;
}

/** The guest-side actions replication needs (the sidecar implements them for a Guest). */
export interface GuestControl {
  /** Resolves once the chardev sent nothing for `quietMs`, or after `timeoutMs` in all. */
  drainSource(quietMs: number, timeoutMs: number): Promise<void>;
  /** Appends a marker to the local log and returns the offset after it. */
  writeMarker(event: MarkerEvent): number;
  /**
   * Whether the guest may have printed what nobody read (the chardev is not connected
   * since this process started, or went away on this side): a handoff marks the hole.
   */
  outputMayBeUnread(): boolean;
  /** Stops reading the chardev for good: the guest runs on another host now, or is gone. */
  stopSource(): Promise<void>;
  /** While true, the guest continues a log another host keeps: opening the chardev starts no boot. */
  setContinuing(value: boolean): void;
  /** Calls `listener` with every chunk appended to the log, at its offset; returns the unsubscribe. */
  onOutput(listener: (offset: number, bytes: Buffer) => void): () => void;
  /** Further output is held in memory (the spool's last copy, see `replaySpool`). */
  holdInMemory(): void;
  /** Appends what memory held to the log; output is numbered again. */
  endHold(): void;
  /**
   * Appends bytes to the log itself, even while output is held; `markers` (offsets
   * relative to `bytes`) go to the log's marker index.
   */
  appendToLog(bytes: Buffer, markers?: readonly MarkerRecord[]): void;
  /** A marker into the log itself, even while output is held; returns the offset after it. */
  writeLogMarker(event: MarkerEvent): number;
}

/** A handoff notification between hosts (Redis pub/sub, on the receiving host's channel). */
export interface HandoffNotice {
  readonly guest: string;
  /** `claimed`: the destination claimed the sealed stream; the source stops without waiting for its poll. */
  readonly event: 'requested' | 'sealed' | 'cancelled' | 'claimed';
  readonly from: string;
}

export interface HandoffSettings {
  readonly completionTimeoutMs: number;
  readonly timeoutAction: 'force_complete' | 'abort';
  readonly pollIntervalMs: number;
  readonly sealPollIntervalMs: number;
  readonly drainQuietMs: number;
  readonly drainTimeoutMs: number;
}

export interface ReplicatorOptions {
  readonly guestId: string;
  readonly host: string;
  readonly log: LocalLog;
  /**
   * Incoming or adopting: the log holding what the guest printed before this host
   * owned the stream (`<guest dir>/spool/`), copied into `log` once the seam is known.
   */
  readonly spool: LocalLog | null;
  readonly shared: SharedLog;
  /** The client `shared` uses, for the skip records. */
  readonly client: RedisClient;
  readonly prefix: string;
  readonly link: RedisLink;
  readonly stateFile: ReplicationStateFile;
  /** The state loaded from `stateFile` (or a new one). */
  readonly state: ReplicationState;
  readonly control: GuestControl;
  readonly notify: (host: string, notice: HandoffNotice) => void;
  readonly segmentMaxBytes: number;
  /** The age bound of segments, shared by the daemon's replicators. */
  readonly clock: SegmentClock;
  /** Bytes of recent output kept in memory to send without reading the files back. */
  readonly recentBytesMax: number;
  /** Appends of this guest in flight at most. */
  readonly maxInFlight: number;
  /** The host's bound on the bytes of all guests' appends in flight (in-flight-budget.ts); none: no bound. */
  readonly inFlightBudget?: InFlightBudget | undefined;
  readonly retentionBytes: number;
  readonly stateSaveIntervalMs: number;
  readonly handoff: HandoffSettings;
  readonly logger: Logger;
}

/**
 * Where a handoff stands, on either side:
 * `waiting` (incoming, no guest byte yet), `requested` (incoming, the source was
 * asked), `aborted` (incoming, timed out with `abort`: still spooling), `draining`
 * (source: asked; draining, then publishing up to its marker), `sealed` (source:
 * waiting for the destination's claim), `completed`, `forced`, `cancelled`.
 */
export type HandoffPhase =
  | 'none'
  | 'waiting'
  | 'requested'
  | 'aborted'
  | 'draining'
  | 'sealed'
  | 'completed'
  | 'forced'
  | 'cancelled';

/** The `replication` section of a guest's status. */
export interface ReplicationStatus {
  role: OwnershipRole;
  host: string;
  epoch: number;
  /** The owner and epoch as last seen in Redis (null before the first look, or when nobody owns it). */
  owner: string | null;
  ownerEpoch: number | null;
  /** The highest epoch this host has known for the stream, and its holder. */
  knownEpoch: number;
  knownOwner: string | null;
  /** Why this host follows (null unless it is a follower). */
  followReason: string | null;
  handoff: {
    phase: HandoffPhase;
    target: string | null;
    source: string | null;
    requestedAt: string | null;
    sealedAt: number | null;
    /** The last handoff this host completed as destination: from the trigger to owning the stream. */
    lastTriggerToOwnerMs: number | null;
  };
  /** The stream holds this log's bytes before this offset. */
  cursor: number;
  lagBytes: number;
  lagSeconds: number;
  /** Incoming: bytes held in the spool, not yet numbered or published. */
  spooledBytes: number;
  /** Not writing: bytes this log holds that the stream never got from this host. */
  unpublishedBytes: number;
  skippedBytes: number;
  lastError: string | null;
}
