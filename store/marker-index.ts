/**
 * Where consoled's own markers sit in a guest's log (docs/design.md "Markers"). A
 * guest can print bytes that look like a marker; it cannot add a line here, so a
 * reader tells consoled's markers from a guest's imitations by this index, not by the
 * text. One append-only file per log, `markers.idx`, one JSON line per marker
 * (`{"o":offset,"n":length,"k":kind}`), compacted when most of it is older than the
 * log; replicated with each segment to the stream's `markers` set.
 */
import { constants, type FileHandle, open, rename } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from 'pino';
import type { MarkerEvent } from '../common/marker.js';
import { createExclusive, readFileNoFollow } from './safe-files.js';

export const MARKER_INDEX_FILE = 'markers.idx';

export type MarkerKind = MarkerEvent['kind'];

export interface MarkerRecord {
  /** Offset of the marker's first byte (its leading `\r\n`). */
  readonly offset: number;
  readonly length: number;
  readonly kind: MarkerKind;
}

const KINDS: ReadonlySet<string> = new Set<MarkerKind>([
  'boot',
  'suppressed',
  'gap',
  'reattach',
  'restarted',
  'handoff-to',
  'handoff-from',
  'release',
]);
/** Compact when the file holds more than this many lines older than the log. */
const COMPACT_AFTER_STALE = 1_000;

export class MarkerIndex {
  private records: MarkerRecord[];
  private stale = 0;
  private writing: Promise<void> = Promise.resolve();
  private handle: FileHandle | null = null;

  private constructor(
    private readonly path: string,
    private readonly fileMode: number,
    records: MarkerRecord[],
    private readonly logger: Logger | null,
  ) {
    this.records = records;
  }

  /** Reads `markers.idx` in `dir` (a torn last line, from a crash, is ignored). */
  static async open(dir: string, fileMode: number, logger: Logger | null = null): Promise<MarkerIndex> {
    const path = join(dir, MARKER_INDEX_FILE);
    const text = (await readFileNoFollow(path))?.toString('utf8') ?? '';
    const records: MarkerRecord[] = [];
    for (const line of text.split('\n')) {
      const r = parseLine(line);
      if (r && (records.length === 0 || r.offset >= records[records.length - 1]!.offset)) records.push(r);
    }
    return new MarkerIndex(path, fileMode, records, logger);
  }

  /** Records a marker just appended at `offset`. */
  add(offset: number, length: number, kind: MarkerKind): void {
    const record = { offset, length, kind };
    this.records.push(record);
    this.enqueue(async () => {
      const handle = await this.file();
      await handle.write(`${JSON.stringify({ o: offset, n: length, k: kind })}\n`);
    });
  }

  /** The markers that start in `[start, end)`, in order. */
  inRange(start: number, end: number): MarkerRecord[] {
    const out: MarkerRecord[] = [];
    for (let i = this.firstAtOrAfter(start); i < this.records.length; i++) {
      const r = this.records[i]!;
      if (r.offset >= end) break;
      out.push(r);
    }
    return out;
  }

  /** Forgets the markers before `oldest` (rotated away with the log); compacts the file now and then. */
  prune(oldest: number): void {
    const drop = this.firstAtOrAfter(oldest);
    if (drop === 0) return;
    this.records = this.records.slice(drop);
    this.stale += drop;
    if (this.stale > COMPACT_AFTER_STALE) this.rewrite();
  }

  /** Moves every offset by `delta` (the log was renumbered to continue the stream). */
  shift(delta: number): Promise<void> {
    if (delta === 0 || this.records.length === 0) return Promise.resolve();
    this.records = this.records.map((r) => ({ ...r, offset: r.offset + delta }));
    return this.rewrite();
  }

  /** Resolves once every record so far is written. */
  async flush(): Promise<void> {
    await this.writing;
  }

  async close(): Promise<void> {
    await this.writing;
    await this.handle?.close().catch(() => undefined);
    this.handle = null;
  }

  private firstAtOrAfter(offset: number): number {
    let lo = 0;
    let hi = this.records.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.records[mid]!.offset < offset) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  /** Writes the live records to a new file and renames it over the old one. */
  private rewrite(): Promise<void> {
    const records = this.records;
    this.stale = 0;
    this.enqueue(async () => {
      await this.handle?.close().catch(() => undefined);
      this.handle = null;
      const tmp = `${this.path}.tmp`;
      const out = await createExclusive(tmp, this.fileMode);
      try {
        await out.writeFile(
          records.map((r) => `${JSON.stringify({ o: r.offset, n: r.length, k: r.kind })}\n`).join(''),
        );
      } finally {
        await out.close();
      }
      await rename(tmp, this.path);
    });
    return this.writing;
  }

  private async file(): Promise<FileHandle> {
    this.handle ??= await open(
      this.path,
      constants.O_WRONLY | constants.O_APPEND | constants.O_CREAT | constants.O_NOFOLLOW,
      this.fileMode,
    );
    return this.handle;
  }

  /** Writes happen one at a time, in order; a failed one is logged and the next goes on. */
  private enqueue(work: () => Promise<void>): void {
    this.writing = this.writing.then(work).catch((err: unknown) => {
      this.logger?.warn(
        { err: err instanceof Error ? err.message : String(err) },
        'writing the marker index failed',
      );
    });
  }
}

function parseLine(line: string): MarkerRecord | null {
  if (line.length === 0) return null;
  try {
    const v = JSON.parse(line) as { o?: unknown; n?: unknown; k?: unknown };
    if (typeof v.o !== 'number' || typeof v.n !== 'number' || typeof v.k !== 'string' || !KINDS.has(v.k))
      return null;
    return { offset: v.o, length: v.n, kind: v.k as MarkerKind };
  } catch {
    return null;
  }
}

/** `o:n:k`: how a marker travels to Redis and is kept in the `markers` set. */
export function encodeMarker(r: MarkerRecord): string {
  return `${r.offset}:${r.length}:${r.kind}`;
}

export function decodeMarker(text: string): MarkerRecord | null {
  const [o, n, k] = text.split(':');
  const offset = Number(o);
  const length = Number(n);
  if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || !k || !KINDS.has(k)) return null;
  return { offset, length, kind: k as MarkerKind };
}
