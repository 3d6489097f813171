/**
 * Proves the QEMU test guest works, talking to QEMU's chardevs directly (no consoled): the
 * shell answers, the logfile matches the socket byte for byte, the counter counts, a pty
 * is reported, and a live migration moves the serial output to the destination without
 * losing or repeating a byte.
 */
import { constants, openSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { connect, type Socket } from 'node:net';
import { join } from 'node:path';
import { ReadStream } from 'node:tty';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { freePort } from '../support/free-port.js';
import {
  GUEST_BANNER,
  GUEST_PROMPT,
  migrate,
  type QemuGuest,
  type QemuGuestOptions,
  qemuAvailable,
  startQemuGuest,
} from '../support/qemu-guest.js';
import { removeTmpDirs, tmpDir } from '../support/tmp.js';
import { waitFor } from '../support/wait.js';

const qemu = qemuAvailable();
if (!qemu.ok) console.warn(`skipping the QEMU guest tests: ${qemu.reason}`);

/** Boot under TCG takes 3 to 5 s on an idle 2-core host, and much longer on a busy one. */
const BOOT_TIMEOUT_MS = 60_000;

/** Everything one client receives from a serial chardev. */
class SerialTap {
  readonly chunks: Buffer[] = [];
  readonly closed: Promise<void>;

  constructor(readonly socket: Socket) {
    socket.on('data', (chunk: Buffer) => this.chunks.push(chunk));
    this.closed = new Promise((resolve) => socket.once('close', () => resolve()));
    // An error is followed by 'close'; the test then sees missing bytes, not a crash.
    socket.on('error', () => {});
  }

  static async open(options: { port: number } | { path: string }): Promise<SerialTap> {
    const socket = 'port' in options ? connect(options.port, '127.0.0.1') : connect(options.path);
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', resolve);
      socket.once('error', reject);
    });
    return new SerialTap(socket);
  }

  bytes(): Buffer {
    return Buffer.concat(this.chunks);
  }

  text(): string {
    return this.bytes().toString('latin1');
  }

  waitForText(pattern: RegExp, timeoutMs = 15_000): Promise<RegExpExecArray> {
    return waitFor(`${pattern} on the serial console`, () => pattern.exec(this.text()) ?? undefined, {
      timeoutMs,
    });
  }
}

/** The numbers of the whole `counter N\r\n` lines in `text`, in order; a line cut short does not count. */
function counterNumbers(text: string): number[] {
  return [...text.matchAll(/^counter (\d+)\r\n/gm)].map((m) => Number(m[1]));
}

