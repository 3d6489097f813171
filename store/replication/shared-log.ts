/**
 * A guest's console log as held in the shared Redis stream (docs/design.md
 * "Redis schema"): the fenced, exactly-once write side the replicator calls, and the read
 * side any host uses when it has no local copy. The local log is the source of
 * truth; this is its durable, shared mirror.
 *
 * Reads seek by offset: entry IDs are `<offset>-1` (see scripts/append-5.lua), so
 * `XREVRANGE log <o> - COUNT 1` finds the entry holding byte o and `XRANGE` with a
 * COUNT sized from the bytes still wanted continues from there. A read costs what it
 * returns, never the length of the history (invariant 5). The write and the read side
 * of one stream stay in this one class (about 580 lines): they share the keys, the
 * scripts and the entry format; the entry parsing and range gathering live in
 * stream-entries.ts. Every read uses the
 * Buffer variants of ioredis' commands: console bytes are not UTF-8 (invariant 6).
 */
import { Cluster } from 'ioredis';
import { ConsoledError } from '../../common/errors.js';
import { decodeMarker, encodeMarker, type MarkerRecord } from '../marker-index.js';
import {
  type AppendReply,
  type ClaimReply,
  type HandoffState,
  type RedisClient,
  type ReplicationCommands,
  type RequestHandoffReply,
  replicationCommands,
  type SealReply,
  type StatusReply,
} from './redis-commands.js';
import { DEFAULT_KEY_PREFIX, type GuestKeys, guestKeys } from './redis-keys.js';
import {
  batchSize,
  type Entry,
  FIRST_BATCH_ENTRIES,
  MAX_BATCH_ENTRIES,
  parseEntry,
  RangeBuilder,
  type RangeRead,
  type RawEntry,
} from './stream-entries.js';

export type { RangeRead } from './stream-entries.js';

/** GCP's getSerialPortOutput returns at most 1 MB per call; so does a read here by default. */
export const DEFAULT_READ_LIMIT_BYTES = 1024 * 1024;
/** How long one XREAD of `follow()` blocks before it looks again, ms. */
export const DEFAULT_FOLLOW_BLOCK_MS = 5_000;

const EMPTY: Buffer = Buffer.alloc(0);
const NEWLINE = 0x0a;

export interface SharedLogOptions {
  /** Key prefix, so several deployments can share one Redis. @default 'consoled:' */
  prefix?: string;
  /** How long one XREAD BLOCK of `follow()` waits, ms. @default 5000 */
  followBlockMs?: number;
}

export interface Segment {
  /** The appender's fencing epoch. */
  epoch: number;
  /** The appender's host name. */
  host: string;
  /** Offset of `bytes[0]` in the guest's log. */
  offset: number;
  /** Consecutive bytes of one boot, non-empty. */
  bytes: Buffer;
  boot: number;
  timestampMs: number;
}

export interface AppendOptions {
  /**
   * Accept `offset` beyond the stream's `next`: the local log rotated those bytes
   * away during a long outage (docs/design.md, invariant 2). The jump is added to the
   * owner's `skippedBytes`. Never set it for anything else.
   */
  allowSkip?: boolean;
  /** consoled's markers that start in the segment (the marker index), kept in the `markers` set. */
  markers?: readonly MarkerRecord[];
}

export interface ClaimOptions {
  host: string;
  /** The epoch the caller last saw, or `any` (a forced takeover). */
  expectedEpoch: number | 'any';
  /** Only succeed if the owner sealed the handoff (for this host or for anyone). @default false */
  requireSealed?: boolean;
  /**
   * The highest epoch the caller has known for this stream, its own or another
   * host's (docs/design.md "Ownership"): a claim below the current epoch is refused,
   * and the new epoch is above both, so epochs never go back. @default 0
   */
  knownEpoch?: number;
  /** Only succeed if nobody owns the stream (never owned, or released). @default false */
  requireUnowned?: boolean;
}

/** The owner hash and stream bounds of one guest, read in one snapshot. */
export type OwnerRecord = StatusReply;

