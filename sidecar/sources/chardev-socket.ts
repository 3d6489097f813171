/**
 * The sockets of `tcp` and `unix` sources, made with one read buffer shared by all
 * of them: libuv reads into it, up to 1 MiB at a time, so a flooding guest is read in
 * large bites (one syscall and one callback per up to 1 MiB, not per 64 KiB) and idle
 * guests cost no buffer of their own.
 *
 * A small read is copied out into a buffer of its own. A large one (a flood) is handed
 * on as a view of the shared buffer, borrowed for the length of the call
 * (common/borrowed-bytes.ts): the buffer is read into again next. Handing the buffer
 * over and allocating a fresh megabyte per read cost more than a copy: each megabyte
 * was garbage for V8, and a flood's megabytes set off a full collection every few tens
 * of milliseconds (docs/benchmarks.md).
 *
 * After a large read the socket reads on into a read slab of its own
 * (common/read-slabs.ts), each read just after the last one the log kept: the log's
 * write queue keeps those reads where they landed, with no copy, and the slabs are used
 * again once written. The first read that is small again sends the socket back to the
 * shared buffer, so a guest that stops flooding holds no slab for its reads.
 *
 * A socket's reader can change (a guest adopting a connection made by the early start
 * or by the process before an upgrade), so the read callback looks it up. Only node:
 * and common/ imports: lifecycle/pre-dial.ts dials with this before anything else is
 * loaded.
 */
import { connect, Socket } from 'node:net';
import { keepBytes, lendsItsBytes } from '../../common/borrowed-bytes.js';
import { MIN_READ_ROOM, type ReadSlab, takeReadSlab } from '../../common/read-slabs.js';

/** Size of the read buffer shared by every connected source. */
const READ_BUFFER_BYTES = 1024 * 1024;
/** A read at least this large is lent instead of copied out, and the socket reads on into a read slab. */
const LEND_BYTES = 64 * 1024;
const sharedReadBuffer = Buffer.allocUnsafeSlow(READ_BUFFER_BYTES);
lendsItsBytes(sharedReadBuffer);

type Reader = (chunk: Buffer) => void;
const readers = new WeakMap<Socket, Reader>();
/** Bytes read before a reader was set (a socket is paused until then, so rarely any). */
const early = new WeakMap<Socket, Buffer[]>();

function deliver(s: Socket, chunk: Buffer): void {
  const reader = readers.get(s);
  if (reader) reader(chunk);
  else {
    const kept = early.get(s) ?? [];
    kept.push(keepBytes(chunk));
    early.set(s, kept);
  }
}

/** Where one socket reads: the shared buffer, or, during a flood, a read slab of its own. */
class SocketReads {
  private slab: ReadSlab | null = null;
  private next: Buffer = sharedReadBuffer;

  constructor(private readonly socket: () => Socket) {}

  /** The buffer the next read goes into (`onread.buffer`, asked after every read). */
  readonly buffer = (): Buffer => this.next;

  readonly callback = (nread: number, buffer: Buffer): boolean => {
    const slab = this.slab;
    if (slab) {
      deliver(this.socket(), slab.landed(nread));
      slab.readDone();
      if (nread < LEND_BYTES)
        this.readInto(null); // the flood is over
      else if (slab.room < MIN_READ_ROOM) this.readIntoNewSlab();
      else this.next = slab.target();
    } else if (nread >= LEND_BYTES) {
      deliver(this.socket(), buffer.subarray(0, nread));
      this.readIntoNewSlab();
    } else {
      // Copied out: one allocation, no view in between.
      const chunk = Buffer.allocUnsafe(nread);
      buffer.copy(chunk, 0, 0, nread);
      deliver(this.socket(), chunk);
    }
    return true; // reading stops only through the source (pauseReading, or letGo at a handover)
  };

  /** The socket closed: its slab goes back once the bytes kept in it are written. */
  readonly closed = (): void => this.readInto(null);

  /**
   * Reads on into a new slab, or into the shared buffer when none is free. The slab read
   * into so far is let go of first, so that a socket moving to its next slab does not
   * count against the bound twice.
   */
  private readIntoNewSlab(): void {
    this.readInto(null);
    this.readInto(takeReadSlab());
  }

  /** Reads on into `slab`, or into the shared buffer (null); the slab read into so far is let go of. */
  private readInto(slab: ReadSlab | null): void {
    this.slab?.stopReading();
    this.slab = slab;
    this.next = slab ? slab.target() : sharedReadBuffer;
  }
}

export type ConnectTarget = { readonly host: string; readonly port: number } | { readonly path: string };

/** Dials `target`. */
export function dialChardev(target: ConnectTarget): Socket {
  let socket: Socket | null = null;
  const reads = new SocketReads(() => socket!);
  const onread = { buffer: reads.buffer, callback: reads.callback };
  socket =
    'path' in target
      ? connect({ path: target.path, onread })
      : connect({ host: target.host, port: target.port, onread });
  socket.once('close', reads.closed);
  return socket;
}

/** A connected socket from an inherited descriptor, paused until a reader is set. */
export function chardevSocketFromFd(fd: number): Socket {
  let socket: Socket | null = null;
  const reads = new SocketReads(() => socket!);
  const onread = { buffer: reads.buffer, callback: reads.callback };
  socket = new Socket({
    fd,
    readable: true,
    writable: true,
    onread,
    pauseOnCreate: true,
  } as ConstructorParameters<typeof Socket>[0]);
  socket.once('close', reads.closed);
  return socket;
}

/** Sends what `socket` reads to `reader` from now on (bytes read before it come first). */
export function setChardevReader(socket: Socket, reader: Reader | null): void {
  if (!reader) {
    readers.delete(socket);
    return;
  }
  readers.set(socket, reader);
  const kept = early.get(socket);
  if (kept) {
    early.delete(socket);
    for (const chunk of kept) reader(chunk);
  }
}
