/**
 * A `tcp` source (sidecar/sources/socket-connect-source.ts) connected to a real server
 * of the test's own, standing for QEMU's `server=on` chardev: for the unit tests of how a
 * source reads. What it opens is closed by the `cleanups` the caller runs.
 */
import { createServer, type Socket } from 'node:net';
import { silentLogger } from '../../common/logger.js';
import { SocketConnectSource } from '../../sidecar/sources/socket-connect-source.js';
import { waitFor } from './wait.js';

export type Cleanups = Array<() => Promise<void> | void>;

export interface ConnectedTcpSource {
  readonly source: SocketConnectSource;
  /** The server's side of the connection: what the guest writes. */
  readonly guest: Socket;
  /** Every chunk the source delivered, in order. */
  readonly reads: Buffer[];
}

/**
 * A source connecting to 127.0.0.1:`port` (a guest of the test's own, in this process or
 * another), started after `prepare`; every chunk it delivers is kept in `reads`.
 */
export function startedTcpSource(
  cleanups: Cleanups,
  port: number,
  prepare: (source: SocketConnectSource) => void = () => undefined,
): { source: SocketConnectSource; reads: Buffer[] } {
  const source = new SocketConnectSource({ host: '127.0.0.1', port }, silentLogger(), {
    initialDelayMs: 50,
    maxDelayMs: 100,
    minUptimeMs: 1000,
  });
  cleanups.push(() => source.stop());
  const reads: Buffer[] = [];
  source.on('data', (chunk) => reads.push(chunk));
  prepare(source);
  source.start();
  return { source, reads };
}

/**
 * Starts a source against a fresh server and waits until it is connected; `prepare`
 * runs on the source before it starts (a hold, a read-coalescing setting).
 */
export async function connectedTcpSource(
  cleanups: Cleanups,
  prepare: (source: SocketConnectSource) => void = () => undefined,
): Promise<ConnectedTcpSource> {
  let accepted!: (s: Socket) => void;
  const peer = new Promise<Socket>((r) => (accepted = r));
  const server = createServer((s) => accepted(s));
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  cleanups.push(() => new Promise<void>((r) => server.close(() => r())));
  const address = server.address();
  if (!address || typeof address === 'string') throw new Error('no port');
  const { source, reads } = startedTcpSource(cleanups, address.port, prepare);
  const guest = await peer;
  cleanups.push(() => void guest.destroy());
  await waitFor('connected', () => source.state === 'connected');
  return { source, guest, reads };
}
