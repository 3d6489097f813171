/**
 * Every source kind against a real peer: a socket server standing for QEMU's
 * `server=on`, the test dialling consoled like QEMU's `server=off,reconnect=N`,
 * socat holding a pty master, and a shell command under node-pty. Boots and
 * reattaches are checked in the log itself (the markers) and in the status.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import { existsSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { join } from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import {
  closeAllPeers,
  type DaemonHandle,
  type InProcessDaemon,
  readWholeLog,
  SocketPeer,
  startDaemon,
  startInProcessDaemon,
  stopAllDaemons,
  stopAllInProcessDaemons,
} from '../support/daemon.js';
import { freePort } from '../support/free-port.js';
import { removeTmpDirs, tmpDir } from '../support/tmp.js';
import { waitFor } from '../support/wait.js';

interface Status {
  state: string;
  stateReason: string;
  boot: number;
  offset: number;
  flushedOffset: number;
}

const BOOT_MARKER = /\r\n\[consoled\] boot (\d+) started at [^\r\n]*\r\n/g;
const REATTACH_MARKER = /\r\n\[consoled\] reattached at [^\r\n]*\r\n/g;

type Api = Pick<DaemonHandle, 'api'> | Pick<InProcessDaemon, 'api'>;

async function status(d: Api, id: string): Promise<Status> {
  const res = await d.api('GET', `/v1/guests/${id}`);
  expect(res.status).toBe(200);
  return (await res.json()) as Status;
}

async function attach(d: Api, id: string, source: Record<string, unknown>): Promise<void> {
  const res = await d.api('PUT', `/v1/guests/${id}`, { source });
  if (res.status !== 201) throw new Error(`attach ${id}: ${res.status} ${await res.text()}`);
}

/** Waits until the log (read through the API) contains `needle`, and returns the whole log as latin1. */
async function logContaining(d: Api, id: string, needle: string | Buffer): Promise<string> {
  const want = typeof needle === 'string' ? Buffer.from(needle, 'latin1') : needle;
  const log = await waitFor(
    `the log of ${id} to contain ${JSON.stringify(want.toString('latin1'))}`,
    async () => {
      const { bytes } = await readWholeLog(d, id);
      return bytes.includes(want) ? bytes : undefined;
    },
  );
  return log.toString('latin1');
}

function waitForState(d: Api, id: string, want: (s: Status) => boolean, what: string): Promise<Status> {
  return waitFor(`${id}: ${what}`, async () => {
    const s = await status(d, id);
    return want(s) ? s : undefined;
  });
}

function bootNumbers(log: string): number[] {
  return [...log.matchAll(BOOT_MARKER)].map((m) => Number(m[1]));
}

/** Asserts that `needles` appear in `log` in this order. */
function expectInOrder(log: string, needles: Array<string | RegExp>): void {
  let from = 0;
  for (const needle of needles) {
    let at: number;
    let len: number;
    if (typeof needle === 'string') {
      at = log.indexOf(needle, from);
      len = needle.length;
    } else {
      const re = new RegExp(needle.source, 'g');
      re.lastIndex = from;
      const m = re.exec(log);
      at = m ? m.index : -1;
      len = m ? m[0].length : 0;
    }
    expect(at, `${String(needle)} after byte ${from} in ${JSON.stringify(log)}`).toBeGreaterThanOrEqual(0);
    from = at + len;
  }
}

const children = new Set<ChildProcess>();

async function killChild(child: ChildProcess): Promise<void> {
  if (child.exitCode === null && child.signalCode === null) {
    const exited = once(child, 'exit');
    child.kill('SIGKILL');
    await exited;
  }
  children.delete(child);
}

afterEach(async () => {
  await Promise.all([...children].map(killChild));
  await stopAllInProcessDaemons();
  await stopAllDaemons();
  await closeAllPeers();
});

afterAll(async () => {
  await removeTmpDirs();
});

