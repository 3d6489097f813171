/**
 * Bytes lent for the length of one call. A chardev socket reads a flood into one
 * buffer that it reads into again as soon as its callback returns
 * (sidecar/sources/chardev-socket.ts), so the chunk it hands on is a view that is
 * valid only during that call: no fresh megabyte per read, and so no garbage for V8
 * to collect per megabyte (docs/design.md "Borrowed reads").
 *
 * Whoever keeps guest output past the call copies a borrowed chunk: the log's write
 * queue into buffers it reuses (store/log-write-queue.ts), every other keeper with
 * `keepBytes`. The check is one lookup of the chunk's ArrayBuffer.
 */
const lent = new WeakSet<ArrayBufferLike>();

/**
 * Marks `buffer` as one that is read into again: every view of it is borrowed. It must
 * own its memory whole (`Buffer.allocUnsafeSlow`): a small `Buffer.allocUnsafe` is a
 * slice of Node's shared pool, and marking that would mark every buffer cut from it.
 */
export function lendsItsBytes(buffer: Buffer): void {
  if (buffer.byteOffset !== 0 || buffer.length !== buffer.buffer.byteLength)
    throw new Error('a lent buffer must own its memory (Buffer.allocUnsafeSlow)');
  lent.add(buffer.buffer);
}

/** Whether `bytes` is a view of a buffer that will be read into again. */
export function isBorrowed(bytes: Buffer): boolean {
  return lent.has(bytes.buffer);
}

/** `bytes` itself, or a copy of them when they are borrowed: what a keeper stores. */
export function keepBytes(bytes: Buffer): Buffer {
  return isBorrowed(bytes) ? Buffer.from(bytes) : bytes;
}
