/**
 * The replication Lua scripts, registered on an ioredis client with
 * `defineCommand` (EVALSHA with an EVAL fallback on NOSCRIPT; works on a standalone,
 * Sentinel-backed or Cluster client, since every key of a script shares the guest's
 * hash tag). Each script is a file `scripts/<name>-<numberOfKeys>.lua` whose header
 * lists its KEYS, ARGV and replies; negative replies become
 * `ConsoledError`s here, so callers only ever see typed results or stable codes.
 */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import type { Cluster, Redis } from 'ioredis';
import { ConsoledError } from '../../common/errors.js';
import { AppendBatcher, appendManyLua } from './append-batch.js';
import type { GuestKeys } from './redis-keys.js';
import { SlotScriptMissing, type SlottedAppend, sendSlotted } from './slot-append.js';
import { type ArgList, EncodedArgs, UncopiedScript } from './uncopied-script-call.js';

/** A standalone, Sentinel-backed or Cluster ioredis client (RESP2-shaped replies). */
export type RedisClient = Redis | Cluster;

/**
 * `none`: nothing under way; `pending`: a destination asked; `sealed`: the owner
 * stopped for a handoff; `released`: the owner gave the stream up (nobody owns it).
 */
export type HandoffState = 'none' | 'pending' | 'sealed' | 'released';

export interface ScriptSource {
  /** `append`, `claim`, ... from the file name. */
  readonly name: string;
  readonly numberOfKeys: number;
  readonly lua: string;
}

/**
 * The scripts next to this module (the TypeScript sources, or a build that copied
 * them), else the source tree's: `tsc` does not copy `.lua` files into `dist/`, and
 * `dist/store/replication/` is three levels below the repository root.
 */
function scriptsDir(): URL {
  const beside = new URL('./scripts/', import.meta.url);
  if (existsSync(beside)) return beside;
  const sourceTree = new URL('../../../store/replication/scripts/', import.meta.url);
  return existsSync(sourceTree) ? sourceTree : beside;
}

const SCRIPTS_DIR = scriptsDir();
const SCRIPT_FILE = /^([a-z][a-z-]*)-(\d+)\.lua$/;

/** Reads every `<name>-<numberOfKeys>.lua` in `dir`. */
export function readScripts(dir: URL = SCRIPTS_DIR): ScriptSource[] {
  const scripts: ScriptSource[] = [];
  for (const file of readdirSync(dir).sort()) {
    const match = SCRIPT_FILE.exec(file);
    if (!match) continue;
    scripts.push({
      name: match[1]!,
      numberOfKeys: Number(match[2]),
      lua: readFileSync(new URL(file, dir), 'utf8'),
    });
  }
  return scripts;
}

/** The scripts this module calls, by file name, with the method each becomes on the client. */
const COMMANDS = {
  append: { keys: 5, method: 'consoledAppend' },
  claim: { keys: 2, method: 'consoledClaim' },
  'request-handoff': { keys: 1, method: 'consoledRequestHandoff' },
  'cancel-handoff': { keys: 1, method: 'consoledCancelHandoff' },
  seal: { keys: 1, method: 'consoledSeal' },
  release: { keys: 1, method: 'consoledRelease' },
  status: { keys: 2, method: 'consoledStatus' },
  purge: { keys: 5, method: 'consoledPurge' },
  'expire-gone': { keys: 5, method: 'consoledExpireGone' },
  'prune-host': { keys: 2, method: 'consoledPruneHost' },
} as const satisfies Record<string, { keys: number; method: string }>;

type ScriptName = keyof typeof COMMANDS;

let cachedScripts: ScriptSource[] | undefined;

/** Per client: the batcher of appends (docs/design.md "Replication"), or null for a Cluster client. */
const defined = new WeakMap<RedisClient, AppendBatcher | null>();

/** Keys and arguments of one segment in append-5.lua. */
const APPEND_KEYS = 5;
const APPEND_ARGS = 10;

/**
 * Segments at least this long go with their bytes out of Lua (slot-append.ts): the
 * three commands of that path cost more than Lua's hash of a short segment. It is also
 * where the XADD starts writing its bytes as they are (uncopied-script-call.ts).
 */
const SLOTTED_MIN_BYTES = 16 * 1024;

/**
 * Registers the scripts on `client` (once per client) and returns typed callers.
 * Do not combine with an ioredis `keyPrefix` that contains braces.
 */
