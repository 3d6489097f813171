/**
 * The takeover of a listening console, against the built daemon: while QEMU's
 * connection to a `tcp-listen` (or `unix-listen`) source is up, another local
 * process dials the same port and tries to read the writer's keystrokes and write
 * a forged boot marker. It is closed at once, the refusal is logged once per
 * episode, QEMU's connection keeps working both ways, and only after it closed is a
 * new connection accepted. `unix-listen` socket files get the configured mode and
 * group, and (as root) a user outside them cannot connect at all.
 */
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { chmodSync, existsSync, statSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ConsoleViewer } from '../support/console-viewer.js';
import { type DaemonHandle, readWholeLog, startDaemon, stopAllDaemons } from '../support/daemon.js';
import { freePort } from '../support/free-port.js';
import { removeTmpDirs, tmpDir } from '../support/tmp.js';
import { waitFor } from '../support/wait.js';

interface ListenStatus {
  state: string;
  boot: number;
  chardev: { refusedConnections: number };
}

const FORGED = '\r\n[consoled] boot 99 started at 2026-01-01T00:00:00.000Z\r\n';
const REFUSAL_LOG = 'refused a connection to a guest chardev that is already connected';

afterAll(async () => {
  await stopAllDaemons();
  await removeTmpDirs();
});

/** A chardev connection standing for QEMU's `server=off`: keeps what consoled sends it. */
async function dial(target: { port: number } | { path: string }): Promise<Socket & { got: Buffer[] }> {
  const socket = (
    'path' in target ? connect(target) : connect({ host: '127.0.0.1', ...target })
  ) as Socket & {
    got: Buffer[];
  };
  socket.got = [];
  socket.on('data', (c: Buffer) => socket.got.push(c));
  socket.on('error', () => undefined);
  await once(socket, 'connect');
  return socket;
}

/**
 * The attack: dial while the guest's connection is up, send a forged marker at once,
 * and keep whatever comes back. Resolves when consoled has closed the connection.
 */
async function attack(target: { port: number } | { path: string }): Promise<Buffer> {
  const socket = await dial(target);
  const closed = new Promise((resolve) => socket.once('close', resolve)); // ECONNRESET or FIN alike
  socket.write(FORGED);
  await closed;
  return Buffer.concat(socket.got);
}

function status(d: DaemonHandle, id: string): Promise<ListenStatus> {
  return d.json<ListenStatus>('GET', `/v1/guests/${id}`);
}

async function logText(d: DaemonHandle, id: string): Promise<string> {
  return (await readWholeLog(d, id)).bytes.toString('latin1');
}

function refusalLines(d: DaemonHandle): number {
  return d
    .logs()
    .split('\n')
    .filter((l) => l.includes(REFUSAL_LOG)).length;
}

/** Runs the takeover attempt against `id` and checks the guest's connection is untouched. */
async function hijackIsRefused(
  d: DaemonHandle,
  id: string,
  target: { port: number } | { path: string },
): Promise<void> {
  const qemu = await dial(target);
  await waitFor('the guest connected', async () => (await status(d, id)).state === 'connected');
  qemu.write('qemu says hello\r\n');
  await waitFor('the guest output in the log', async () =>
    (await logText(d, id)).includes('qemu says hello'),
  );
  const writer = await ConsoleViewer.connect(d.url, id, { token: d.token });

  const before = refusalLines(d);
  for (let i = 0; i < 5; i++) expect((await attack(target)).length).toBe(0);
  const s = await status(d, id);
  expect(s.chardev.refusedConnections).toBe(5);
  expect(s).toMatchObject({ state: 'connected', boot: 1 });
  // One log line for the episode, not one per connection.
  await waitFor('the refusal logged', () => refusalLines(d) === before + 1);

  // The guest's connection still works both ways: keystrokes reach QEMU, its output is captured.
  writer.keys('secret-password\r');
  await waitFor(
    'the keystrokes at QEMU',
    () => Buffer.concat(qemu.got).toString('latin1') === 'secret-password\r',
  );
  qemu.write('still captured\r\n');
  await waitFor('more guest output in the log', async () =>
    (await logText(d, id)).includes('still captured'),
  );
  expect(await logText(d, id)).not.toContain('boot 99');

  // QEMU goes away: only now is a new connection accepted (a new boot, the guest having spoken).
  // QEMU redials as soon as its old connection is closed on its side: consoled may
  // not have finished closing its own yet, and must not take the redial for an attack.
  qemu.end();
  await once(qemu, 'close');
  const next = await dial(target);
  await waitFor('the new connection', async () => {
    const t = await status(d, id);
    return t.state === 'connected' && t.boot === 2;
  });
  writer.keys('to the new one\r');
  await waitFor('keystrokes at the new connection', () =>
    Buffer.concat(next.got).toString('latin1').includes('to the new one'),
  );
  next.write('second boot output\r\n');
  await waitFor('its output captured', async () => (await logText(d, id)).includes('second boot output'));
  // A new episode logs again.
  expect((await attack(target)).length).toBe(0);
  await waitFor('the second episode logged', () => refusalLines(d) === before + 2);
  next.destroy();
  await writer.close();
}