export interface BootRange {
  boot: number;
  /** The boot's first byte (it may be older than the oldest byte kept). */
  start: number;
  /** The next boot's first byte, or the stream's `next` for the current boot. */
  end: number;
}

export interface FollowOptions {
  /** Most bytes in one yielded chunk. @default DEFAULT_READ_LIMIT_BYTES */
  chunkBytes?: number;
}

/** Guests whose keys `SharedLog.keys` keeps built (a few thousand short strings). */
const KEYS_KEPT = 4096;

/** The shared Redis stream of every guest, through one ioredis client (Redis, Sentinel or Cluster). */
export class SharedLog {
  private readonly commands: ReplicationCommands;
  private readonly prefix: string;
  private readonly followBlockMs: number;

  /** Every append asks for its guest's keys; built once per guest, not per segment. */
  private readonly keysByGuest = new Map<string, GuestKeys>();

  constructor(
    private readonly client: RedisClient,
    options: SharedLogOptions = {},
  ) {
    this.prefix = options.prefix ?? DEFAULT_KEY_PREFIX;
    this.followBlockMs = options.followBlockMs ?? DEFAULT_FOLLOW_BLOCK_MS;
    guestKeys(this.prefix, 'probe'); // fails now, not at the first append, on a bad prefix
    this.commands = replicationCommands(client);
  }

  /** The keys of one guest; validates the guest id (once: they are kept for the next call). */
  keys(guestId: string): GuestKeys {
    let keys = this.keysByGuest.get(guestId);
    if (!keys) {
      keys = guestKeys(this.prefix, guestId);
      // Bounded: guests come and go for the daemon's life; starting afresh costs one build each.
      if (this.keysByGuest.size >= KEYS_KEPT) this.keysByGuest.clear();
      this.keysByGuest.set(guestId, keys);
    }
    return keys;
  }

  // ---- write side (the replicator) ----

  /**
   * Appends one segment if `epoch` is current and `offset` continues the stream.
   * A re-send of bytes already held resolves `{status: 'duplicate'}`. Throws FENCED
   * (details `{epoch, host}`: the current owner), OFFSET_MISMATCH (details `{next,
   * reason: 'gap' | 'overlap'}`), HANDOFF_STATE (the owner sealed). On a guest with
   * no owner hash (new, or Redis lost it) the first offset given is accepted.
   */
  append(
    guestId: string,
    segment: Segment,
    retentionBytes: number,
    options: AppendOptions = {},
  ): Promise<AppendReply> {
    // Not an async function: its promise would wrap the batch's, for every segment of
    // every guest. A bad argument still rejects rather than throws.
    let keys: GuestKeys;
    try {
      keys = this.keys(guestId);
      checkSegment(segment, retentionBytes);
    } catch (err) {
      return Promise.reject(err);
    }
    // Named fields, not a spread of `segment`.
    const markers = options.markers;
    return this.commands.append(keys, {
      epoch: segment.epoch,
      host: segment.host,
      offset: segment.offset,
      bytes: segment.bytes,
      boot: segment.boot,
      timestampMs: segment.timestampMs,
      retentionBytes,
      allowSkip: options.allowSkip ?? false,
      markers: markers && markers.length > 0 ? markers.map(encodeMarker).join(',') : '',
    });
  }

  /** Bumps the fencing epoch and makes `host` the owner. See scripts/claim-2.lua. */
  async claim(guestId: string, options: ClaimOptions): Promise<ClaimReply> {
    const keys = this.keys(guestId);
    assertHost(options.host);
    if (options.expectedEpoch !== 'any') assertCount('expectedEpoch', options.expectedEpoch);
    const knownEpoch = options.knownEpoch ?? 0;
    assertCount('knownEpoch', knownEpoch);
    return this.commands.claim(keys, {
      host: options.host,
      expectedEpoch: options.expectedEpoch,
      requireSealed: options.requireSealed ?? false,
      knownEpoch,
      requireUnowned: options.requireUnowned ?? false,
    });
  }

