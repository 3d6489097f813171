/**
 * The persisted state of a local log: `log-state.json` (the anchor, the end, the boot
 * records, `awaitingBoot`, the last renumbering) and the boot index, which records
 * boots between two saves of the state file one line at a time.
 */
import { constants } from 'node:fs';
import { open, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { ConsoledError } from '../common/errors.js';
import { JsonStateFile } from './json-state-file.js';
import type { LogAnchor } from './log-files.js';
import type { BootStart } from './log-view.js';

export interface PersistedLogState {
  version: typeof LOG_STATE_VERSION;
  anchor: LogAnchor | null;
  /** The end offset as of the last save: only a hint when the anchor file is gone. */
  end: number;
  boots: BootStart[];
  /** The guest side closed the chardev; the next attach starts a new boot. */
  awaitingBoot: boolean;
  /** The last `renumber` applied, so a caller that crashed around it can tell whether it happened. */
  renumbered?: { from: number; to: number };
  /**
   * Generation of the boot index (BOOT_INDEX_FILE) that continues `boots` and
   * `awaitingBoot`; an index of another generation is stale. Absent in states written
   * before the index existed (generation 0, no index).
   */
  bootIndex?: number;
}

export const STATE_FILE = 'log-state.json';
/** The version of `log-state.json` this build writes and reads (docs/design.md "State files"). */
export const LOG_STATE_VERSION = 1;
export const MAX_BOOT_RECORDS = 10_000;
/**
 * Boot records since the state file was last compacted, one JSON line each: the
 * first line is `{"generation":g}`, then `{"boot","offset","atMs"}` for a boot and
 * `{"awaitingBoot":true,"afterBoot":n}` when the guest side closed during boot n. Starting a boot appends a line
 * instead of rewriting every record in the state file.
 */
export const BOOT_INDEX_FILE = 'boot-index.jsonl';
/** Lines in the boot index after which it is folded into the state file. */
export const BOOT_INDEX_COMPACT_LINES = 256;

/** A boot, or the guest side closing during boot `afterBoot` (the next attach is a new boot). */
export type BootIndexRecord = BootStart | { awaitingBoot: true; afterBoot: number };

export interface BootIndexLoad {
  /** The index's records, in order (none when it is missing or stale). */
  readonly records: BootIndexRecord[];
  /** Whether the file is of the state's generation and ends cleanly (it can be appended to). */
  readonly current: boolean;
}

/** What a log directory held at open: the state file (null when absent) and its boot index. */
export interface LoadedLogState {
  readonly persisted: PersistedLogState | null;
  readonly bootIndex: BootIndexLoad;
}

/** Reads the state file of `dir` and the boot index of its generation. */
export async function loadLogState(dir: string): Promise<LoadedLogState> {
  const persisted = await new JsonStateFile<PersistedLogState>(join(dir, STATE_FILE)).load();
  // A version this build does not know was written by a newer one (docs/design.md
  // "State files"): refused, so that nothing here rewrites what it cannot read.
  if (persisted && persisted.version !== LOG_STATE_VERSION)
    throw new ConsoledError(
      'STATE_VERSION',
      `${join(dir, STATE_FILE)}: version ${JSON.stringify(persisted.version)}; this build reads ${LOG_STATE_VERSION}`,
    );
  return { persisted, bootIndex: await loadBootIndex(dir, persisted?.bootIndex ?? 0) };
}

/** Reads the boot index of `generation`; a missing, stale or foreign file gives no records. */
export async function loadBootIndex(dir: string, generation: number): Promise<BootIndexLoad> {
  let text: string;
  try {
    text = await readFile(join(dir, BOOT_INDEX_FILE), {
      encoding: 'utf8',
      flag: constants.O_RDONLY | constants.O_NOFOLLOW,
    });
  } catch {
    return { records: [], current: false };
  }
  const lines = text.split('\n');
  const clean = lines.pop() === ''; // a line a crash cut short has no newline
  let header: unknown;
  try {
    header = JSON.parse(lines[0] ?? '');
  } catch {
    return { records: [], current: false };
  }
  if ((header as { generation?: unknown } | null)?.generation !== generation)
    return { records: [], current: false };
  const records: BootIndexRecord[] = [];
  for (const line of lines.slice(1)) {
    let r: Record<string, unknown>;
    try {
      r = JSON.parse(line) as Record<string, unknown>;
    } catch {
      continue;
    }
    if (Number.isInteger(r['boot']) && Number.isInteger(r['offset']) && typeof r['atMs'] === 'number')
      records.push({ boot: r['boot'] as number, offset: r['offset'] as number, atMs: r['atMs'] as number });
    else if (r['awaitingBoot'] === true && Number.isInteger(r['afterBoot']))
      records.push({ awaitingBoot: true, afterBoot: r['afterBoot'] as number });
  }
  return { records, current: clean };
}

export interface LogStateStoreOptions {
  readonly dir: string;
  readonly fileMode: number;
  readonly logger: Logger;
  /** Where the files are anchored and where they end, as of a save. */
  readonly position: () => { anchor: LogAnchor | null; end: number };
}

/**
 * The boot records and the rest of the persisted state of one log, and their saves:
 * the state file, and the boot index appended to between its saves. Saves never
 * fail the log: a failure is logged, the records stay in memory and go out with the
 * next save.
 */
export class LogStateStore {
  private bootList: BootStart[];
  private awaitingBootValue: boolean;
  private renumberedValue: { from: number; to: number } | null;
  private readonly stateFile: JsonStateFile<PersistedLogState>;
  /** Generation of the boot index the state file names. */
  private bootIndexGeneration: number;
  /** Records in the current boot index file; -1 when it must be started afresh. */
  private bootIndexLines: number;
  /** Boot index writes and compactions, one at a time, in order. */
  private bootIndexChain: Promise<void> = Promise.resolve();

  /**
   * Restores the records of `loaded` for a log whose files end at `end` and keep
   * bytes from `oldest`.
   */
  constructor(
    private readonly options: LogStateStoreOptions,
    loaded: LoadedLogState,
    end: number,
    oldest: number,
  ) {
    const { persisted, bootIndex } = loaded;
    // Not fsynced: it is saved on every rotation, and what it must survive is a
    // SIGKILL (the page cache keeps it); the anchor it holds stays valid for one more
    // rotation, and recovery checks it against the files' inodes.
    this.stateFile = new JsonStateFile(join(options.dir, STATE_FILE), options.fileMode, false);
    let boots = persisted?.boots ?? [];
    let awaiting = persisted?.awaitingBoot ?? false;
    for (const record of bootIndex.records) {
      if ('boot' in record) {
        const last = boots[boots.length - 1];
        if (!last || record.boot > last.boot) boots = [...boots, record];
        awaiting = false;
      } else {
        // Unless a later boot is known already (the state file was saved after it,
        // and its line did not make it into the index before a crash).
        awaiting = (boots[boots.length - 1]?.boot ?? 0) <= record.afterBoot;
      }
    }
    if (boots.length > MAX_BOOT_RECORDS) boots = boots.slice(boots.length - MAX_BOOT_RECORDS);
    // A boot recorded just before a SIGKILL may point past what reached the disk:
    // it starts where the log now ends.
    this.bootList = boots.map((b) => ({ ...b, offset: Math.min(b.offset, end) }));
    // A console.log written before consoled (nova, virtlogd) is adopted as boot 1.
    if (!persisted && end > 0 && this.bootList.length === 0)
      this.bootList = [{ boot: 1, offset: oldest, atMs: Date.now() }];
    this.awaitingBootValue = awaiting;
    this.bootIndexGeneration = persisted?.bootIndex ?? 0;
    this.bootIndexLines = bootIndex.current ? bootIndex.records.length : -1;
    this.renumberedValue = persisted?.renumbered ?? null;
  }

  get boots(): readonly BootStart[] {
    return this.bootList;
  }

  get currentBoot(): number {
    return this.bootList[this.bootList.length - 1]?.boot ?? 0;
  }

  get awaitingBoot(): boolean {
    return this.awaitingBootValue;
  }

  get lastRenumber(): { readonly from: number; readonly to: number } | null {
    return this.renumberedValue;
  }

  /** Records that a boot starts at `offset`. */
  startBoot(offset: number, atMs: number): BootStart {
    const record = { boot: this.currentBoot + 1, offset, atMs };
    this.bootList.push(record);
    if (this.bootList.length > MAX_BOOT_RECORDS)
      this.bootList.splice(0, this.bootList.length - MAX_BOOT_RECORDS);
    this.awaitingBootValue = false;
    void this.appendBootIndex(record);
    return record;
  }

  setAwaitingBoot(value: boolean): void {
    if (this.awaitingBootValue === value) return;
    this.awaitingBootValue = value;
    if (value) void this.appendBootIndex({ awaitingBoot: true, afterBoot: this.currentBoot });
    else void this.compact(); // only renumber clears it otherwise, and that compacts
  }

  /** Replaces the boot records (a renumbering, `boots` already in the new numbering) and saves. */
  async renumber(from: number, to: number, boots: readonly BootStart[]): Promise<void> {
    this.bootList = boots.map((b) => ({ ...b }));
    this.awaitingBootValue = false;
    this.renumberedValue = { from, to };
    await this.compact(); // saves the state; index lines in the old numbering become stale
  }

  /** Appends one record to the boot index (one line, not a rewrite of every record). */
  private appendBootIndex(record: BootIndexRecord): Promise<void> {
    return this.onBootIndex(async () => {
      if (this.bootIndexLines < 0 || this.bootIndexLines >= BOOT_INDEX_COMPACT_LINES) {
        // Folding the index into the state file already saves this record.
        await this.compactNow();
        return;
      }
      const handle = await open(
        join(this.options.dir, BOOT_INDEX_FILE),
        constants.O_WRONLY | constants.O_APPEND | constants.O_NOFOLLOW,
      );
      try {
        await handle.writeFile(`${JSON.stringify(record)}\n`);
      } finally {
        await handle.close();
      }
      this.bootIndexLines++;
    });
  }

  /** Saves every boot record in the state file under a new index generation, and starts that index empty. */
  compact(): Promise<void> {
    return this.onBootIndex(() => this.compactNow());
  }

  private async compactNow(): Promise<void> {
    // The state file names the new generation first: a crash before the index is
    // started afresh leaves an index of the old generation, which is then ignored.
    this.bootIndexGeneration++;
    this.bootIndexLines = -1;
    await this.save();
    const handle = await open(
      join(this.options.dir, BOOT_INDEX_FILE),
      constants.O_WRONLY | constants.O_CREAT | constants.O_TRUNC | constants.O_NOFOLLOW,
      this.options.fileMode,
    );
    try {
      await handle.writeFile(`${JSON.stringify({ generation: this.bootIndexGeneration })}\n`);
    } finally {
      await handle.close();
    }
    this.bootIndexLines = 0;
  }

  private onBootIndex(step: () => Promise<void>): Promise<void> {
    const run = this.bootIndexChain.then(step).catch((err: NodeJS.ErrnoException) => {
      // Like a failed state save: the records stay in memory and go out with the next save.
      this.bootIndexLines = -1;
      this.options.logger.warn(
        { dir: this.options.dir, err: err.code ?? err.message },
        'saving boot records failed',
      );
    });
    this.bootIndexChain = run;
    return run;
  }

  /** Saves the state file (the anchor and end as `position` gives them now). */
  save(): Promise<void> {
    const { anchor, end } = this.options.position();
    const value: PersistedLogState = {
      version: LOG_STATE_VERSION,
      anchor,
      end,
      boots: this.bootList,
      awaitingBoot: this.awaitingBootValue,
      ...(this.renumberedValue ? { renumbered: this.renumberedValue } : {}),
      bootIndex: this.bootIndexGeneration,
    };
    return this.stateFile.save(value).catch((err: NodeJS.ErrnoException) => {
      // The state file is small; failing to save it (disk full) only costs the boot
      // records written since the last save. The log itself keeps going.
      this.options.logger.warn(
        { dir: this.options.dir, err: err.code ?? err.message },
        'saving log state failed',
      );
    });
  }
}