describe.skipIf(!qemu.ok)(`QEMU test guest${qemu.ok ? '' : ` (skipped: ${qemu.reason})`}`, () => {
  const guests: QemuGuest[] = [];
  const taps: SerialTap[] = [];

  async function start(options: QemuGuestOptions): Promise<QemuGuest> {
    const guest = await startQemuGuest(options);
    guests.push(guest);
    return guest;
  }

  async function tap(options: { port: number } | { path: string }): Promise<SerialTap> {
    const t = await SerialTap.open(options);
    taps.push(t);
    return t;
  }

  afterEach(async () => {
    for (const t of taps.splice(0)) t.socket.destroy();
    await Promise.all(guests.splice(0).map((g) => g.kill()));
  });

  afterAll(async () => {
    await removeTmpDirs();
  });

  it('runs a shell on a tcp-server chardev, and the logfile holds exactly the bytes the socket got', async () => {
    const port = await freePort();
    const logfile = join(tmpDir('qemu-guest'), 'serial.log');
    // Started paused (-S): the guest has not run one instruction when the client connects,
    // so the socket sees every byte the guest ever emits. QEMU writes each chunk to the
    // socket first and then the same chunk to the logfile (and the whole chunk to the logfile
    // alone when no client is connected), so with a client connected from the first byte
    // to QEMU's exit the two must be identical.
    const guest = await start({ mode: 'shell', serial: { kind: 'tcp-server', port }, logfile, paused: true });
    const serial = await tap({ port });
    await guest.qmp.execute('cont');

    await serial.waitForText(new RegExp(`${GUEST_BANNER}.*\\r\\n`), BOOT_TIMEOUT_MS);
    // Busybox's line editor asks the terminal for the cursor position (ESC [ 6 n) after each
    // prompt; nothing answers here, and the shell carries on.
    await serial.waitForText(new RegExp(GUEST_PROMPT));
    serial.socket.write('echo hello-$((6*7))\r');
    // The echo of what was typed shows `$((6*7))`; only the shell's output shows 42.
    await serial.waitForText(/\r\nhello-42\r\n/);

    // `exit` ends the shell, init powers off, QEMU exits on its own: a clean end for both.
    await serial.waitForText(new RegExp(`hello-42\\r\\n${GUEST_PROMPT}`));
    serial.socket.write('exit\r');
    const exit = await guest.exited;
    expect(exit).toEqual({ code: 0, signal: null });
    await serial.closed;

    const received = serial.bytes();
    expect(received.toString('latin1')).toContain('init done, powering off');
    const logged = await readFile(logfile);
    expect(logged.length).toBe(received.length);
    expect(logged.equals(received)).toBe(true);
  }, 120_000);

  it('counts in counter mode: whole lines, N increasing by one from 1', async () => {
    const path = join(tmpDir('qemu-guest'), 'serial.sock');
    const guest = await start({
      mode: 'counter',
      hz: 10,
      serial: { kind: 'unix-server', path },
      paused: true,
    });
    const serial = await tap({ path });
    await guest.qmp.execute('cont');

    await serial.waitForText(/^counter 15\r$/m, BOOT_TIMEOUT_MS);
    const text = serial.text();
    const afterBanner = text.slice(text.indexOf(GUEST_BANNER));
    const lines = afterBanner.split('\n').slice(1, -1);
    // Every line after the banner is a whole counter line (the last one may still be arriving).
    expect(lines.filter((line) => !/^counter \d+\r$/.test(line))).toEqual([]);
    const numbers = counterNumbers(afterBanner);
    expect(numbers.length).toBeGreaterThanOrEqual(15);
    expect(numbers).toEqual(numbers.map((_, i) => i + 1));
  }, 120_000);

  it('reports the pty it allocated, and the shell answers on it', async () => {
    const guest = await start({ mode: 'shell', serial: { kind: 'pty' }, paused: true });
    expect(guest.ptyPath).toMatch(/^\/dev\/pts\/\d+$/);
    // O_NOCTTY: the pty must not become the test worker's controlling terminal.
    const fd = openSync(guest.ptyPath!, constants.O_RDWR | constants.O_NOCTTY);
    const pty = new ReadStream(fd);
    // Raw before the guest runs: otherwise our side of the pty echoes the guest's output
    // back into the guest as typed input.
    pty.setRawMode(true);
    let text = '';
    pty.on('data', (chunk: Buffer) => (text += chunk.toString('latin1')));
    pty.on('error', () => {}); // EIO once QEMU closes the master
    try {
      await guest.qmp.execute('cont');
      await waitFor('the prompt on the pty', () => text.includes(GUEST_PROMPT), {
        timeoutMs: BOOT_TIMEOUT_MS,
      });
      pty.write('echo pty-$((6*7))\r');
      await waitFor('pty-42 on the pty', () => text.includes('\r\npty-42\r\n'));
    } finally {
      pty.destroy();
    }
  }, 120_000);

  it('drops the output while no client is connected (wait=off), but the logfile keeps all of it', async () => {
    const port = await freePort();
    const logfile = join(tmpDir('qemu-guest'), 'serial.log');
    await start({ mode: 'counter', hz: 20, serial: { kind: 'tcp-server', port }, logfile });
    const logged = async (): Promise<number[]> => counterNumbers(await readFile(logfile, 'latin1'));

    // Nobody connected: the guest runs on and its output reaches the logfile only.
    await waitFor('counter 10 in the logfile', async () => (await logged()).includes(10), {
      timeoutMs: BOOT_TIMEOUT_MS,
    });
    const first = await tap({ port });
    await waitFor('5 lines on the first connection', () => counterNumbers(first.text()).length >= 5);
    first.socket.destroy();
    const lastOnFirst = counterNumbers(first.text()).at(-1)!;
    await waitFor('10 more lines in the logfile', async () => (await logged()).at(-1)! >= lastOnFirst + 10);
    const second = await tap({ port });
    await waitFor('5 lines on the second connection', () => counterNumbers(second.text()).length >= 5);

    // A client sees only what is emitted while it is connected: no replay of what it missed.
    expect(counterNumbers(first.text())[0]!).toBeGreaterThan(10);
    expect(counterNumbers(second.text())[0]!).toBeGreaterThan(lastOnFirst + 9);
    const all = await logged();
    expect(all).toEqual(all.map((_, i) => i + 1));
  }, 120_000);

  it('live-migrates a counting guest: the count continues on the destination chardev, nothing lost or repeated', async () => {
    const sourcePort = await freePort();
    const destPort = await freePort();
    const migrationPort = await freePort();
    // hz 0: lines back to back, so that the source almost always stops in the middle of one.
    const options: QemuGuestOptions = {
      mode: 'counter',
      hz: 0,
      serial: { kind: 'tcp-server', port: sourcePort },
    };
    const source = await start({ ...options, paused: true });
    const sourceSerial = await tap({ port: sourcePort });
    await source.qmp.execute('cont');
    // The destination runs the same machine, kernel, initrd and memory; only its serial
    // chardev (a backend, not migrated) differs.
    const dest = await start({
      ...options,
      serial: { kind: 'tcp-server', port: destPort },
      incoming: migrationPort,
    });
    const destSerial = await tap({ port: destPort });

    await sourceSerial.waitForText(/^counter 20\r$/m, BOOT_TIMEOUT_MS);
    expect(destSerial.bytes().length).toBe(0);
    const elapsedMs = await migrate(source, migrationPort);
    console.log(`migration took ${elapsedMs.toFixed(0)} ms`);
    expect((await source.qmp.execute<{ status: string }>('query-status')).status).toBe('postmigrate');
    expect((await dest.qmp.execute<{ status: string }>('query-status')).status).toBe('running');

    await waitFor('10 lines on the destination', () => counterNumbers(destSerial.text()).length >= 10);
    // The source is paused: once killed and its socket closed, every byte it emitted is here.
    await source.kill();
    await sourceSerial.closed;
    await dest.kill();
    await destSerial.closed;

    const fromSource = sourceSerial.text();
    const fromDest = destSerial.text();
    expect(fromDest).not.toContain(GUEST_BANNER);
    // The guest's tty hands `counter N\r\n` to the UART a byte at a time, and the source
    // stops at an arbitrary instant: the line being sent may end on the source socket and
    // resume on the destination's. Concatenated, the two streams must be exactly the
    // guest's output: only whole counter lines, numbered 1, 2, 3, ... A byte lost or sent
    // twice at the switch would break a line's shape or its number.
    const joined = fromSource + fromDest;
    const afterBanner = joined.slice(joined.indexOf(`${GUEST_BANNER} mode=counter\r\n`));
    const lines = afterBanner.split('\n').slice(1, -1);
    expect(lines.filter((line) => !/^counter \d+\r$/.test(line))).toEqual([]);
    const numbers = counterNumbers(afterBanner);
    expect(numbers.filter((n, i) => n !== i + 1)).toEqual([]);

    // And the switch is a real one: the source stopped at some N, the destination went on.
    const lastOnSource = counterNumbers(fromSource).at(-1)!;
    const firstWholeOnDest = counterNumbers(fromDest)[0]!;
    const split = !fromSource.endsWith('\n');
    expect(firstWholeOnDest).toBe(lastOnSource + (split ? 2 : 1));
    expect(numbers.at(-1)!).toBeGreaterThanOrEqual(lastOnSource + 10);
  }, 180_000);
});