  /**
   * The owner gives the stream up at `finalOffset`, which must be the stream's
   * `next`: nobody owns it afterwards, and any host may claim it. See scripts/release-1.lua.
   */
  async release(guestId: string, epoch: number, host: string, finalOffset: number): Promise<number> {
    const keys = this.keys(guestId);
    assertCount('epoch', epoch, 1);
    assertHost(host);
    assertCount('finalOffset', finalOffset);
    return this.commands.release(keys, epoch, host, finalOffset);
  }

  /** A migration's destination asks the owner to hand over. See scripts/request-handoff-1.lua. */
  async requestHandoff(
    guestId: string,
    target: string,
    expectedEpoch: number | 'any',
  ): Promise<RequestHandoffReply> {
    const keys = this.keys(guestId);
    assertHost(target);
    if (expectedEpoch !== 'any') assertCount('expectedEpoch', expectedEpoch);
    return this.commands.requestHandoff(keys, target, expectedEpoch);
  }

  /** Cancels a handoff (to `target`, or any); returns the state cancelled. */
  async cancelHandoff(guestId: string, target: string | null = null): Promise<HandoffState> {
    return this.commands.cancelHandoff(this.keys(guestId), target);
  }

  /**
   * The owner stops appending at `finalOffset`, which must be the stream's `next`
   * (OFFSET_MISMATCH otherwise: append the rest first). See scripts/seal-1.lua.
   */
  async seal(guestId: string, epoch: number, host: string, finalOffset: number): Promise<SealReply> {
    const keys = this.keys(guestId);
    assertCount('epoch', epoch, 1);
    assertHost(host);
    assertCount('finalOffset', finalOffset);
    return this.commands.seal(keys, epoch, host, finalOffset);
  }

  /**
   * consoled's markers that start in `[start, end)` (docs/design.md "Markers"): what
   * tells them from guest bytes that look like one.
   */
  async markers(guestId: string, start = 0, end = Number.POSITIVE_INFINITY): Promise<MarkerRecord[]> {
    const { markers } = this.keys(guestId);
    assertCount('start', start);
    const members = await this.client.zrangebyscore(
      markers,
      String(start),
      end === Number.POSITIVE_INFINITY ? '+inf' : `(${end}`,
    );
    return members.map(decodeMarker).filter((m): m is MarkerRecord => m !== null);
  }

  /** The stream's last entry: who appended it, at which epoch, and where it ends (null: empty). */
  async lastEntry(guestId: string): Promise<{ host: string; epoch: number; end: number } | null> {
    const { log } = this.keys(guestId);
    const last = (await this.client.xrevrangeBuffer(log, '+', '-', 'COUNT', 1)) as RawEntry[];
    const entry = last[0];
    if (!entry) return null;
    const offset = Number(entry[0].toString('latin1').split('-')[0]);
    let host = '';
    let epoch = 0;
    let length = 0;
    for (let i = 0; i + 1 < entry[1].length; i += 2) {
      const name = entry[1][i]!.toString('latin1');
      const value = entry[1][i + 1]!;
      if (name === 'h') host = value.toString('utf8');
      else if (name === 'e') epoch = Number(value.toString('latin1'));
      else if (name === 'd') length = value.length;
    }
    return { host, epoch, end: offset + length };
  }

  /** Owner, epoch, handoff state, next offset and stream bounds, in one snapshot. */
  async owner(guestId: string): Promise<OwnerRecord> {
    return this.commands.status(this.keys(guestId));
  }

  /**
   * The offset the next append must carry, or null when Redis holds no byte of the
   * guest (a new guest, or a Redis that lost its data: the replicator then re-sends
   * what its local log still holds, and the first append is accepted as it comes).
   */
  async lastOffset(guestId: string): Promise<number | null> {
    const status = await this.owner(guestId);
    return status.next ?? status.streamEnd;
  }

  // ---- read side ----