export function replicationCommands(client: RedisClient): ReplicationCommands {
  if (!defined.has(client)) {
    cachedScripts ??= readScripts();
    for (const [name, { keys, method }] of Object.entries(COMMANDS)) {
      const script = cachedScripts.find((s) => s.name === name && s.numberOfKeys === keys);
      if (!script) {
        throw new ConsoledError('INTERNAL', `replication script ${name}-${keys}.lua is missing`);
      }
      client.defineCommand(method, { lua: script.lua, numberOfKeys: keys });
    }
    const append = cachedScripts.find((s) => s.name === 'append')!;
    // The number of keys goes first in each call: it is five per segment.
    const appendMany = appendManyLua(append.lua, APPEND_KEYS, APPEND_ARGS);
    client.defineCommand(APPEND_MANY_METHOD, { lua: appendMany });
    defined.set(client, client.isCluster ? null : newBatcher(client as Redis, append.lua, appendMany));
  }
  return new ReplicationCommands(client, defined.get(client) ?? null);
}

const APPEND_MANY_METHOD = 'consoledAppendMany';

/**
 * The batcher of a standalone or Sentinel client. Its calls write the segments as they
 * are (`uncopied-script-call.ts`); a NOSCRIPT falls back to the scripts defined above.
 */
function newBatcher(client: Redis, appendLua: string, manyLua: string): AppendBatcher {
  const invoke = (method: string, args: Arg[]): Promise<unknown> => {
    const fn: unknown = Reflect.get(client, method);
    if (typeof fn !== 'function') throw new ConsoledError('INTERNAL', `script ${method} is not defined`);
    return (fn as ScriptFn).apply(client, args);
  };
  // The many-segment script takes its number of keys first; the one-segment script was defined with its four.
  const many = new UncopiedScript(manyLua, (numberOfKeys, args) =>
    invoke(APPEND_MANY_METHOD, [numberOfKeys, ...args]),
  );
  const one = new UncopiedScript(appendLua, (_numberOfKeys, args) => invoke(COMMANDS.append.method, args));
  return new AppendBatcher(
    async (segments) => {
      const lists: ArgList[] = segments.map((s) => s.encodedKeys ?? s.keys);
      for (const s of segments) lists.push(s.args);
      const replies = await many.callLists(client, segments.length * APPEND_KEYS, lists);
      if (!Array.isArray(replies))
        throw new ConsoledError('INTERNAL', `append batch replied ${String(replies)}`);
      return replies;
    },
    async (keys, args) => {
      const reply = await one.callLists(client, APPEND_KEYS, [keys, args]);
      if (!Array.isArray(reply))
        throw new ConsoledError('INTERNAL', `script append replied ${String(reply)}`);
      return reply;
    },
    // The transaction runs the append script by its SHA: `one` loads it ahead. Should
    // Redis have forgotten it (NOSCRIPT: nothing ran), each segment goes again with its
    // bytes, at once, as a refused `one.call` would: calls refused in turn keep their order.
    (appends) => {
      one.load(client);
      return sendSlotted(client, one.sha, appends).catch((err: unknown) => {
        if (!(err instanceof SlotScriptMissing)) throw err;
        return Promise.all(
          appends.map((a) =>
            one.callAfterNoScript(APPEND_KEYS, [...a.keys, ...a.argsWithBytes]).catch((e: unknown) => e),
          ),
        );
      });
    },
  );
}

type Arg = string | Buffer | number;
type ScriptFn = (...args: Arg[]) => Promise<unknown>;

export interface AppendArgs {
  /** The caller's fencing epoch (>= 1). */
  epoch: number;
  host: string;
  /** Offset of the first byte of `bytes`. */
  offset: number;
  /** One segment, non-empty, within one boot. */
  bytes: Buffer;
  boot: number;
  timestampMs: number;
  /** Keep at least this many of the newest bytes; 0 keeps everything. */
  retentionBytes: number;
  /** Accept an offset beyond `next` and count the jump (docs/design.md invariant 2). */
  allowSkip: boolean;
  /** The segment's markers, `o:n:k` joined by `,` ('' for none). */
  markers: string;
}

export type AppendReply =
  | { status: 'appended'; next: number; skippedBytes: number }
  /** The bytes were already in the stream (a re-send after a reconnect or restart). */
  | { status: 'duplicate'; next: number };

