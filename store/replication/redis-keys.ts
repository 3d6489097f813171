/**
 * The one place that names Redis keys. Every key of a guest
 * carries the hash tag `{<id>}`, so one guest lives in one Redis Cluster slot and
 * its Lua scripts may touch all its keys (docs/design.md "Redis schema").
 */
import { ConsoledError } from '../../common/errors.js';
import { assertGuestId } from '../../common/guest-id.js';

/** docs/design.md "Redis schema": keys are `consoled:{<id>}:log`, `consoled:{<id>}:owner`, ... */
export const DEFAULT_KEY_PREFIX = 'consoled:';

export interface GuestKeys {
  /** The stream: one entry per segment, ID `<offset>-1` (see scripts/append-5.lua). */
  readonly log: string;
  /** Hash: owner host, fencing epoch, next offset, handoff state (see scripts/status-2.lua). */
  readonly owner: string;
  /** Sorted set: member = boot number, score = offset of the boot's first byte held. */
  readonly boots: string;
  /** Sorted set of consoled's markers in the stream: member `offset:length:kind`, score the offset. */
  readonly markers: string;
  /**
   * The stream's write slot: the stream is renamed to it and back inside the one MULTI
   * of an append whose bytes stay out of Lua (see scripts/append-5.lua); never seen
   * outside one.
   */
  readonly logSlot: string;
}

/**
 * Rejects a prefix that would break the hash tag: Redis hashes only the text
 * between the first `{` and the next `}`, so a brace in the prefix would move
 * every guest into one slot (or split a guest across slots).
 */
export function assertKeyPrefix(prefix: string): string {
  if (/[{}]/.test(prefix) || prefix.length > 64) {
    throw new ConsoledError(
      'BAD_CONFIG',
      `redis key prefix ${JSON.stringify(prefix)} must contain no braces and at most 64 characters`,
    );
  }
  return prefix;
}

/** The hash tag of one guest: `{<id>}`. */
export function hashTag(guestId: string): string {
  return `{${assertGuestId(guestId)}}`;
}

/** Every key of one guest, e.g. `consoled:{vm-1}:log`. Validates the guest id. */
export function guestKeys(prefix: string, guestId: string): GuestKeys {
  const base = `${assertKeyPrefix(prefix)}${hashTag(guestId)}`;
  return {
    log: `${base}:log`,
    owner: `${base}:owner`,
    boots: `${base}:boots`,
    markers: `${base}:markers`,
    logSlot: `${base}:log:slot`,
  };
}

/**
 * Sorted set of the spans the stream jumped over (docs/design.md, invariant 2): member
 * `<from>-<to>`, score `to`. Readers start after the newest one, so a read never
 * crosses a hole. Written by the replicator after an append that skipped.
 */
export function skipsKey(prefix: string, guestId: string): string {
  return `${assertKeyPrefix(prefix)}${hashTag(guestId)}:skips`;
}

/** A host id: what `hostId` in the config allows. */
const HOST_ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;

export function isHostId(hostId: string): boolean {
  return HOST_ID_PATTERN.test(hostId);
}

function assertHostId(hostId: string): string {
  if (!isHostId(hostId)) {
    throw new ConsoledError(
      'BAD_CONFIG',
      `host id ${JSON.stringify(hostId.slice(0, 64))} is not a valid name`,
    );
  }
  return hostId;
}

/**
 * The pub/sub channel a host listens on for handoff notifications about its guests
 * (a destination asking, a source that sealed). Not a key: no hash tag needed.
 */
export function hostChannel(prefix: string, hostId: string): string {
  return `${assertKeyPrefix(prefix)}host:${assertHostId(hostId)}`;
}

/**
 * The hash tag of the host registry (docs/design.md "Redis schema"). No guest id can
 * start with `_`, so no guest's keys share it; every key of the registry does, so
 * they live in one Cluster slot and a script may touch the index and a host together.
 */
const HOSTS_TAG = '{_hosts}';

export interface HostRegistryKeys {
  /** Sorted set of host ids, score the time of the host's last publish (ms, its clock). */
  readonly index: string;
  /** Hash of one host (store/replication/host-registry.ts), with the registry's TTL. */
  host(hostId: string): string;
}

/**
 * The host registry's keys: `<prefix>{_hosts}:index` and `<prefix>{_hosts}:host:<hostId>`.
 * Not `<prefix>host:<hostId>`, which is the host's pub/sub channel (`hostChannel`).
 */
export function hostRegistryKeys(prefix: string): HostRegistryKeys {
  const base = `${assertKeyPrefix(prefix)}${HOSTS_TAG}`;
  return { index: `${base}:index`, host: (hostId) => `${base}:host:${assertHostId(hostId)}` };
}

/**
 * A spent single-use viewer token (sidecar/console/shared-used-tokens.ts): set with
 * NX and the token's remaining lifetime, so it disappears when the token expires.
 */
export function usedTokenKey(prefix: string, guestId: string, jti: string): string {
  return `${assertKeyPrefix(prefix)}${hashTag(guestId)}:used-token:${assertTokenId(jti)}`;
}

/** A viewer token id (`jti`, `chn`): base64url, 1 to 64 characters; else BAD_PARAMETER. */
function assertTokenId(jti: string): string {
  if (!/^[A-Za-z0-9_-]{1,64}$/.test(jti)) throw new ConsoledError('BAD_PARAMETER', 'bad token id');
  return jti;
}

/**
 * The hash tag of the revoked token ids (docs/design.md "Redis schema"): no guest id
 * starts with `_`, and a connection's check reads its token's `jti` and chain id in one
 * MGET, which a Cluster answers only for keys of one slot.
 */
const TOKENS_TAG = '{_tokens}';

/**
 * A revoked viewer-token id (sidecar/console/shared-revocations.ts):
 * `<prefix>{_tokens}:revoked:<jti>`, its value the time (ms) it is held until, with
 * that time as its PX TTL.
 */
export function revokedTokenKey(prefix: string, jti: string): string {
  return `${assertKeyPrefix(prefix)}${TOKENS_TAG}:revoked:${assertTokenId(jti)}`;
}

/**
 * The pub/sub channel every host listens on for revocations, so that each ends its
 * matching sessions at once: `<prefix>tokens:revoked`. Not a key: no hash tag needed.
 */
export function revocationChannel(prefix: string): string {
  return `${assertKeyPrefix(prefix)}tokens:revoked`;
}

/**
 * The writer lock a migration's source keeps for its writer (docs/design.md "Console
 * across hosts"): JSON `{name, chain?, untilMs}`, with a PX TTL of the reservation's
 * remaining time, read by the destination once it adopted the stream.
 */
export function writerReservationKey(prefix: string, guestId: string): string {
  return `${assertKeyPrefix(prefix)}${hashTag(guestId)}:writer-reservation`;
}
