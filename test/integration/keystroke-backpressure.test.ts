/**
 * A writer floods keystrokes at a guest that does not read, against the built
 * daemon: an `exec` program, a pty (socat holding the master) and a unix socket peer.
 * What consoled accepts stays bounded (the guest side's kernel buffers plus
 * MAX_KEYSTROKE_INFLIGHT_BYTES), the writer's socket is paused (status says so, the
 * rest waits at the client), and once the guest reads, every byte arrives in order
 * and the writer is read again. Then the per-writer keystroke rate: a writer over it
 * is paused (not dropped), counted in status and metrics, and held to the rate.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { ConsoleViewer } from '../support/console-viewer.js';
import {
  closeAllPeers,
  type DaemonHandle,
  SocketPeer,
  startDaemon,
  stopAllDaemons,
} from '../support/daemon.js';
import { removeTmpDirs, tmpDir } from '../support/tmp.js';
import { sleep, waitFor } from '../support/wait.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const FRAME = 4 * KiB;

interface WriterStatus {
  console: {
    writer: { viewerId: string; paused: string[] } | null;
    keystrokeBytes: number;
    writerGuestPauses: number;
    writerRatePauses: number;
  };
  chardev: { bytesOut: number; pendingKeystrokeBytes: number };
}

let d: DaemonHandle;
const children = new Set<ChildProcess>();
const viewers: ConsoleViewer[] = [];

beforeAll(async () => {
  // The rate limit is off here so that only the guest's backpressure holds the writer.
  d = await startDaemon({ config: { console: { keystrokeBytesPerSec: 0 } } });
});

afterEach(async () => {
  await Promise.all(viewers.splice(0).map((v) => v.close()));
  for (const child of children) child.kill('SIGKILL');
  children.clear();
  await closeAllPeers();
});

afterAll(async () => {
  await stopAllDaemons();
  await removeTmpDirs();
});

function status(daemon: DaemonHandle, id: string): Promise<WriterStatus> {
  return daemon.json<WriterStatus>('GET', `/v1/guests/${id}`);
}

/** Printable bytes (a tty must not interpret them), different at every 4 KiB. */
function pattern(total: number): Buffer {
  const out = Buffer.alloc(total);
  for (let i = 0; i < total; i++) out[i] = 0x21 + ((i * 7 + (i >> 12)) % 94);
  return out;
}

async function writer(daemon: DaemonHandle, id: string): Promise<ConsoleViewer> {
  const v = await ConsoleViewer.connect(daemon.url, id, { token: daemon.token });
  viewers.push(v);
  await v.waitFor('lock', (m) => (m['writer'] as { viewerId: string } | null)?.viewerId === v.viewerId);
  return v;
}

/**
 * Types `total` bytes at a guest that does not read, checks that consoled holds at
 * most `bound` of them and pauses the writer, then lets the guest read and checks
 * that every byte arrives, in order.
 */
async function floodStalledGuest(
  id: string,
  total: number,
  bound: number,
  guest: { startReading(): void; received(): Buffer },
): Promise<void> {
  const v = await writer(d, id);
  const data = pattern(total);
  for (let i = 0; i < total; i += FRAME) v.keys(data.subarray(i, i + FRAME));

  // The writer is paused because of the guest (a positive signal, not a sleep).
  const paused = await waitFor(`${id}: the writer paused for the guest`, async () => {
    const s = await status(d, id);
    return s.console.writer?.paused.includes('guest') ? s : undefined;
  });
  expect(paused.console.writerGuestPauses).toBeGreaterThanOrEqual(1);
  expect(paused.console.keystrokeBytes).toBeLessThanOrEqual(bound);
  // It stays paused and bounded while the guest keeps not reading; the rest waits at the client.
  // A sleep: staying paused has no event to wait for.
  await sleep(500);
  const later = await status(d, id);
  expect(later.console.writer?.paused).toContain('guest');
  expect(later.console.keystrokeBytes).toBeLessThanOrEqual(bound);
  expect(later.chardev.pendingKeystrokeBytes).toBeLessThanOrEqual(256 * KiB);
  expect(v.ws.bufferedAmount).toBeGreaterThan(0);
  expect(guest.received().length).toBeLessThan(total);

  guest.startReading();
  await waitFor(`${id}: every keystroke at the guest`, () => guest.received().length >= total, {
    timeoutMs: 60_000,
  });
  expect(guest.received().equals(data)).toBe(true);
  const after = await status(d, id);
  expect(after.console.keystrokeBytes).toBe(total);
  expect(after.chardev.bytesOut).toBe(total);
  expect(after.console.writer?.paused).toEqual([]);
}