export interface ClaimArgs {
  host: string;
  /** The epoch the caller last saw, or `any` (first ownership, forced takeover). */
  expectedEpoch: number | 'any';
  /** Only if the owner sealed the handoff (for this host, or for anyone). */
  requireSealed: boolean;
  /**
   * The highest epoch the caller has known for the stream (0: none). The script
   * refuses a claim when the current epoch is above it, and the new epoch is
   * max(current, knownEpoch) + 1, so epochs never go back after Redis lost the hash.
   */
  knownEpoch: number;
  /** Only if nobody owns the stream (never owned, or released). */
  requireUnowned: boolean;
}

export interface ClaimReply {
  epoch: number;
  /** Where the new owner continues; null when the stream holds nothing yet. */
  next: number | null;
  previousEpoch: number;
  previousHost: string | null;
  previousHandoff: HandoffState;
}

export interface RequestHandoffReply {
  epoch: number;
  host: string;
  next: number | null;
}

export interface SealReply {
  sealedAt: number;
  epoch: number;
  target: string | null;
}

/** The owner hash and stream bounds in one snapshot (scripts/status-2.lua). */
export interface StatusReply {
  /** 0: nobody ever owned the guest (new, or Redis lost the owner hash). */
  epoch: number;
  /** null: nobody owns the guest (never owned, Redis lost the hash, or released). */
  host: string | null;
  /** The offset the next append must carry; null: no byte held (first append sets it). */
  next: number | null;
  /** Boot of the last segment appended. */
  boot: number | null;
  handoff: HandoffState;
  target: string | null;
  sealedAt: number | null;
  /** Bytes jumped over because the owner's local log no longer held them. */
  skippedBytes: number;
  /** Offset of the oldest byte kept in the stream; null when the stream is empty. */
  oldestOffset: number | null;
  /** Offset after the stream's last byte; null when the stream is empty. */
  streamEnd: number | null;
  entries: number;
  /** The owner the last claim took the stream over from (null: nobody). */
  prevHost: string | null;
  /** The handoff state the last claim found: `sealed` for a completed handoff. */
  prevHandoff: HandoffState;
}

/** What an expiry sweep found for one guest (scripts/expire-gone-5.lua). */
export type ExpireGoneReply =
  | { status: 'expired'; deletedKeys: number }
  | { status: 'kept'; reason: 'no-record' | 'owned' | 'clock-started' | 'recent'; waitMs: number | null };

/**
 * The keys and arguments of append-5.lua for one segment: with its bytes (ARGV[4]),
 * or with its length instead (ARGV[10]) for an append whose bytes stay out of Lua.
 */
export function appendScriptCall(
  keys: GuestKeys,
  a: AppendArgs,
  bytesOutOfLua = false,
): { keys: [string, string, string, string, string]; args: Arg[] } {
  return {
    keys: appendKeys(keys),
    args: [
      a.epoch,
      a.host,
      a.offset,
      bytesOutOfLua ? '' : a.bytes,
      a.boot,
      a.timestampMs,
      a.retentionBytes,
      a.allowSkip ? '1' : '0',
      a.markers,
      bytesOutOfLua ? a.bytes.length : '',
    ],
  };
}

/** The append script's keys (KEYS[1..5] of append-5.lua). */
function appendKeys(keys: GuestKeys): [string, string, string, string, string] {
  return [keys.log, keys.owner, keys.boots, keys.markers, keys.logSlot];
}

/** Each guest's append keys, encoded once (the keys of every segment it appends). */
const encodedKeysByGuest = new WeakMap<GuestKeys, EncodedArgs>();

function encodedAppendKeys(keys: GuestKeys): EncodedArgs {
  let encoded = encodedKeysByGuest.get(keys);
  if (!encoded) {
    encoded = new EncodedArgs(appendKeys(keys));
    encodedKeysByGuest.set(keys, encoded);
  }
  return encoded;
}

/**
 * One segment's append with its bytes out of Lua (slot-append.ts); `argsWithBytes`
 * are its arguments for the usual call, when the caller has them already.
 */
export function slottedAppend(
  keys: GuestKeys,
  a: AppendArgs,
  argsWithBytes: Arg[] = appendScriptCall(keys, a).args,
): SlottedAppend {
  const outOfLua = appendScriptCall(keys, a, true);
  return {
    keys: outOfLua.keys,
    checkArgs: outOfLua.args,
    id: `${a.offset}-1`,
    // The fields, in the order and form the script's own XADD writes them.
    fields: ['d', a.bytes, 'h', a.host, 'e', a.epoch, 'b', a.boot, 't', a.timestampMs, 'o', a.offset],
    argsWithBytes,
  };
}