  /**
   * Bytes `[start, end)`, at most `limitBytes` of them. `start` is clamped forward
   * to the oldest byte kept (or past a skipped span); the read stops before a
   * skipped span, so `next` is where the following read resumes and its `start`
   * shows the jump.
   */
  async readRange(
    guestId: string,
    start: number,
    end: number = Number.POSITIVE_INFINITY,
    limitBytes: number = DEFAULT_READ_LIMIT_BYTES,
  ): Promise<RangeRead> {
    const { log } = this.keys(guestId);
    assertCount('start', start);
    if (!(end >= start)) throw new ConsoledError('BAD_PARAMETER', `end ${end} is before start ${start}`);
    if (!(limitBytes > 0))
      throw new ConsoledError('BAD_PARAMETER', `limitBytes ${limitBytes} must be positive`);
    return (await this.readFrom(log, start, end, limitBytes)).read;
  }

  /** The last `bytes` bytes (fewer if the stream holds fewer, or has a skipped span within). */
  async tail(guestId: string, bytes: number): Promise<RangeRead> {
    const { log } = this.keys(guestId);
    assertCount('bytes', bytes);
    const chunks: Buffer[] = [];
    let start: number | undefined;
    let next: number | undefined;
    let wanted = bytes;
    for await (const entry of this.backward(log, () => wanted)) {
      const entryEnd = entry.offset + entry.bytes.length;
      if (next === undefined) {
        next = entryEnd;
        start = entryEnd;
      } else if (entryEnd !== start) {
        break; // a skipped span: serve the bytes after it
      }
      if (wanted === 0) break;
      const take = Math.min(wanted, entry.bytes.length);
      chunks.push(entry.bytes.subarray(entry.bytes.length - take));
      start = entryEnd - take;
      wanted -= take;
      if (wanted === 0) break;
    }
    if (next === undefined || start === undefined) return this.emptyAtEnd(guestId);
    return { start, next, bytes: Buffer.concat(chunks.reverse()) };
  }

  /**
   * The last `count` lines (a final newline does not start an empty line), at most
   * `maxBytes` bytes. Reads backwards in batches until enough newlines were seen.
   */
  async lines(
    guestId: string,
    count: number,
    maxBytes: number = DEFAULT_READ_LIMIT_BYTES,
  ): Promise<RangeRead> {
    const { log } = this.keys(guestId);
    assertCount('count', count);
    const chunks: Buffer[] = [];
    let start: number | undefined;
    let next: number | undefined;
    let newlines = 0;
    let gathered = 0;
    let complete = count === 0;
    // Size the next batch from the lines still missing at the average line length seen.
    const wantedBytes = (): number => {
      const perLine = newlines === 0 ? gathered : gathered / newlines;
      return Math.max(0, Math.min(maxBytes - gathered, perLine * (count - newlines + 1)));
    };
    for await (const entry of this.backward(log, wantedBytes)) {
      if (complete) break;
      const entryEnd = entry.offset + entry.bytes.length;
      if (next === undefined) {
        next = entryEnd;
        start = entryEnd;
      } else if (entryEnd !== start) {
        break;
      }
      const bytes = entry.bytes;
      // Scan this entry backwards for newlines, not counting the log's final byte.
      let from = bytes.length;
      let cut = 0;
      while (from > 0) {
        const at = bytes.lastIndexOf(NEWLINE, from - 1);
        if (at < 0) break;
        from = at;
        if (entry.offset + at === next - 1) continue;
        newlines++;
        if (newlines === count) {
          cut = at + 1;
          complete = true;
          break;
        }
      }
      const room = maxBytes - gathered;
      if (bytes.length - cut >= room) {
        cut = bytes.length - room;
        complete = true;
      }
      chunks.push(bytes.subarray(cut));
      gathered += bytes.length - cut;
      start = entry.offset + cut;
      if (complete) break;
    }
    if (next === undefined || start === undefined) return this.emptyAtEnd(guestId);
    return { start, next, bytes: Buffer.concat(chunks.reverse()) };
  }

