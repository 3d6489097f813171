/**
 * Pausing a source's reading (sources/source.ts `pauseReading`/`resumeReading`), on a
 * real TCP connection: reasons are counted, so two holders compose (reading resumes only
 * when neither holds it), and bytes sent meanwhile wait in the kernel, none lost.
 */
import { createServer, type Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { silentLogger } from '../../common/logger.js';
import { SocketConnectSource } from '../../sidecar/sources/socket-connect-source.js';
import { sleep, waitFor } from '../support/wait.js';

const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const f of cleanups.splice(0).reverse()) await f();
});

async function guestServer(): Promise<{ port: number; peer: Promise<Socket> }> {
  let accepted!: (s: Socket) => void;
  const peer = new Promise<Socket>((r) => (accepted = r));
  const server = createServer((s) => accepted(s));
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  cleanups.push(() => new Promise<void>((r) => server.close(() => r())));
  const address = server.address();
  if (!address || typeof address === 'string') throw new Error('no port');
  return { port: address.port, peer };
}

describe('Source reading holds', () => {
  it('resumes only when every reason let go, and loses nothing held meanwhile', async () => {
    const { port, peer } = await guestServer();
    const source = new SocketConnectSource({ host: '127.0.0.1', port }, silentLogger(), {
      initialDelayMs: 50,
      maxDelayMs: 100,
      minUptimeMs: 1000,
    });
    cleanups.push(() => source.stop());
    const received: Buffer[] = [];
    source.on('data', (chunk) => received.push(chunk));
    source.pauseReading('overflow'); // before the connection: it starts paused
    source.start();
    const guest = await peer;
    cleanups.push(() => void guest.destroy());
    await waitFor('connected', () => source.state === 'connected');

    guest.write('first');
    // A sleep: nothing is read while paused, so there is no event to wait for; 300 ms
    // is many times what a read of a ready socket takes.
    await sleep(300);
    expect(received.length).toBe(0);
    source.pauseReading('handover');
    source.resumeReading('overflow');
    guest.write(' second');
    await sleep(300); // a sleep, as above
    expect(received.length).toBe(0); // 'handover' still holds it
    expect(source.readingPaused).toBe(true);
    source.resumeReading('handover');
    expect(source.readingPaused).toBe(false);
    await waitFor('the held bytes', () => Buffer.concat(received).toString() === 'first second');
    // Letting go of a reason nobody holds changes nothing.
    source.resumeReading('overflow');
    expect(source.readingPaused).toBe(false);
  });
});