/** Every key of a guest's history, the order purge-5.lua and expire-gone-5.lua take them in. */
function historyKeys(keys: GuestKeys, skips: string): string[] {
  return [keys.owner, keys.log, keys.boots, keys.markers, skips];
}

/** Typed callers for the scripts on one client. */
export class ReplicationCommands {
  constructor(
    private readonly client: RedisClient,
    private readonly batcher: AppendBatcher | null = null,
  ) {}

  /**
   * One segment's append. Batched, it settles with the batch's reply mapped in place:
   * one promise per segment, not one per layer (thousands of segments a second).
   */
  append(keys: GuestKeys, a: AppendArgs): Promise<AppendReply> {
    const segment = appendScriptCall(keys, a);
    const slotted = a.bytes.length >= SLOTTED_MIN_BYTES ? slottedAppend(keys, a, segment.args) : undefined;
    if (!this.batcher) return this.call('append', ...segment.keys, ...segment.args).then(appendReply);
    return this.batcher.append(
      { keys: segment.keys, encodedKeys: encodedAppendKeys(keys), args: segment.args },
      a.bytes.length,
      slotted,
      (reply) => appendReply(checked('append', reply)),
    );
  }

  async claim(keys: GuestKeys, a: ClaimArgs): Promise<ClaimReply> {
    const reply = await this.call(
      'claim',
      keys.owner,
      keys.log,
      a.host,
      a.expectedEpoch === 'any' ? 'any' : a.expectedEpoch,
      a.requireSealed ? '1' : '0',
      a.knownEpoch,
      a.requireUnowned ? '1' : '0',
    );
    return {
      epoch: num(reply[1]),
      next: optNum(reply[2]),
      previousEpoch: num(reply[3]),
      previousHost: optStr(reply[4]),
      previousHandoff: handoffState(reply[5]),
    };
  }

  async requestHandoff(
    keys: GuestKeys,
    target: string,
    expectedEpoch: number | 'any',
  ): Promise<RequestHandoffReply> {
    const reply = await this.call('request-handoff', keys.owner, target, expectedEpoch);
    return { epoch: num(reply[1]), host: str(reply[2]), next: optNum(reply[3]) };
  }

  /** Returns the handoff state that was cancelled (`none` if nothing was under way). */
  async cancelHandoff(keys: GuestKeys, target: string | null): Promise<HandoffState> {
    const reply = await this.call('cancel-handoff', keys.owner, target ?? '');
    return handoffState(reply[1]);
  }

  async seal(keys: GuestKeys, epoch: number, host: string, finalOffset: number): Promise<SealReply> {
    const reply = await this.call('seal', keys.owner, epoch, host, finalOffset);
    return { sealedAt: num(reply[1]), epoch: num(reply[2]), target: optStr(reply[3]) };
  }

  async release(keys: GuestKeys, epoch: number, host: string, finalOffset: number): Promise<number> {
    const reply = await this.call('release', keys.owner, epoch, host, finalOffset);
    return num(reply[1]);
  }

  async status(keys: GuestKeys): Promise<StatusReply> {
    const r = await this.call('status', keys.owner, keys.log);
    return {
      epoch: num(r[1]),
      host: optStr(r[2]),
      next: optNum(r[3]),
      boot: optNum(r[4]),
      handoff: handoffState(r[5]),
      target: optStr(r[6]),
      sealedAt: optNum(r[7]),
      skippedBytes: num(r[8]),
      oldestOffset: optNum(r[9]),
      streamEnd: optNum(r[10]),
      entries: num(r[11]),
      prevHost: optStr(r[12] ?? ''),
      prevHandoff: handoffState(r[13] ?? 'none'),
    };
  }

  /**
   * Deletes the guest's history unless a host owns the stream (`STREAM_OWNED`).
   * `skips` is the guest's skips key (redis-keys.ts `skipsKey`).
   */
  async purge(keys: GuestKeys, skips: string): Promise<{ deletedKeys: number; epoch: number }> {
    const reply = await this.call('purge', ...historyKeys(keys, skips));
    return { deletedKeys: num(reply[1]), epoch: num(reply[2]) };
  }

  /** Deletes the guest's history if it has been gone for `goneAfterMs` (docs/design.md "Retention"). */
  async expireGone(keys: GuestKeys, skips: string, goneAfterMs: number): Promise<ExpireGoneReply> {
    const reply = await this.call('expire-gone', ...historyKeys(keys, skips), goneAfterMs);
    if (reply[0] === 1) return { status: 'expired', deletedKeys: num(reply[1]) };
    const reason = str(reply[1]);
    if (reason !== 'no-record' && reason !== 'owned' && reason !== 'clock-started' && reason !== 'recent') {
      throw new ConsoledError('INTERNAL', `expire-gone replied ${reason}`);
    }
    return { status: 'kept', reason, waitMs: optNum(reply[2]) };
  }