describe('tcp (consoled dials a chardev served like QEMU server=on)', () => {
  it('captures bytes, starts boot 2 when the peer comes back, and reattaches after a daemon restart', async () => {
    const peer = await SocketPeer.listen();
    const d = await startDaemon();
    await attach(d, 'tcp-guest', { type: 'tcp', host: '127.0.0.1', port: peer.port });

    await peer.waitForConnections(1);
    await waitForState(d, 'tcp-guest', (s) => s.state === 'connected', 'connected');
    peer.send('boot one says hello\r\n');
    await logContaining(d, 'tcp-guest', 'boot one says hello\r\n');
    expect((await status(d, 'tcp-guest')).boot).toBe(1);

    // The guest side goes away (QEMU exits): the state shows it, with the reason.
    await peer.close();
    const down = await waitForState(
      d,
      'tcp-guest',
      (s) => s.state === 'backoff' && /ECONNREFUSED/.test(s.stateReason),
      'backoff after the peer left',
    );
    expect(down.stateReason).toMatch(/retrying in \d+ ms/);

    // A new QEMU process on the same address: a new boot, with its marker.
    await peer.open();
    await peer.waitForConnections(2);
    await waitForState(d, 'tcp-guest', (s) => s.state === 'connected' && s.boot === 2, 'connected in boot 2');
    peer.send('boot two says hello\r\n');
    let log = await logContaining(d, 'tcp-guest', 'boot two says hello\r\n');
    expectInOrder(log, [
      /\[consoled\] boot 1 started/,
      'boot one says hello\r\n',
      /\[consoled\] boot 2 started/,
      'boot two says hello\r\n',
    ]);

    // consoled restarts while the guest stays: same boot, a reattach marker.
    expect(await d.stop()).toBe(0);
    await waitFor('the peer to see consoled go', () => peer.current === null);
    await d.start();
    await peer.waitForConnections(3);
    await waitForState(d, 'tcp-guest', (s) => s.state === 'connected', 'connected after the restart');
    peer.send('still boot two\r\n');
    log = await logContaining(d, 'tcp-guest', 'still boot two\r\n');
    expect((await status(d, 'tcp-guest')).boot).toBe(2);
    expect(bootNumbers(log)).toEqual([1, 2]);
    expect([...log.matchAll(REATTACH_MARKER)]).toHaveLength(1);
    expectInOrder(log, ['boot two says hello\r\n', REATTACH_MARKER, 'still boot two\r\n']);
  });

  it('delivers keystrokes written through Source.write to the peer', async () => {
    const peer = await SocketPeer.listen();
    const d = await startInProcessDaemon();
    await attach(d, 'keys', { type: 'tcp', host: '127.0.0.1', port: peer.port });
    await peer.waitForConnections(1);
    const guest = d.daemon.registry.get('keys');
    expect(guest).toBeDefined();
    await waitFor('the source to connect', () => guest!.source.state === 'connected');
    const keys = Buffer.from([0x6c, 0x73, 0x0d, 0x00, 0xff, 0x1b, 0x5b, 0x41]); // "ls\r", NUL, 0xff, Up
    expect(guest!.source.write(keys)).toBe(true);
    await waitFor('the keystrokes at the peer', () => peer.received.equals(keys));
    expect(guest!.source.counters.bytesOut).toBe(keys.length);
  });
});

describe('tcp-listen (QEMU dials consoled: server=off,reconnect=N)', () => {
  it('captures each connection and starts a new boot when the guest redials', async () => {
    const port = await freePort();
    const d = await startDaemon();
    await attach(d, 'listen-guest', { type: 'tcp-listen', host: '127.0.0.1', port });
    const idle = await waitForState(d, 'listen-guest', (s) => s.state === 'listening', 'listening');
    expect(idle.stateReason).toContain(`127.0.0.1:${port}`);

    const dial = async (): Promise<Socket> => {
      const socket = connect({ host: '127.0.0.1', port });
      await once(socket, 'connect');
      return socket;
    };
    const first = await dial();
    await waitForState(d, 'listen-guest', (s) => s.state === 'connected', 'connected');
    first.write('first dial\r\n');
    await logContaining(d, 'listen-guest', 'first dial\r\n');
    first.end();
    await once(first, 'close');
    await waitForState(d, 'listen-guest', (s) => s.state === 'listening', 'listening again');

    const second = await dial();
    await waitForState(
      d,
      'listen-guest',
      (s) => s.state === 'connected' && s.boot === 2,
      'connected in boot 2',
    );
    second.write('second dial\r\n');
    const log = await logContaining(d, 'listen-guest', 'second dial\r\n');
    second.destroy();
    expect(bootNumbers(log)).toEqual([1, 2]);
    expectInOrder(log, [/boot 1 started/, 'first dial\r\n', /boot 2 started/, 'second dial\r\n']);
  });
});