describe('a writer flooding a guest that does not read', () => {
  it('exec: consoled holds a bounded amount, pauses the writer, and delivers all once the program reads', async () => {
    const dir = tmpDir('bp-exec');
    const go = join(dir, 'go');
    const out = join(dir, 'out');
    writeFileSync(out, '');
    // Raw, no echo: the pty passes bytes as they are and fills up while nobody reads.
    const script = `stty raw -echo -iexten; while [ ! -e ${go} ]; do sleep 0.05; done; exec cat > ${out}`;
    await d.json(
      'PUT',
      '/v1/guests/bp-exec',
      { source: { type: 'exec', command: ['/bin/sh', '-c', script] } },
      201,
    );
    await waitFor(
      'the program to run',
      async () => (await d.json<{ state: string }>('GET', '/v1/guests/bp-exec')).state === 'connected',
    );
    await floodStalledGuest('bp-exec', 8 * MiB, 2 * MiB, {
      startReading: () => writeFileSync(go, ''),
      received: () => readFileSync(out),
    });
  });

  it('pty: the same through a pty whose master side stops reading', async () => {
    const dir = tmpDir('bp-pty');
    const link = join(dir, 'serial0');
    // socat copies the master to its stdout; while the test does not read that pipe,
    // socat stops reading the master and the pty fills.
    const socat = spawn('socat', ['-d', `PTY,link=${link},rawer`, 'STDOUT'], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    children.add(socat);
    await waitFor('socat to create the pty', () => existsSync(link));
    const chunks: Buffer[] = [];
    await d.json('PUT', '/v1/guests/bp-pty', { source: { type: 'pty', path: link } }, 201);
    await waitFor(
      'the pty open',
      async () => (await d.json<{ state: string }>('GET', '/v1/guests/bp-pty')).state === 'connected',
    );
    await floodStalledGuest('bp-pty', 8 * MiB, 2 * MiB, {
      startReading: () => socat.stdout!.on('data', (c: Buffer) => chunks.push(c)),
      received: () => Buffer.concat(chunks),
    });
  });

  it('unix socket: bounded by the socket buffers, the writer paused until the peer reads', async () => {
    const path = join(tmpDir('bp-unix'), 'serial.sock');
    const peer = await SocketPeer.listen({ path });
    await d.json('PUT', '/v1/guests/bp-unix', { source: { type: 'unix', path } }, 201);
    const socket = await peer.waitForConnections(1);
    socket.pause();
    // What the kernel may hold for a unix stream socket: at most its send buffer
    // (wmem_max) and receive buffer (rmem_max); consoled adds at most about 1 MiB.
    const kernel = ['wmem_max', 'rmem_max']
      .map((f) => Number(readFileSync(`/proc/sys/net/core/${f}`, 'utf8').trim()))
      .reduce((a, b) => a + b, 0);
    const bound = kernel + 1 * MiB;
    await floodStalledGuest('bp-unix', bound + 8 * MiB, bound, {
      startReading: () => socket.resume(),
      received: () => peer.received,
    });
  });
});

describe('the per-writer keystroke rate', () => {
  it('pauses a writer over the rate instead of dropping, counts it, and holds it to the rate', async () => {
    const rate = 128 * KiB;
    const burst = 64 * KiB;
    const limited = await startDaemon({
      config: { console: { keystrokeBytesPerSec: rate, keystrokeBurstBytes: burst } },
    });
    const peer = await SocketPeer.listen();
    const source = { type: 'tcp', host: '127.0.0.1', port: peer.port };
    await limited.json('PUT', '/v1/guests/rl', { source }, 201);
    await peer.waitForConnections(1);
    const v = await writer(limited, 'rl');
    const total = 640 * KiB;
    const data = pattern(total);
    for (let i = 0; i < total; i += FRAME) v.keys(data.subarray(i, i + FRAME));

    const first = await waitFor('the writer paused for its rate', async () => {
      const s = await status(limited, 'rl');
      return s.console.writer?.paused.includes('rate') ? s : undefined;
    });
    const t0 = performance.now();
    const b0 = peer.received.length;
    expect(first.console.writerRatePauses).toBeGreaterThanOrEqual(1);
    // Over a window of at least 2 s the guest gets no more than the rate allows, plus
    // the burst and one socket read of frames that were already in flight.
    await sleep(2000);
    const elapsedMs = performance.now() - t0;
    const got = peer.received.length - b0;
    expect(got).toBeLessThanOrEqual((rate * elapsedMs) / 1000 + burst + 128 * KiB);
    expect(peer.received.length).toBeLessThan(total);

    // Nothing is dropped: everything arrives, in order, at the rate.
    await waitFor('every keystroke at the guest', () => peer.received.length >= total, { timeoutMs: 60_000 });
    expect(peer.received.equals(data)).toBe(true);
    const s = await status(limited, 'rl');
    expect(s.console.keystrokeBytes).toBe(total);
    expect(s.console.writerRatePauses).toBeGreaterThanOrEqual(1);
    const metrics = await (await limited.api('GET', '/metrics')).text();
    const line = metrics
      .split('\n')
      .find((l) => l.startsWith('consoled_console_writer_rate_pauses_total{guest="rl"}'));
    expect(Number(line?.split(' ').pop())).toBeGreaterThanOrEqual(1);
    await v.close();
    viewers.splice(viewers.indexOf(v), 1);
    await limited.stop();
  });

  it('holds a flood of 1-byte frames to about 1000 a second with the defaults (each frame counts 64 bytes)', async () => {
    const defaults = await startDaemon(); // console.keystrokeBytesPerSec 65536, keystrokeBurstBytes 1 MiB
    const peer = await SocketPeer.listen();
    const source = { type: 'tcp', host: '127.0.0.1', port: peer.port };
    await defaults.json('PUT', '/v1/guests/tiny', { source }, 201);
    await peer.waitForConnections(1);
    const v = await writer(defaults, 'tiny');
    // 60 000 bytes: far within the 1 MiB burst if bytes alone counted, but as frames
    // they count 3.8 MiB, so the writer is paused after the first ~16 000.
    const frames = 60_000;
    const one = Buffer.from('x');
    for (let i = 0; i < frames; i++) v.keys(one);
    const first = await waitFor('the writer paused for its rate', async () => {
      const s = await status(defaults, 'tiny');
      return s.console.writer?.paused.includes('rate') ? s : undefined;
    });
    expect(first.console.writerRatePauses).toBeGreaterThanOrEqual(1);
    const t0 = performance.now();
    const b0 = peer.received.length;
    await sleep(2000);
    const elapsedMs = performance.now() - t0;
    // 65536 / 64 = 1024 frames a second, plus one socket read of frames in flight
    // (64 KiB of 7-byte frames) when it was paused.
    const allowed = (1024 * elapsedMs) / 1000 + Math.ceil((64 * KiB) / 7);
    expect(peer.received.length - b0).toBeLessThanOrEqual(allowed);
    expect(peer.received.length).toBeLessThan(frames);
    // Still paused, so consoled would not read a close frame: drop the connection.
    v.ws.terminate();
    await v.closed;
    viewers.splice(viewers.indexOf(v), 1);
    await defaults.stop();
  });
});
