/**
 * The host registry in Redis (docs/design.md "Host registry"): every daemon with
 * replication says who it is and where it is reached, as one hash per host whose TTL
 * its heartbeat refreshes, and an index of the host ids, so a listing needs no SCAN. A
 * host whose hash expired (it died, or lost Redis for longer than the TTL) is left out
 * of a listing and taken out of the index then (scripts/prune-host-2.lua).
 *
 * When a host was last seen is read from its hash's remaining TTL (`ttlMs - PTTL`),
 * Redis' clock, so the hosts' clocks need not agree for `lastSeenAgoMs` to be right.
 */
import { ConsoledError } from '../../common/errors.js';
import { type RedisClient, replicationCommands } from './redis-commands.js';
import { type HostRegistryKeys, hostRegistryKeys, isHostId } from './redis-keys.js';

/** What a host publishes about itself. */
export interface HostAnnouncement {
  readonly hostId: string;
  /** Base URL of the host's HTTP API (`<apiUrl>/v1/...`). */
  readonly apiUrl: string;
  /** Base URL browsers open the host's consoles under (`<consoleUrl>/console/<id>`). */
  readonly consoleUrl: string;
  /** The consoled version it runs. */
  readonly version: string;
  readonly pid: number;
  /** When its process started (ms since the epoch). */
  readonly startedAt: number;
}

/** A host as a listing finds it. */
export interface HostRecord extends HostAnnouncement {
  /** When it last published, in the lister's clock (ms since the epoch). */
  readonly lastSeen: number;
  readonly lastSeenAgoMs: number;
}

/** The fields of a host's hash, all strings as Redis keeps them. */
type HostFields = Record<keyof HostAnnouncement | 'lastSeen' | 'ttlMs', string>;

/** A multi's replies: each an error or a result; null when the transaction was discarded. */
function checkedExec(replies: Array<[Error | null, unknown]> | null, what: string): void {
  if (!replies) throw new ConsoledError('REPLICATION_UNAVAILABLE', `${what}: the transaction was discarded`);
  const failed = replies.find(([err]) => err !== null);
  if (failed) throw failed[0]!;
}

function toRecord(fields: Record<string, string>, pttl: number, now: number): HostRecord | null {
  const f = fields as Partial<HostFields>;
  const pid = Number(f.pid);
  const startedAt = Number(f.startedAt);
  const published = Number(f.lastSeen);
  const ttlMs = Number(f.ttlMs);
  if (!f.hostId || !f.apiUrl || !f.consoleUrl || !Number.isFinite(published)) return null;
  // The TTL says how long ago it was refreshed; without one (a hand-made key) the host's own clock.
  const ago = pttl >= 0 && Number.isFinite(ttlMs) ? ttlMs - pttl : now - published;
  const lastSeenAgoMs = Math.max(0, ago);
  return {
    hostId: f.hostId,
    apiUrl: f.apiUrl,
    consoleUrl: f.consoleUrl,
    version: f.version ?? 'unknown',
    pid: Number.isInteger(pid) ? pid : 0,
    startedAt: Number.isFinite(startedAt) ? startedAt : 0,
    lastSeen: now - lastSeenAgoMs,
    lastSeenAgoMs,
  };
}

export class HostRegistry {
  private readonly keys: HostRegistryKeys;

  constructor(
    private readonly client: RedisClient,
    prefix: string,
  ) {
    this.keys = hostRegistryKeys(prefix);
  }

  /** Writes the host's hash with a TTL of `ttlMs` and puts it in the index, in one transaction. */
  async publish(host: HostAnnouncement, ttlMs: number): Promise<void> {
    const key = this.keys.host(host.hostId);
    const lastSeen = Date.now();
    const fields: HostFields = {
      hostId: host.hostId,
      apiUrl: host.apiUrl,
      consoleUrl: host.consoleUrl,
      version: host.version,
      pid: String(host.pid),
      startedAt: String(host.startedAt),
      lastSeen: String(lastSeen),
      ttlMs: String(ttlMs),
    };
    const replies = await this.client
      .multi()
      .hset(key, fields)
      .pexpire(key, ttlMs)
      .zadd(this.keys.index, lastSeen, host.hostId)
      .exec();
    checkedExec(replies, 'publishing the host');
  }

  /**
   * Every host whose hash has not expired, sorted by id. Index entries whose hash
   * expired are pruned on the way (unless the host published again meanwhile).
   */
  async list(): Promise<HostRecord[]> {
    const ids = (await this.client.zrange(this.keys.index, '0', '-1')).filter(isHostId);
    if (ids.length === 0) return [];
    const pipeline = this.client.pipeline();
    for (const id of ids) {
      const key = this.keys.host(id);
      pipeline.hgetall(key);
      pipeline.pttl(key);
    }
    const replies = (await pipeline.exec()) ?? [];
    const now = Date.now();
    const hosts: HostRecord[] = [];
    const expired: string[] = [];
    ids.forEach((id, i) => {
      const [hashErr, hash] = replies[2 * i] ?? [null, null];
      const [, pttl] = replies[2 * i + 1] ?? [null, -2];
      if (hashErr) throw hashErr;
      const fields = (hash ?? {}) as Record<string, string>;
      if (Object.keys(fields).length === 0) {
        expired.push(id);
        return;
      }
      const record = toRecord(fields, Number(pttl), now);
      if (record && record.hostId === id) hosts.push(record);
    });
    const commands = replicationCommands(this.client);
    await Promise.all(expired.map((id) => commands.pruneHost(this.keys.index, this.keys.host(id), id)));
    return hosts.sort((a, b) => (a.hostId < b.hostId ? -1 : a.hostId > b.hostId ? 1 : 0));
  }

  /** One host's entry; null when it has none (never published, or its hash expired). */
  async get(hostId: string): Promise<HostRecord | null> {
    if (!isHostId(hostId)) return null;
    const key = this.keys.host(hostId);
    const replies = (await this.client.pipeline().hgetall(key).pttl(key).exec()) ?? [];
    const [hashErr, hash] = replies[0] ?? [null, null];
    if (hashErr) throw hashErr;
    const fields = (hash ?? {}) as Record<string, string>;
    if (Object.keys(fields).length === 0) return null;
    const record = toRecord(fields, Number(replies[1]?.[1] ?? -2), Date.now());
    return record && record.hostId === hostId ? record : null;
  }

  /** Takes the host out of the registry at once (a clean shutdown). */
  async remove(hostId: string): Promise<void> {
    const replies = await this.client
      .multi()
      .del(this.keys.host(hostId))
      .zrem(this.keys.index, hostId)
      .exec();
    checkedExec(replies, 'removing the host');
  }
}
