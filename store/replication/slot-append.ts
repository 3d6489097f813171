/**
 * Appends whose bytes never pass through Lua (docs/design.md "Redis schema").
 *
 * Redis's Lua hashes every byte of every string it is given, to intern it: in a flood
 * into the stream that loop was two thirds of Redis's CPU. For a large segment the
 * append script is therefore given only the segment's length, and the bytes go to a
 * plain `XADD`, all in one `MULTI`:
 *
 * 1. the append script (scripts/append-5.lua, length mode) checks the owner, the epoch
 *    and the offset and records the append exactly as it does with the bytes; only if
 *    every check passes does it rename the stream to its write slot;
 * 2. `XADD <slot> NOMKSTREAM <offset>-1 d <bytes> …` adds the entry there: with no
 *    slot (a refusal, a re-send, a script Redis does not know) it adds nothing;
 * 3. `RENAME <slot> <log>` moves the stream back (and fails harmlessly without a slot).
 *
 * MULTI runs the three at once: no client ever sees the slot or a recorded append
 * without its entry, and readers blocked on the stream are served by the RENAME.
 * The commands are sent in one synchronous burst, so nothing else this client sends
 * falls inside the transaction; the XADD writes its bytes as they are
 * (`uncopied-script-call.ts`), and every command is encoded ahead, not by ioredis.
 */
import type { Command, Redis } from 'ioredis';
import { ConsoledError } from '../../common/errors.js';
import { isNoScript, PreparedCommand } from './uncopied-script-call.js';

type Arg = string | Buffer | number;

export interface SlottedAppend {
  /** The append script's keys: log, owner, boots, markers, slot. */
  readonly keys: readonly [string, string, string, string, string];
  /** The append script's arguments in length mode: ARGV[4] '' and ARGV[10] the length. */
  readonly checkArgs: readonly Arg[];
  /** The entry the script would add: its ID and its fields, bytes included. */
  readonly id: string;
  readonly fields: readonly Arg[];
  /** The append script's arguments with the bytes in Lua, for sending it the usual way. */
  readonly argsWithBytes: readonly Arg[];
}

/** Raised when Redis does not know the append script: the caller loads it by other means. */
export class SlotScriptMissing extends Error {}

const NUMBER_OF_KEYS = 5;

function send(client: Redis, command: Command): Command {
  void client.sendCommand(command);
  // Each queued command answers QUEUED or fails with the transaction; EXEC carries the outcome.
  command.promise.catch(() => {});
  return command;
}

/**
 * Sends `appends` in one MULTI and returns each one's reply: the append script's reply
 * (an array), or the error its check raised. Rejects as a whole when the transaction
 * did not run (a lost connection, an aborted MULTI), only once the socket is done with
 * the bytes; with SlotScriptMissing when Redis does not know the script.
 */
export async function sendSlotted(
  client: Redis,
  appendSha: string,
  appends: readonly SlottedAppend[],
): Promise<unknown[]> {
  const utf8 = { replyEncoding: 'utf8' } as const;
  const xadds: PreparedCommand[] = [];
  const checks: Command[] = [];
  // Corked until the next tick: the whole transaction leaves in one write.
  send(client, new PreparedCommand('multi', [], { ...utf8, corkTurn: true }));
  const head: Arg[] = [appendSha, NUMBER_OF_KEYS];
  for (const a of appends) {
    const [log, , , , slot] = a.keys;
    checks.push(send(client, new PreparedCommand('evalsha', [head, a.keys, a.checkArgs], utf8)));
    const xadd = new PreparedCommand('xadd', [[slot, 'NOMKSTREAM', a.id], a.fields], utf8);
    xadds.push(xadd);
    send(client, xadd);
    send(client, new PreparedCommand('rename', [[slot, log]], utf8));
  }
  const exec = send(client, new PreparedCommand('exec', [], utf8));
  let results: unknown;
  try {
    results = await exec.promise;
  } catch (err) {
    await Promise.all(xadds.map((x) => x.written));
    // The transaction ran nothing. A script Redis refused while queueing aborts it too.
    const queued = await Promise.allSettled(checks.map((c) => c.promise));
    if (queued.some((q) => q.status === 'rejected' && isNoScript(q.reason))) {
      throw new SlotScriptMissing('NOSCRIPT while queueing the append transaction');
    }
    throw err;
  }
  if (!Array.isArray(results) || results.length !== appends.length * 3) {
    throw new ConsoledError('INTERNAL', `append transaction replied ${String(results)}`);
  }
  if (results.some((r, i) => i % 3 === 0 && isNoScript(r))) {
    // The script did not run for those: nothing was renamed, nothing added.
    throw new SlotScriptMissing('NOSCRIPT in the append transaction');
  }
  return appends.map((a, i) => {
    const check: unknown = results[i * 3];
    if (!Array.isArray(check)) return check instanceof Error ? check : new Error(String(check));
    if (check[0] === 1 && (results[i * 3 + 1] !== a.id || results[i * 3 + 2] !== 'OK')) {
      // The checks recorded the append but the entry did not land: never expected
      // (the script fails first on a key of the wrong type), reported, not hidden.
      return new ConsoledError(
        'INTERNAL',
        `append at ${a.id} recorded, but its XADD replied ${String(results[i * 3 + 1])} and RENAME ${String(results[i * 3 + 2])}`,
      );
    }
    return check;
  });
}