describe('unix and unix-listen', () => {
  it('unix: captures bytes and starts boot 2 when the peer socket comes back', async () => {
    const dir = tmpDir('unix');
    const path = join(dir, 'serial.sock');
    const peer = await SocketPeer.listen({ path });
    const d = await startDaemon();
    await attach(d, 'unix-guest', { type: 'unix', path });
    await peer.waitForConnections(1);
    peer.send(Buffer.from('unix \x00\x01\x02 bytes\r\n', 'latin1'));
    await logContaining(d, 'unix-guest', Buffer.from('unix \x00\x01\x02 bytes\r\n', 'latin1'));

    await peer.close();
    await waitForState(
      d,
      'unix-guest',
      (s) => s.state === 'backoff' && /ENOENT|ECONNREFUSED/.test(s.stateReason),
      'backoff',
    );
    await peer.open();
    await peer.waitForConnections(2);
    peer.send('unix again\r\n');
    const log = await logContaining(d, 'unix-guest', 'unix again\r\n');
    expect(bootNumbers(log)).toEqual([1, 2]);
    expect((await status(d, 'unix-guest')).boot).toBe(2);
  });

  it('unix-listen: the guest dials the socket consoled listens on; a redial is a new boot', async () => {
    const dir = tmpDir('unixl');
    const path = join(dir, 'consoled.sock');
    const d = await startDaemon();
    await attach(d, 'unixl-guest', { type: 'unix-listen', path });
    await waitForState(d, 'unixl-guest', (s) => s.state === 'listening', 'listening');
    expect(existsSync(path)).toBe(true);

    const first = connect({ path });
    await once(first, 'connect');
    first.write('over unix-listen\r\n');
    await logContaining(d, 'unixl-guest', 'over unix-listen\r\n');
    first.end();
    await once(first, 'close');
    await waitForState(d, 'unixl-guest', (s) => s.state === 'listening', 'listening again');

    const second = connect({ path });
    await once(second, 'connect');
    second.write('redialled\r\n');
    const log = await logContaining(d, 'unixl-guest', 'redialled\r\n');
    second.destroy();
    expect(bootNumbers(log)).toEqual([1, 2]);

    // Detaching releases the socket path.
    expect((await d.api('DELETE', '/v1/guests/unixl-guest')).status).toBe(200);
    expect(existsSync(path)).toBe(false);
  });
});

describe('pty (socat holds the master, consoled opens the slave)', () => {
  /** socat relaying its stdio to a fresh pty whose slave is linked at `link`. */
  async function startSocat(link: string): Promise<ChildProcess & { output: Buffer[] }> {
    const child = spawn('socat', ['-d', `PTY,link=${link},rawer`, 'STDIO'], {
      stdio: ['pipe', 'pipe', 'pipe'],
    }) as ChildProcess & {
      output: Buffer[];
    };
    children.add(child);
    child.output = [];
    child.stdout!.on('data', (chunk: Buffer) => child.output.push(chunk));
    child.stdin!.on('error', () => undefined);
    await waitFor(`socat to create ${link}`, () => existsSync(link));
    return child;
  }

  it('carries bytes both ways; socat exiting closes the guest; a new socat is a new boot', async () => {
    const dir = tmpDir('pty');
    const link = join(dir, 'serial0');
    let socat = await startSocat(link);
    const d = await startInProcessDaemon();
    await attach(d, 'pty-guest', { type: 'pty', path: link });
    await waitForState(d, 'pty-guest', (s) => s.state === 'connected', 'connected');

    // Guest output: raw bytes, NUL and 0xff included, no newline translation.
    const out = Buffer.from('pty output \x00\xff\x1b[1m\n', 'latin1');
    socat.stdin!.write(out);
    await logContaining(d, 'pty-guest', out);

    // Keystrokes: through the guest's source to the master side.
    const guest = d.daemon.registry.get('pty-guest')!;
    const keys = Buffer.from('root\r\x03\x04', 'latin1');
    guest.source.write(keys);
    await waitFor('the keystrokes at socat', () => Buffer.concat(socat.output).equals(keys));

    // QEMU exits: the master closes.
    await killChild(socat);
    await waitForState(d, 'pty-guest', (s) => s.state === 'backoff', 'backoff after socat exited');

    socat = await startSocat(link);
    await waitForState(d, 'pty-guest', (s) => s.state === 'connected' && s.boot === 2, 'connected in boot 2');
    socat.stdin!.write('second pty\r\n');
    const log = await logContaining(d, 'pty-guest', 'second pty\r\n');
    expect(bootNumbers(log)).toEqual([1, 2]);
    expectInOrder(log, [/boot 1 started/, out.toString('latin1'), /boot 2 started/, 'second pty\r\n']);
  });
});