  /**
   * `[start, end)` of a boot: `current`, `previous`, or a boot number. Throws
   * RANGE_NOT_AVAILABLE for a boot the stream has no record of.
   */
  async bootRange(guestId: string, which: 'current' | 'previous' | number): Promise<BootRange> {
    const { boots } = this.keys(guestId);
    let boot: number;
    let start: number;
    let end: number | undefined;
    if (which === 'current' || which === 'previous') {
      const newest = pairs(await this.client.zrevrange(boots, 0, 1, 'WITHSCORES'));
      const wanted = which === 'current' ? newest[0] : newest[1];
      if (!wanted) throw new ConsoledError('RANGE_NOT_AVAILABLE', `no ${which} boot is recorded`);
      [boot, start] = wanted;
      if (which === 'previous') end = newest[0]![1];
    } else {
      assertCount('boot', which);
      const score = await this.client.zscore(boots, String(which));
      if (score === null) throw new ConsoledError('RANGE_NOT_AVAILABLE', `boot ${which} is not recorded`);
      boot = which;
      start = Number(score);
      const following = pairs(
        await this.client.zrangebyscore(boots, `(${score}`, '+inf', 'WITHSCORES', 'LIMIT', 0, 1),
      );
      end = following[0]?.[1];
    }
    end ??= (await this.lastOffset(guestId)) ?? start;
    return { boot, start, end: Math.max(end, start) };
  }

  /**
   * New bytes from `fromOffset` on, as they are appended, until `signal` aborts
   * (the iterator then ends quietly). Catches up with XRANGE first, then waits with
   * XREAD BLOCK on a dedicated connection (a duplicate of the client, closed at the
   * end). A chunk's `start` beyond the previous `next` means bytes were trimmed or
   * skipped in between. A Redis error ends the iterator with that error; resume
   * from the last `next`.
   */
  async *follow(
    guestId: string,
    fromOffset: number,
    signal: AbortSignal,
    options: FollowOptions = {},
  ): AsyncGenerator<RangeRead, void, undefined> {
    const { log } = this.keys(guestId);
    assertCount('fromOffset', fromOffset);
    const chunkBytes = options.chunkBytes ?? DEFAULT_READ_LIMIT_BYTES;
    if (signal.aborted) return;
    const blocking = dedicatedConnection(this.client);
    // Failures surface as rejected XREADs, which end the iterator; no need to log twice.
    blocking.on('error', () => {});
    const onAbort = (): void => blocking.disconnect();
    signal.addEventListener('abort', onAbort, { once: true });
    let from = fromOffset;
    try {
      while (!signal.aborted) {
        const { read: caughtUp, lastSeenId } = await this.readFrom(
          log,
          from,
          Number.POSITIVE_INFINITY,
          chunkBytes,
        );
        if (caughtUp.bytes.length > 0) {
          from = caughtUp.next;
          yield caughtUp;
          continue;
        }
        // Nothing at `from` yet. Wait for entries after the newest one that read saw:
        // an explicit ID, not `$`, so an append racing this call is not missed.
        const reply = await blocking.xreadBuffer(
          'COUNT',
          MAX_BATCH_ENTRIES,
          'BLOCK',
          this.followBlockMs,
          'STREAMS',
          log,
          lastSeenId,
        );
        if (!reply || signal.aborted) continue;
        const range = new RangeBuilder(from, Number.POSITIVE_INFINITY, chunkBytes);
        for (const [, entries] of reply) {
          for (const raw of entries) if (!range.add(parseEntry(raw))) break;
        }
        const read = range.result();
        if (read.bytes.length > 0) {
          from = read.next;
          yield read;
        }
      }
    } catch (err) {
      if (!signal.aborted) throw err;
    } finally {
      signal.removeEventListener('abort', onAbort);
      blocking.disconnect();
    }
  }

  // ---- internals ----