describe('a second connection to a listening chardev', () => {
  it('tcp-listen: is closed at once and logged once, and QEMU keeps the console', async () => {
    const d = await startDaemon();
    const port = await freePort();
    await d.json('PUT', '/v1/guests/tl', { source: { type: 'tcp-listen', host: '127.0.0.1', port } }, 201);
    await waitFor('listening', async () => (await status(d, 'tl')).state === 'listening');
    await hijackIsRefused(d, 'tl', { port });
  });

  it('unix-listen: the same, and the socket file has the default mode 0660', async () => {
    const d = await startDaemon();
    const path = join(tmpDir('ul'), 'serial.sock');
    await d.json('PUT', '/v1/guests/ul', { source: { type: 'unix-listen', path } }, 201);
    await waitFor('listening', async () => (await status(d, 'ul')).state === 'listening');
    const st = statSync(path);
    expect(st.isSocket()).toBe(true);
    expect(st.mode & 0o777).toBe(0o660);
    await hijackIsRefused(d, 'ul', { path });
  });
});

/** Tries to connect to `path` as another user; resolves with "connected" or the error code. */
async function connectAs(path: string, uid: number, gid: number): Promise<string> {
  const code = `require('net').connect(${JSON.stringify(path)}).on('connect', () => { console.log('connected'); process.exit(0); }).on('error', (e) => { console.log(e.code); process.exit(0); });`;
  const child = spawn(process.execPath, ['-e', code], { uid, gid, stdio: ['ignore', 'pipe', 'inherit'] });
  const out: Buffer[] = [];
  child.stdout!.on('data', (c: Buffer) => out.push(c));
  await once(child, 'exit');
  return Buffer.concat(out).toString('utf8').trim();
}

describe('unix-listen socket permissions', () => {
  it('gives the socket file the configured mode and group; others cannot connect', async () => {
    const d = await startDaemon();
    const dir = tmpDir('ulperm');
    chmodSync(dir, 0o755); // the directory is not what keeps others out here: the socket's mode is
    const path = join(dir, 'serial.sock');
    // A group the daemon's user can give files to: one of its own.
    const groups = process.getgroups?.() ?? [];
    const gid = groups.find((g) => g !== process.getgid?.()) ?? process.getgid?.() ?? 0;
    await d.json(
      'PUT',
      '/v1/guests/perm',
      { source: { type: 'unix-listen', path, socketMode: '0660', socketGroup: gid } },
      201,
    );
    await waitFor('listening', async () => (await status(d, 'perm')).state === 'listening');
    const st = statSync(path);
    expect(st.mode & 0o777).toBe(0o660);
    expect(st.gid).toBe(gid);

    // A group name works as well, and a stricter mode.
    const path2 = join(dir, 'serial2.sock');
    await d.json(
      'PUT',
      '/v1/guests/perm2',
      { source: { type: 'unix-listen', path: path2, socketMode: '0600', socketGroup: 'daemon' } },
      201,
    );
    await waitFor('listening', async () => (await status(d, 'perm2')).state === 'listening');
    const st2 = statSync(path2);
    expect(st2.mode & 0o777).toBe(0o600);
    expect(st2.gid).toBe(1); // "daemon" in /etc/group

    // A group that does not exist: no socket, and the status says why.
    const path3 = join(dir, 'serial3.sock');
    await d.json(
      'PUT',
      '/v1/guests/perm3',
      { source: { type: 'unix-listen', path: path3, socketGroup: 'no-such-group-here' } },
      201,
    );
    await waitFor('the reason in the status', async () =>
      (await d.json<{ stateReason: string }>('GET', '/v1/guests/perm3')).stateReason.includes(
        'no group named no-such-group-here',
      ),
    );
    expect(existsSync(path3)).toBe(false);

    if (process.getuid?.() === 0) {
      // Another user, outside the socket's group: refused by the kernel.
      expect(await connectAs(path, 65534, 65534)).toBe('EACCES');
      expect(await connectAs(path2, 65534, 1)).toBe('EACCES'); // 0600: its group has no access
      // The same user in the socket's group (0660): admitted.
      expect(await connectAs(path, 65534, gid)).toBe('connected');
    }
  });
});
