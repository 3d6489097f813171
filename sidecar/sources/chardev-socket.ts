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
 * A socket's reader can change (a guest adopting a connection made by the early start
 * or by the process before an upgrade), so the read callback looks it up. Only node:
 * and common/ imports: lifecycle/pre-dial.ts dials with this before anything else is
 * loaded.
 */
import { connect, Socket } from 'node:net';
import { keepBytes, lendsItsBytes } from '../../common/borrowed-bytes.js';

/** Size of the read buffer shared by every connected source. */
const READ_BUFFER_BYTES = 1024 * 1024;
/** A read at least this large is lent as a view of the shared buffer instead of copied out. */
const LEND_BYTES = 64 * 1024;
const sharedReadBuffer = Buffer.allocUnsafeSlow(READ_BUFFER_BYTES);
lendsItsBytes(sharedReadBuffer);

type Reader = (chunk: Buffer) => void;
const readers = new WeakMap<Socket, Reader>();
/** Bytes read before a reader was set (a socket is paused until then, so rarely any). */
const early = new WeakMap<Socket, Buffer[]>();

function onreadFor(socket: () => Socket) {
  return {
    buffer: sharedReadBuffer,
    callback: (nread: number, buffer: Buffer): boolean => {
      let chunk: Buffer;
      if (nread >= LEND_BYTES) chunk = buffer.subarray(0, nread);
      else {
        // Copied out: one allocation, no view in between.
        chunk = Buffer.allocUnsafe(nread);
        buffer.copy(chunk, 0, 0, nread);
      }
      const s = socket();
      const reader = readers.get(s);
      if (reader) reader(chunk);
      else {
        const kept = early.get(s) ?? [];
        kept.push(keepBytes(chunk));
        early.set(s, kept);
      }
      return true; // reading stops only through the source (pauseReading, or letGo at a handover)
    },
  };
}

export type ConnectTarget = { readonly host: string; readonly port: number } | { readonly path: string };

/** Dials `target`. */
export function dialChardev(target: ConnectTarget): Socket {
  let socket: Socket | null = null;
  const onread = onreadFor(() => socket!);
  socket =
    'path' in target
      ? connect({ path: target.path, onread })
      : connect({ host: target.host, port: target.port, onread });
  return socket;
}

/** A connected socket from an inherited descriptor, paused until a reader is set. */
export function chardevSocketFromFd(fd: number): Socket {
  let socket: Socket | null = null;
  const onread = onreadFor(() => socket!);
  socket = new Socket({
    fd,
    readable: true,
    writable: true,
    onread,
    pauseOnCreate: true,
  } as ConstructorParameters<typeof Socket>[0]);
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