  /**
   * `readRange` on a key, also returning the ID of the newest entry it saw ('0-0'
   * if none): when the read is empty, every later append has a greater ID, so an
   * XREAD from there misses nothing.
   */
  private async readFrom(
    log: string,
    start: number,
    end: number,
    limitBytes: number,
  ): Promise<{ read: RangeRead; lastSeenId: string }> {
    const range = new RangeBuilder(start, end, limitBytes);
    // The entry holding byte `start` is the last one whose offset is <= start.
    const [holding] = await this.revrange(log, String(start), '-', 1);
    let lastSeenId = '0-0';
    if (holding) {
      range.add(holding);
      lastSeenId = holding.id;
    }
    while (!range.complete) {
      const count = batchSize(range.remaining, range.averageEntryBytes);
      const entries = await this.range(log, lastSeenId === '0-0' ? '-' : `(${lastSeenId}`, '+', count);
      let full = false;
      for (const entry of entries) {
        lastSeenId = entry.id;
        if (!range.add(entry)) {
          full = true;
          break;
        }
      }
      if (full || entries.length < count) break;
    }
    return { read: range.result(), lastSeenId };
  }

  /** Entries newest first, in batches sized from `wantedBytes()` and the sizes seen so far. */
  private async *backward(log: string, wantedBytes: () => number): AsyncGenerator<Entry, void, undefined> {
    let cursor = '+';
    let seenBytes = 0;
    let seenEntries = 0;
    let count = FIRST_BATCH_ENTRIES;
    for (;;) {
      const entries = await this.revrange(log, cursor, '-', count);
      for (const entry of entries) {
        seenBytes += entry.bytes.length;
        seenEntries++;
        yield entry;
      }
      const last = entries.at(-1);
      if (!last || entries.length < count) return;
      cursor = `(${last.id}`;
      count = batchSize(wantedBytes(), seenBytes / seenEntries);
    }
  }

  private async range(log: string, start: string, end: string, count: number): Promise<Entry[]> {
    const raw = await this.client.xrangeBuffer(log, start, end, 'COUNT', count);
    return raw.map(parseEntry);
  }

  private async revrange(log: string, end: string, start: string, count: number): Promise<Entry[]> {
    const raw = await this.client.xrevrangeBuffer(log, end, start, 'COUNT', count);
    return raw.map(parseEntry);
  }

  /** An empty read at the stream's end (or at the owner's `next` if the stream is empty). */
  private async emptyAtEnd(guestId: string): Promise<RangeRead> {
    const next = (await this.lastOffset(guestId)) ?? 0;
    return { start: next, next, bytes: EMPTY };
  }
}

/** `[member, score, member, score]` → `[[boot, offset], ...]`. */
function pairs(flat: string[]): [number, number][] {
  const out: [number, number][] = [];
  for (let i = 0; i + 1 < flat.length; i += 2) out.push([Number(flat[i]), Number(flat[i + 1])]);
  return out;
}

function dedicatedConnection(client: RedisClient): RedisClient {
  // Redis and Cluster both copy their options; their duplicate() signatures differ.
  return client instanceof Cluster ? client.duplicate() : client.duplicate();
}

function checkSegment(segment: Segment, retentionBytes: number): void {
  if (segment.bytes.length === 0)
    throw new ConsoledError('INTERNAL', 'an appended segment must not be empty');
  assertCount('epoch', segment.epoch, 1);
  assertCount('offset', segment.offset);
  assertCount('boot', segment.boot);
  assertCount('timestampMs', segment.timestampMs);
  assertCount('retentionBytes', retentionBytes);
  assertHost(segment.host);
}

function assertCount(name: string, value: number, min = 0): void {
  if (!Number.isSafeInteger(value) || value < min) {
    throw new ConsoledError('BAD_PARAMETER', `${name} must be an integer >= ${min}, got ${value}`);
  }
}

function assertHost(host: string): void {
  if (host.length === 0 || host.length > 255) {
    throw new ConsoledError(
      'BAD_PARAMETER',
      `host name ${JSON.stringify(host.slice(0, 64))} must be 1 to 255 characters`,
    );
  }
}
