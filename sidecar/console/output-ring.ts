/**
 * Block size of the ring. The ring holds `replayBytes` plus at most one block for
 * every guest, watched or not, so blocks are small: a host with 4096 guests holds
 * at most 4096 × (64 + 16) KiB. A frame is copied out once per flush, into the
 * WebSocket message that viewers at its offset share (binary-frame.ts).
 */
export const RING_BLOCK_BYTES = 16 * 1024;
const BLOCK_BYTES = RING_BLOCK_BYTES;

interface Block {
  /** Offset of the block's first byte. */
  readonly start: number;
  readonly buf: Buffer;
  /** Bytes filled so far. */
  fill: number;
  /** Whether a view of it was handed out (`slice`): then it is never filled again. */
  lent: boolean;
}

/**
 * Blocks a ring dropped (trimmed, or the ring restarted), taken again by any ring's
 * appends: a flood that nobody watches keeps only the replay tail, and would otherwise
 * allocate that tail afresh at every read. A block of which a view was handed out is
 * left to the collector. At most MAX_SPARE_BLOCKS are kept.
 */
const spareBlocks: Buffer[] = [];
const MAX_SPARE_BLOCKS = 64;

function giveBack(block: Block): void {
  if (!block.lent && spareBlocks.length < MAX_SPARE_BLOCKS) spareBlocks.push(block.buf);
}

/**
 * The recent output of one guest, placed at its log offsets: the bytes viewers are
 * sent from. Output is copied into fixed blocks, so thousands of tiny chunks cost
 * neither thousands of objects nor the socket buffers they were read into. Blocks
 * are never written again once a view of them has been handed out (appends only
 * fill the unused tail), so a view (`slice`) stays valid while a socket holds it.
 */
export class OutputRing {
  private blocks: Block[] = [];
  private startOffset: number;
  private endOffset: number;

  constructor(offset: number) {
    this.startOffset = offset;
    this.endOffset = offset;
  }

  /** Offset of the oldest byte held. */
  get start(): number {
    return this.startOffset;
  }

  /** Offset after the newest byte held. */
  get end(): number {
    return this.endOffset;
  }

  get size(): number {
    return this.endOffset - this.startOffset;
  }

  /**
   * Adds bytes at `offset`. Output is contiguous; should an offset ever jump (it
   * cannot while the capture is the only appender), the ring restarts there.
   */
  append(offset: number, bytes: Buffer): void {
    if (offset !== this.endOffset) {
      for (const block of this.blocks) giveBack(block);
      this.blocks = [];
      this.startOffset = offset;
      this.endOffset = offset;
    }
    let pos = 0;
    while (pos < bytes.length) {
      let last = this.blocks[this.blocks.length - 1];
      if (!last || last.fill === last.buf.length) {
        last = {
          start: this.endOffset,
          buf: spareBlocks.pop() ?? Buffer.allocUnsafe(BLOCK_BYTES),
          fill: 0,
          lent: false,
        };
        this.blocks.push(last);
      }
      const n = Math.min(bytes.length - pos, last.buf.length - last.fill);
      bytes.copy(last.buf, last.fill, pos, pos + n);
      last.fill += n;
      pos += n;
      this.endOffset += n;
    }
  }

  /**
   * Bytes `[from, to)`, which must lie within `[start, end)`. A range inside one
   * block is a view of it; a range across blocks is copied once.
   */
  slice(from: number, to: number): Buffer {
    this.checkRange(from, to);
    if (from === to) return Buffer.alloc(0);
    const first = this.blocks[this.blockIndex(from)]!;
    if (to <= first.start + first.fill) {
      first.lent = true;
      return first.buf.subarray(from - first.start, to - first.start);
    }
    const out = Buffer.allocUnsafe(to - from);
    this.copy(from, to, out, 0);
    return out;
  }

  /** Copies bytes `[from, to)`, which must lie within `[start, end)`, into `target` at `at`. */
  copy(from: number, to: number, target: Buffer, at: number): void {
    this.checkRange(from, to);
    let filled = at;
    let pos = from;
    for (let j = this.blockIndex(from); pos < to; j++) {
      const block = this.blocks[j]!;
      const b = Math.min(to, block.start + block.fill) - block.start;
      filled += block.buf.copy(target, filled, pos - block.start, b);
      pos = block.start + b;
    }
  }

  private checkRange(from: number, to: number): void {
    if (from < this.startOffset || to > this.endOffset || from > to) {
      throw new RangeError(
        `[${from}, ${to}) is not within the ring [${this.startOffset}, ${this.endOffset})`,
      );
    }
  }

  /** Drops whole blocks that end at or before `offset`; the ring keeps every byte from `offset` on. */
  /** Moves every offset by `delta` (the log was renumbered; the bytes stay). */
  shift(delta: number): void {
    this.startOffset += delta;
    this.endOffset += delta;
    this.blocks = this.blocks.map((block) => ({ ...block, start: block.start + delta }));
  }

  trimBefore(offset: number): void {
    let drop = 0;
    while (drop < this.blocks.length - 1) {
      const block = this.blocks[drop]!;
      if (block.start + block.fill > offset) break;
      drop++;
    }
    if (drop === 0) return;
    for (const block of this.blocks.splice(0, drop)) giveBack(block);
    this.startOffset = this.blocks[0]!.start;
  }

  private blockIndex(offset: number): number {
    // Every block but the last is full, so the index follows from the first block's start.
    const first = this.blocks[0]!;
    return Math.min(this.blocks.length - 1, Math.floor((offset - first.start) / BLOCK_BYTES));
  }
}
