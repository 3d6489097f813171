/**
 * Helpers for the replication tests: daemon configs with a Redis section, reading a
 * guest's whole stream entry by entry (checking that offsets are continuous), and a
 * counter writer paced to a byte rate, so a flood can outlive a Redis outage.
 */
import type { Cluster, Redis } from 'ioredis';
import { DEFAULT_KEY_PREFIX, guestKeys } from '../../store/replication/redis-keys.js';
import { counterLine, type DaemonHandle, type InProcessDaemon, readLog, type SocketPeer } from './daemon.js';
import { waitFor } from './wait.js';

export const NO_RATE_LIMIT = { bytesPerSec: 0, burstBytes: 1 };

type Json = Record<string, unknown>;
type Api = Pick<DaemonHandle, 'api'> | Pick<InProcessDaemon, 'api'>;

/** A daemon config for host `hostId` replicating to `redis` (a `redis:` section, merged over quick test defaults). */
export function replicationConfig(hostId: string, redis: Json, extra: Json = {}): Json {
  return {
    hostId,
    redis: {
      segmentMaxAgeMs: 20,
      stateSaveIntervalMs: 50,
      connectTimeoutMs: 1000,
      reconnect: { initialDelayMs: 20, maxDelayMs: 200 },
      ...redis,
    },
    handoff: {
      pollIntervalMs: 500,
      sealPollIntervalMs: 20,
      drainQuietMs: 30,
      ...((extra['handoff'] as Json | undefined) ?? {}),
    },
    defaults: { rateLimit: NO_RATE_LIMIT, reconnect: { initialDelayMs: 20, maxDelayMs: 200 } },
    ...Object.fromEntries(Object.entries(extra).filter(([k]) => k !== 'handoff')),
  };
}

export interface StreamEntry {
  readonly offset: number;
  readonly length: number;
  readonly host: string;
  /** The appender's fencing epoch (field `e`). */
  readonly epoch: number;
  readonly boot: number;
}

export interface StreamContents {
  /** Offset of the first byte held (null: empty stream). */
  readonly oldest: number | null;
  /** Offset after the last byte. */
  readonly next: number | null;
  readonly bytes: Buffer;
  readonly entries: StreamEntry[];
}

/**
 * Every entry of a guest's stream, in order, with XRANGE (raw, not through the code
 * under test). Throws if an entry does not start where the previous one ended (a
 * byte missing or duplicated), unless it is one of `allowedJumps` (skip counts).
 */
export async function readStream(
  client: Redis | Cluster,
  id: string,
  options: { prefix?: string; allowJumps?: boolean } = {},
): Promise<StreamContents> {
  const { log } = guestKeys(options.prefix ?? DEFAULT_KEY_PREFIX, id);
  const entries: StreamEntry[] = [];
  const chunks: Buffer[] = [];
  let cursor = '-';
  let expected: number | null = null;
  for (;;) {
    const batch = await client.xrangeBuffer(log, cursor, '+', 'COUNT', 500);
    for (const [rawId, fields] of batch) {
      const idText = rawId.toString('latin1');
      const offset = Number(idText.split('-')[0]);
      const f = new Map<string, Buffer>();
      for (let i = 0; i + 1 < fields.length; i += 2) f.set(fields[i]!.toString('latin1'), fields[i + 1]!);
      const bytes = f.get('d') ?? Buffer.alloc(0);
      if (expected !== null && offset !== expected && !options.allowJumps) {
        throw new Error(`stream of ${id}: entry at ${offset} follows one that ended at ${expected}`);
      }
      if (Number(f.get('o')?.toString() ?? offset) !== offset)
        throw new Error(`entry ${idText} has field o ${f.get('o')}`);
      entries.push({
        offset,
        length: bytes.length,
        host: f.get('h')?.toString() ?? '',
        epoch: Number(f.get('e')?.toString() ?? 0),
        boot: Number(f.get('b')?.toString()),
      });
      chunks.push(bytes);
      expected = offset + bytes.length;
      cursor = `(${idText}`;
    }
    if (batch.length < 500) break;
  }
  const first = entries[0];
  return { oldest: first ? first.offset : null, next: expected, bytes: Buffer.concat(chunks), entries };
}