describe('exec (a command under node-pty)', () => {
  it('captures output byte-exact, bytes that are not UTF-8 included, and starts a new boot per run', async () => {
    const dir = tmpDir('exec');
    const counter = join(dir, 'runs');
    // Each run prints its number framed by bytes that are not UTF-8; the first run
    // exits, the second stays. No newline: the pty would turn \n into \r\n.
    const script = [
      `n=$(cat ${counter} 2>/dev/null || echo 0)`,
      'n=$((n+1))',
      `echo $n > ${counter}`,
      `printf 'run %s:\\377\\000\\376:end' "$n"`,
      'if [ "$n" -ge 2 ]; then exec sleep 60; fi',
      // Longer than reconnect.minUptimeMs (1 s): a run that exits sooner starts no boot.
      'sleep 1.2',
      'exit 3',
    ].join('\n');
    const d = await startDaemon();
    await attach(d, 'exec-guest', { type: 'exec', command: ['/bin/sh', '-c', script] });
    const run = (n: number) =>
      Buffer.concat([Buffer.from(`run ${n}:`), Buffer.from([0xff, 0x00, 0xfe]), Buffer.from(':end')]);
    await logContaining(d, 'exec-guest', run(1));
    const log = await logContaining(d, 'exec-guest', run(2));
    await waitForState(
      d,
      'exec-guest',
      (s) => s.state === 'connected' && s.boot === 2,
      'the second run connected',
    );
    expect(bootNumbers(log)).toEqual([1, 2]);
    // Byte-exact: the marker, then exactly what the command printed, then the next marker.
    const raw = Buffer.from(log, 'latin1');
    const boot2 = raw.indexOf(Buffer.from('\r\n[consoled] boot 2'));
    const run1 = raw.indexOf(run(1));
    expect(raw.subarray(run1, boot2)).toEqual(run(1));
    expect(raw.subarray(raw.length - run(2).length)).toEqual(run(2));
    expect(log).not.toContain('\ufffd');
  });

  it('types into the program through the pty master node-pty exposes (consoled writes it itself)', async () => {
    const d = await startInProcessDaemon();
    await attach(d, 'exec-keys', { type: 'exec', command: ['/bin/sh', '-c', 'stty raw -echo; exec cat'] });
    const guest = d.daemon.registry.get('exec-keys')!;
    await waitFor('the program to run', () => guest.source.state === 'connected');
    // node-pty's master descriptor (a getter its typings leave out): if it goes away,
    // the source cannot start and says so in its state.
    expect(guest.source.stateReason).not.toMatch(/no longer exposes/);
    await waitFor('the tty set up', async () => {
      guest.source.write(Buffer.from('ping\r'));
      return (await readWholeLog(d, 'exec-keys')).bytes.includes(Buffer.from('ping\r'));
    });
    expect(guest.source.counters.bytesOut).toBeGreaterThan(0);
    expect(guest.source.pendingKeystrokeBytes).toBe(0);
  });
});
