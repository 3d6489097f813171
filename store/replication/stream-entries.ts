/**
 * A guest stream's entries as the read side of SharedLog sees them (docs/design.md
 * "Redis schema"): an entry's ID is `<offset>-1` and its `d` field holds the bytes;
 * reads gather consecutive bytes across entries, sized in batches from what they saw.
 */

/** The most entries one XRANGE/XREVRANGE asks for (segments are up to ~64 KiB). */
export const MAX_BATCH_ENTRIES = 256;
/** The first batch of a read whose entry sizes are unknown: small, then adapted. */
export const FIRST_BATCH_ENTRIES = 4;

const EMPTY: Buffer = Buffer.alloc(0);
/** `d`: the entry field holding the segment's bytes. */
const DATA_FIELD = 0x64;

/** Bytes served from the stream, and exactly where they sit in the guest's log. */
export interface RangeRead {
  /** Offset of `bytes[0]`: the asked start, or later if older bytes were trimmed (X-Consoled-Start). */
  start: number;
  /** The offset to ask for next (X-Consoled-Next). */
  next: number;
  bytes: Buffer;
}

export interface Entry {
  id: string;
  offset: number;
  bytes: Buffer;
}

export type RawEntry = [id: Buffer, fields: Buffer[]];

/**
 * Gathers consecutive bytes from entries fed in offset order, from `from` on,
 * stopping at `end`, at `limit` bytes, or before a skipped span.
 */
export class RangeBuilder {
  private start: number | undefined;
  private position: number | undefined;
  private readonly chunks: Buffer[] = [];
  private size = 0;
  private entries = 0;
  private entryBytes = 0;
  complete = false;

  constructor(
    private readonly from: number,
    private readonly end: number,
    private readonly limit: number,
  ) {}

  /** Bytes still wanted (an upper bound: `end` may come first). */
  get remaining(): number {
    return Math.min(this.limit - this.size, this.end - (this.position ?? this.from));
  }

  get averageEntryBytes(): number | undefined {
    return this.entries === 0 ? undefined : this.entryBytes / this.entries;
  }

  /** Takes what it needs of one entry; false once the range is complete. */
  add(entry: Entry): boolean {
    if (this.complete) return false;
    this.entries++;
    this.entryBytes += entry.bytes.length;
    const entryEnd = entry.offset + entry.bytes.length;
    if (this.position === undefined) {
      if (entryEnd <= this.from) return true; // wholly before the range
      // Later than asked: older bytes were trimmed, or `from` fell in a skipped span.
      this.start = Math.max(this.from, entry.offset);
      this.position = this.start;
    } else if (entry.offset !== this.position) {
      this.complete = true; // a skipped span: the next read starts after it
      return false;
    }
    const start = this.start ?? this.position;
    const stop = Math.min(entryEnd, this.end, start + this.limit);
    if (stop > this.position) {
      const chunk = entry.bytes.subarray(this.position - entry.offset, stop - entry.offset);
      this.chunks.push(chunk);
      this.size += chunk.length;
      this.position = stop;
    }
    if (stop < entryEnd || this.position >= this.end || this.size >= this.limit) this.complete = true;
    return !this.complete;
  }

  result(): RangeRead {
    const start = this.start ?? this.from;
    return {
      start,
      next: this.position ?? start,
      bytes: this.chunks.length === 1 ? this.chunks[0]! : Buffer.concat(this.chunks, this.size),
    };
  }
}

/** Enough entries for `wantedBytes` at the average size seen, plus one; small when unknown. */
export function batchSize(wantedBytes: number, averageEntryBytes: number | undefined): number {
  if (averageEntryBytes === undefined || averageEntryBytes <= 0) return FIRST_BATCH_ENTRIES;
  const estimate = Math.ceil(wantedBytes / averageEntryBytes) + 1;
  return Math.max(1, Math.min(MAX_BATCH_ENTRIES, estimate));
}

export function parseEntry([id, fields]: RawEntry): Entry {
  const text = id.toString('latin1');
  const offset = Number(text.slice(0, text.indexOf('-')));
  let bytes: Buffer = EMPTY;
  for (let i = 0; i + 1 < fields.length; i += 2) {
    const name = fields[i]!;
    if (name.length === 1 && name[0] === DATA_FIELD) bytes = fields[i + 1]!;
  }
  return { id: text, offset, bytes };
}