export interface ReplicationStatusView {
  role: string;
  epoch: number;
  owner: string | null;
  ownerEpoch: number | null;
  knownEpoch: number;
  knownOwner: string | null;
  followReason: string | null;
  cursor: number;
  lagBytes: number;
  spooledBytes: number;
  unpublishedBytes: number;
  skippedBytes: number;
  handoff: {
    phase: string;
    target: string | null;
    source: string | null;
    lastTriggerToOwnerMs: number | null;
  };
  lastError: string | null;
  redis: string;
}

export interface GuestStatusView {
  offset: number;
  flushedOffset: number;
  oldestOffset: number;
  boot: number;
  replication?: ReplicationStatusView;
}

export async function guestStatus(d: Api, id: string): Promise<GuestStatusView> {
  const res = await d.api('GET', `/v1/guests/${encodeURIComponent(id)}`);
  if (res.status !== 200) throw new Error(`GET /v1/guests/${id} -> ${res.status} ${await res.text()}`);
  return (await res.json()) as GuestStatusView;
}

/** Waits until every byte the guest's log holds is in the stream (this host owns it). */
export async function waitReplicated(d: Api, id: string, timeoutMs = 30_000): Promise<GuestStatusView> {
  return waitFor(
    `every byte of ${id} in the stream`,
    async () => {
      const s = await guestStatus(d, id);
      const r = s.replication;
      return r &&
        r.role === 'owner' &&
        s.offset === s.flushedOffset &&
        r.cursor === s.flushedOffset &&
        r.lagBytes === 0
        ? s
        : false;
    },
    { timeoutMs, intervalMs: 25 },
  );
}

/** Lines a test guest prints: `<tag> <n>\r\n` for n in [from, from + count). */
export function lines(tag: string, from: number, count: number): string {
  let s = '';
  for (let i = from; i < from + count; i++) s += `${tag} ${i}\r\n`;
  return s;
}

/** Attaches `id` on `d` to the TCP chardev `peer` (optionally as a migration's destination); expects 201. */
export async function attachTcp(
  d: Api,
  id: string,
  peer: { readonly port: number },
  incoming = false,
): Promise<void> {
  const res = await d.api('PUT', `/v1/guests/${id}`, {
    source: { type: 'tcp', host: '127.0.0.1', port: peer.port },
    ...(incoming ? { incoming: true } : {}),
  });
  const text = await res.text();
  if (res.status !== 201) throw new Error(`PUT /v1/guests/${id} -> ${res.status} ${text}`);
}

/** The local log of `id` on `d`, from its oldest byte (`scope=local`). */
export async function localLog(d: Api, id: string): Promise<{ start: number; bytes: Buffer }> {
  const r = await readLog(d, id, { scope: 'local', start: 0 });
  return { start: r.start, bytes: r.bytes };
}

/**
 * Writes counter lines to the peer's current connection at about `bytesPerSec`,
 * every 10 ms, until stopped; waits for a connection when there is none.
 */
export class PacedCounter {
  next = 0;
  sentBytes = 0;
  private timer: NodeJS.Timeout;
  private last = performance.now();
  private credit = 0;

  constructor(
    private readonly peer: SocketPeer,
    bytesPerSec: number,
  ) {
    this.timer = setInterval(() => {
      const now = performance.now();
      this.credit += ((now - this.last) / 1000) * bytesPerSec;
      this.last = now;
      const socket = this.peer.current;
      if (!socket || socket.destroyed) return;
      let batch = '';
      while (this.credit >= batch.length + 33) batch += counterLine(this.next++);
      this.credit -= batch.length;
      if (batch.length > 0) {
        socket.write(batch);
        this.sentBytes += batch.length;
      }
    }, 10);
  }

  stop(): void {
    clearInterval(this.timer);
  }
}
