/**
 * The new side of an upgrade (docs/design.md "Upgrade"): a process started by the
 * daemon it replaces, with the live descriptors that daemon let go of. It reads the
 * manifest, turns each descriptor back into a socket, server or tty for its guest to
 * adopt, says when it is ready, and becomes the main process when the parent lets go.
 */
import { createServer, Socket } from 'node:net';
import { ReadStream } from 'node:tty';
import { consoledVersion } from '../../common/version.js';
import type { LockReservation } from '../console/writer-lock.js';
import type { ChardevHandle, InheritedChardev, InheritedHandles } from '../sources/chardev-handle.js';
import { chardevSocketFromFd } from '../sources/chardev-socket.js';
import {
  HANDOVER_ENV,
  type HandoverManifest,
  type ManifestChardev,
  type ParentMessage,
  type SuccessorMessage,
} from './handover-manifest.js';

/** How long a successor waits for its manifest. */
const MANIFEST_TIMEOUT_MS = 10_000;

/** What a successor inherits, ready to adopt. */
export interface Inheritance extends InheritedHandles {
  readonly fromPid: number;
  readonly fromVersion: string;
  readonly writerReservations: Readonly<Record<string, LockReservation>>;
}

/** Whether this process was started as a successor (with an IPC channel to its parent). */
export function isSuccessor(): boolean {
  return process.env[HANDOVER_ENV] === '1' && typeof process.send === 'function';
}

function send(message: SuccessorMessage): void {
  process.send?.(message);
}

/** The manifest: the parent's first message. */
export function receiveManifest(timeoutMs = MANIFEST_TIMEOUT_MS): Promise<HandoverManifest> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('no handover manifest from the parent')), timeoutMs);
    const onMessage = (message: ParentMessage) => {
      if (message.type !== 'manifest') return;
      clearTimeout(timer);
      process.off('message', onMessage);
      resolve(message.manifest);
    };
    process.on('message', onMessage);
  });
}

function handleOf(chardev: ManifestChardev): ChardevHandle | null {
  switch (chardev.kind) {
    case 'socket':
      return { kind: 'socket', socket: chardevSocketFromFd(chardev.fd) };
    case 'listen': {
      const server = createServer();
      server.listen({ fd: chardev.serverFd });
      const socket =
        chardev.socketFd === null
          ? null
          : new Socket({
              fd: chardev.socketFd,
              readable: true,
              writable: true,
              pauseOnCreate: true,
            } as ConstructorParameters<typeof Socket>[0]);
      return { kind: 'listen', server, socket };
    }
    case 'tty':
      return { kind: 'tty', tty: new ReadStream(chardev.fd) };
    case 'restart':
      return null;
  }
}

/** The inherited descriptors as sockets, servers and ttys, by guest. */
export function adopt(manifest: HandoverManifest): Inheritance {
  const guests = new Map<string, InheritedChardev>();
  for (const { id, chardev, rateLimit } of manifest.guests) {
    const handle = handleOf(chardev);
    guests.set(id, { handle, continuation: handle ? 'continued' : 'restarted', rateLimit });
  }
  return {
    fromPid: manifest.fromPid,
    fromVersion: manifest.fromVersion,
    guests,
    apiFd: manifest.apiFd,
    apiTlsFd: manifest.apiTlsFd ?? null,
    writerReservations: manifest.writerReservations ?? {},
  };
}

/**
 * Tells the parent this process is ready, and resolves once the parent let go of
 * everything (or is gone): from then on this process is the daemon.
 */
export function reportReady(): Promise<void> {
  return new Promise((resolve) => {
    const become = () => {
      process.off('message', onMessage);
      process.off('disconnect', become);
      resolve();
    };
    const onMessage = (message: ParentMessage) => {
      if (message.type === 'commit') become();
    };
    process.on('message', onMessage);
    process.once('disconnect', become);
    send({ type: 'ready', pid: process.pid, version: consoledVersion() });
  });
}

/** Confirms the takeover to the parent and closes the channel. */
export function confirmMain(): void {
  const message: SuccessorMessage = { type: 'main' };
  process.send?.(message, undefined, {}, () => process.disconnect?.());
}

/** Tells the parent the start failed (it takes the guests back). */
export function reportFailure(err: unknown): void {
  send({ type: 'failed', error: err instanceof Error ? err.message : String(err) });
}
