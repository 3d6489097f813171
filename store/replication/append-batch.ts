/**
 * Appends of many guests in one script call (docs/design.md "Replication"): the
 * segments the replicators hand over in one turn of the event loop (the guests' tick
 * of the segment clock) leave together as one `EVALSHA` of a script that runs
 * scripts/append-5.lua once per segment, with each segment's own keys, fencing and
 * offset checks, and replies per segment. One command instead of hundreds is what
 * keeps the daemon's and Redis's cost per segment low with many guests.
 *
 * Only for a client whose keys all reach one server (standalone or Sentinel); a
 * Cluster client sends each segment on its own, since a guest's keys share a hash
 * slot but different guests' keys do not.
 *
 * Large segments (a flood's) leave with their bytes out of Lua, in one MULTI per run
 * of them (slot-append.ts), still in their place in the order.
 */
import type { SlottedAppend } from './slot-append.js';
import type { EncodedArgs } from './uncopied-script-call.js';

/** The script that runs the append script's body once per segment, from its source. */
export function appendManyLua(appendLua: string, keysPerSegment: number, argsPerSegment: number): string {
  const keys = Array.from({ length: keysPerSegment }, (_, k) => `KEYS[base + ${k + 1}]`).join(', ');
  const args = Array.from({ length: argsPerSegment }, (_, a) => `ARGV[at + ${a + 1}]`).join(', ');
  return `local function appendOne(KEYS, ARGV)
${appendLua}
end
local replies = {}
for i = 0, #KEYS / ${keysPerSegment} - 1 do
  local base, at = i * ${keysPerSegment}, i * ${argsPerSegment}
  replies[i + 1] = appendOne({${keys}}, {${args}})
end
return replies
`;
}

/**
 * Most segments, and most bytes of segments, in one call. A tick of 500 trickling guests
 * leaves as four calls, not one: Redis runs the first while the rest are still on their
 * way, and its replies come back in turn. Measured against 512 in eight rounds taking
 * turns: the lag's median 5–13 ms lower in seven, its p99 lower in six, the daemon's CPU
 * the same (docs/benchmarks.md).
 */
const MAX_SEGMENTS = 128;
const MAX_BYTES = 1024 * 1024;

type Arg = string | Buffer | number;

/** One segment's keys and arguments for the append script. */
export interface AppendCall {
  readonly keys: readonly string[];
  /** The same keys, encoded once for the guest's every call (uncopied-script-call.ts). */
  readonly encodedKeys?: EncodedArgs | undefined;
  readonly args: readonly Arg[];
}

interface Pending extends AppendCall {
  readonly size: number;
  /** Set for a segment sent with its bytes out of Lua (slot-append.ts). */
  readonly slotted: SlottedAppend | undefined;
  readonly resolve: (reply: unknown[]) => void;
  readonly reject: (err: unknown) => void;
}

/**
 * Collects the appends of one turn of the event loop and sends them in calls of at
 * most MAX_SEGMENTS segments or MAX_BYTES, in the order given (so one guest's
 * segments keep their order, and a batch never overtakes an earlier one: they share
 * the connection). A batch that fails as a whole (a script error part-way, a lost
 * connection) is sent again segment by segment, each settling on its own: the segments
 * the script had appended come back as re-sends, so none is written twice.
 */
export class AppendBatcher {
  private queue: Pending[] = [];
  private scheduled = false;

  constructor(
    /** Sends the segments in one call: their keys in turn, then their arguments in turn. */
    private readonly sendMany: (segments: readonly AppendCall[]) => Promise<unknown[]>,
    private readonly sendOne: (keys: readonly string[], args: readonly Arg[]) => Promise<unknown[]>,
    /** Sends segments with their bytes out of Lua; each reply is the script's, or an Error. */
    private readonly sendSlotted?: (appends: readonly SlottedAppend[]) => Promise<unknown[]>,
  ) {}

  /**
   * Queues one segment's append; resolves with its own reply (the append script's)
   * mapped by `map` (a throw rejects). With `slotted` (and a sender for it), the segment
   * goes with its bytes out of Lua, still in its place in the order.
   */
  append<T>(
    call: AppendCall,
    size: number,
    slotted: SlottedAppend | undefined,
    map: (reply: unknown[]) => T,
  ): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const settle = (reply: unknown[]): void => {
        let mapped: T;
        try {
          mapped = map(reply);
        } catch (err) {
          reject(err);
          return;
        }
        resolve(mapped);
      };
      this.queue.push({
        keys: call.keys,
        encodedKeys: call.encodedKeys,
        args: call.args,
        size,
        slotted,
        resolve: settle,
        reject,
      });
      if (!this.scheduled) {
        this.scheduled = true;
        setImmediate(this.flush);
      }
    });
  }

  private readonly flush = (): void => {
    this.scheduled = false;
    const queue = this.queue;
    this.queue = [];
    const isSlotted = (p: Pending) => this.sendSlotted !== undefined && p.slotted !== undefined;
    let from = 0;
    while (from < queue.length) {
      // A call holds segments of one kind: with their bytes in Lua, or out of it.
      const slotted = isSlotted(queue[from]!);
      let to = from;
      let bytes = 0;
      while (
        to < queue.length &&
        isSlotted(queue[to]!) === slotted &&
        to - from < MAX_SEGMENTS &&
        (to === from || bytes + queue[to]!.size <= MAX_BYTES)
      ) {
        bytes += queue[to]!.size;
        to++;
      }
      if (slotted) this.sendOutOfLua(queue.slice(from, to));
      else this.send(queue.slice(from, to));
      from = to;
    }
  };

  private sendOutOfLua(batch: Pending[]): void {
    this.sendSlotted!(batch.map((p) => p.slotted!)).then(
      (replies) => {
        for (let i = 0; i < batch.length; i++) {
          const reply = replies[i];
          if (Array.isArray(reply)) batch[i]!.resolve(reply);
          else
            batch[i]!.reject(reply instanceof Error ? reply : new Error(`append replied ${String(reply)}`));
        }
      },
      () => this.sendEachAlone(batch),
    );
  }

  /** After a call failed as a whole: each segment again, with its bytes, settling on its own. */
  private sendEachAlone(batch: readonly Pending[]): void {
    for (const p of batch) this.sendOne(p.keys, p.args).then(p.resolve, p.reject);
  }

  private send(batch: Pending[]): void {
    if (batch.length === 1) {
      const only = batch[0]!;
      this.sendOne(only.keys, only.args).then(only.resolve, only.reject);
      return;
    }
    this.sendMany(batch).then(
      (replies) => {
        for (let i = 0; i < batch.length; i++) {
          const reply = replies[i];
          if (Array.isArray(reply)) batch[i]!.resolve(reply);
          else batch[i]!.reject(new Error(`append batch replied ${String(reply)} for segment ${i}`));
        }
      },
      () => this.sendEachAlone(batch),
    );
  }
}