  /**
   * Takes `hostId` out of the host registry's index if its hash expired; false when the
   * host published again meanwhile (scripts/prune-host-2.lua).
   */
  async pruneHost(index: string, hostKey: string, hostId: string): Promise<boolean> {
    const reply = await this.call('prune-host', index, hostKey, hostId);
    return reply[0] === 1;
  }

  private async call(name: ScriptName, ...args: Arg[]): Promise<unknown[]> {
    const fn: unknown = Reflect.get(this.client, COMMANDS[name].method);
    if (typeof fn !== 'function') throw new ConsoledError('INTERNAL', `script ${name} is not defined`);
    return checked(name, await (fn as ScriptFn).apply(this.client, args));
  }
}

/** The append script's reply (checked) as an AppendReply. */
function appendReply(reply: unknown[]): AppendReply {
  if (reply[0] === 0) return { status: 'duplicate', next: num(reply[1]) };
  return { status: 'appended', next: num(reply[1]), skippedBytes: num(reply[2]) };
}

/** A script's reply, or its failure (a negative status) as a typed error. */
function checked(name: ScriptName, reply: unknown): unknown[] {
  if (!Array.isArray(reply) || typeof reply[0] !== 'number') {
    throw new ConsoledError('INTERNAL', `script ${name} replied ${String(reply)}`);
  }
  if (reply[0] < 0) throw scriptFailure(name, reply);
  return reply;
}

/** Maps a negative reply (see each script's header) to its stable error code. */
function scriptFailure(name: ScriptName, reply: unknown[]): ConsoledError {
  switch (reply[0]) {
    case -1: {
      const epoch = num(reply[1]);
      const host = optStr(reply[2]);
      return new ConsoledError(
        'FENCED',
        `${name}: the current fencing epoch is ${epoch}${host ? ` (owner ${host})` : ' (no owner)'}`,
        { epoch, host },
      );
    }
    case -2: {
      const next = optNum(reply[1]);
      const reason = name === 'seal' ? 'not-flushed' : 'gap';
      return new ConsoledError(
        'OFFSET_MISMATCH',
        `${name}: the stream continues at offset ${next ?? 'none'} (${reason})`,
        {
          next,
          reason,
        },
      );
    }
    case -3: {
      const next = num(reply[1]);
      return new ConsoledError('OFFSET_MISMATCH', `${name}: the segment overlaps offset ${next} partially`, {
        next,
        reason: 'overlap',
      });
    }
    case -4: {
      const handoff = str(reply[1]);
      const target = optStr(reply[2]);
      const sealedAt = optNum(reply[3]);
      return new ConsoledError(
        'HANDOFF_STATE',
        `${name}: handoff is ${handoff}${target ? ` to ${target}` : ''}`,
        {
          handoff,
          target,
          sealedAt,
        },
      );
    }
    case -5: {
      const epoch = num(reply[1]);
      const host = str(reply[2]);
      const handoff = str(reply[3]);
      return new ConsoledError(
        'STREAM_OWNED',
        `${name}: host ${host} owns the stream (epoch ${epoch}, handoff ${handoff})`,
        { epoch, host, handoff },
      );
    }
    default:
      return new ConsoledError('INTERNAL', `${name}: ${String(reply[1] ?? reply[0])}`);
  }
}

function num(value: unknown): number {
  const n = typeof value === 'number' ? value : Number(value);
  if (!Number.isFinite(n))
    throw new ConsoledError('INTERNAL', `script replied ${String(value)} for a number`);
  return n;
}

/** Scripts reply -1 for "no such number". */
function optNum(value: unknown): number | null {
  const n = num(value);
  return n < 0 ? null : n;
}

function str(value: unknown): string {
  return typeof value === 'string' ? value : Buffer.isBuffer(value) ? value.toString('utf8') : String(value);
}

/** Scripts reply '' for "no such string". */
function optStr(value: unknown): string | null {
  const s = str(value);
  return s === '' ? null : s;
}

function handoffState(value: unknown): HandoffState {
  const s = str(value);
  if (s === 'none' || s === 'pending' || s === 'sealed' || s === 'released') return s;
  throw new ConsoledError('INTERNAL', `unknown handoff state ${JSON.stringify(s)}`);
}
