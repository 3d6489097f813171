/**
 * The daemon and its service manager (docs/design.md "Service lifecycle"), against a
 * real NOTIFY_SOCKET datagram socket the test binds: READY=1 after the API listens and
 * the declared guest was tried (and, bounded, while a connect hangs), STATUS= with counts, RELOADING=1 (with MONOTONIC_USEC)
 * then READY=1 around reloads by the API and by SIGHUP, STOPPING=1 at the stop; the
 * watchdog pings at about half of WATCHDOG_USEC, and not at all when WATCHDOG_PID names
 * another process. At an upgrade, the successor sends MAINPID= with its own pid, then
 * READY=1, and keeps the watchdog pinging after the old process exited; the old process
 * sends no STOPPING=1.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { afterAll, describe, expect, it } from 'vitest';
import {
  closeAllPeers,
  type DaemonHandle,
  pidAlive,
  SocketPeer,
  startDaemon,
  stopAllDaemons,
} from '../support/daemon.js';
import { NotifySocket } from '../support/notify-socket.js';
import { removeTmpDirs } from '../support/tmp.js';
import { sleep, waitFor } from '../support/wait.js';

const sockets: NotifySocket[] = [];
function notifySocket(): NotifySocket {
  const s = NotifySocket.open();
  sockets.push(s);
  return s;
}

const helpers: ChildProcess[] = [];
/** Upgrade successors this file started (the harness only knows the first process). */
const successors: number[] = [];

/**
 * A TCP port whose connects hang: a listener (python3, as Node accepts by itself) with
 * a full backlog that never accepts, so a new SYN gets no answer.
 */
async function hangingPort(): Promise<number> {
  const child = spawn('python3', [
    '-c',
    [
      'import socket, time',
      "s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(0)",
      'port = s.getsockname()[1]',
      'fill = []',
      'for i in range(3):',
      '    c = socket.socket(); c.setblocking(False)',
      '    try: c.connect(("127.0.0.1", port))',
      '    except BlockingIOError: pass',
      '    fill.append(c)',
      'print(port, flush=True)',
      'time.sleep(600)',
    ].join('\n'),
  ]);
  helpers.push(child);
  let out = '';
  child.stdout?.on('data', (c: Buffer) => {
    out += c.toString('utf8');
  });
  return waitFor('the hanging listener', () => (out.includes('\n') ? Number(out.trim()) : undefined));
}

afterAll(async () => {
  for (const h of helpers) h.kill('SIGKILL');
  for (const pid of successors) if (pidAlive(pid)) process.kill(pid, 'SIGKILL');
  await stopAllDaemons();
  await closeAllPeers();
  for (const s of sockets) s.close();
  await removeTmpDirs();
});

function logIndex(d: DaemonHandle, msg: string): number {
  return d
    .logs()
    .split('\n')
    .findIndex((l) => l.includes(`"msg":"${msg}"`));
}

describe('sd_notify messages', () => {
  it('READY after listening with the declared guest tried, STATUS on changes, RELOADING/READY around reloads, STOPPING at the stop', async () => {
    const notify = notifySocket();
    const peer = await SocketPeer.listen();
    const d = await startDaemon({
      config: { guests: [{ id: 'vm-a', source: { type: 'tcp', host: '127.0.0.1', port: peer.port } }] },
      env: { NOTIFY_SOCKET: notify.path },
    });
    const ready = await notify.waitFor('READY');
    // The declared guest's first attempt ended (connected) before READY.
    expect(ready.fields['STATUS']).toBe('1 guest attached: 1 connected, 0 listening, 0 down');
    expect(logIndex(d, 'consoled listening')).toBeGreaterThanOrEqual(0);
    expect(logIndex(d, 'consoled listening')).toBeLessThan(logIndex(d, 'consoled ready'));
    expect(notify.with('WATCHDOG')).toEqual([]); // no WATCHDOG_USEC: no pings

    // A change of a source's state is reported.
    const statusesBefore = notify.with('STATUS').length;
    await peer.close();
    const down = await waitFor('a STATUS with the guest down', () =>
      notify
        .with('STATUS')
        .slice(statusesBefore)
        .find((m) => m.fields['STATUS']?.endsWith('1 down')),
    );
    expect(down.fields['STATUS']).toMatch(/^1 guest attached: 0 connected/);

    // A reload through the API, then by SIGHUP: RELOADING=1 with MONOTONIC_USEC, then READY=1.
    await d.json('POST', '/v1/reload', undefined, 200);
    const reloading = await notify.waitFor('RELOADING');
    expect(Number(reloading.fields['MONOTONIC_USEC'])).toBeGreaterThan(0);
    await notify.waitFor('READY', 2);
    d.proc.kill('SIGHUP');
    await notify.waitFor('RELOADING', 2);
    await notify.waitFor('READY', 3);
    expect(d.running).toBe(true);

    expect(await d.stop()).toBe(0);
    await notify.waitFor('STOPPING');
    const kinds = notify.kinds().filter((k) => k !== 'STATUS');
    expect(kinds).toEqual(['READY', 'RELOADING', 'READY', 'RELOADING', 'READY', 'STOPPING']);
    expect(notify.error).toBeNull();
  });

  it('READY waits for a first attempt only so long: a hanging connect is named and READY goes out', async () => {
    const notify = notifySocket();
    const port = await hangingPort();
    const d = await startDaemon({
      config: { guests: [{ id: 'vm-hang', source: { type: 'tcp', host: '127.0.0.1', port } }] },
      env: { NOTIFY_SOCKET: notify.path },
    });
    const ready = await notify.waitFor('READY');
    // Sent while the connect still hung: the guest counts as down.
    expect(ready.fields['STATUS']).toBe('1 guest attached: 0 connected, 0 listening, 1 down');
    const warning = d
      .logs()
      .split('\n')
      .find((l) => l.includes('still on their first attempt'));
    expect(warning).toContain('vm-hang');
    expect(((await d.json('GET', '/v1/guests/vm-hang')) as { state: string }).state).toBe('connecting');
  });

  it('pings the watchdog at about half of WATCHDOG_USEC; not when WATCHDOG_PID is another pid', async () => {
    const ours = notifySocket();
    const other = notifySocket();
    const usec = 400_000; // pings every 200 ms
    await Promise.all([
      startDaemon({ env: { NOTIFY_SOCKET: ours.path, WATCHDOG_USEC: String(usec) } }),
      startDaemon({ env: { NOTIFY_SOCKET: other.path, WATCHDOG_USEC: String(usec), WATCHDOG_PID: '1' } }),
    ]);
    await ours.waitFor('READY');
    await other.waitFor('READY');
    const first = await ours.waitFor('WATCHDOG', 2);
    const windowMs = 2000;
    await sleep(windowMs);
    const pings = ours.with('WATCHDOG').filter((m) => m.atMs > first.atMs && m.atMs <= first.atMs + windowMs);
    // About windowMs / (usec / 2) = 10; a loaded machine delays timers, so a wide band.
    expect(pings.length).toBeGreaterThanOrEqual(5);
    expect(pings.length).toBeLessThanOrEqual(12);
    const gaps = pings.slice(1).map((m, i) => m.atMs - (pings[i]?.atMs ?? 0));
    const median = [...gaps].sort((a, b) => a - b)[Math.floor(gaps.length / 2)] ?? 0;
    expect(median).toBeGreaterThan(100);
    expect(median).toBeLessThan(usec / 1000); // well inside the interval
    expect(other.with('WATCHDOG')).toEqual([]);
  });

  it('at an upgrade: MAINPID= of the successor, then READY=1, no STOPPING=1, and the successor pings the watchdog', async () => {
    const notify = notifySocket();
    const peer = await SocketPeer.listen();
    const usec = 400_000;
    const d = await startDaemon({
      config: { guests: [{ id: 'vm-u', source: { type: 'tcp', host: '127.0.0.1', port: peer.port } }] },
      // As systemd sets them for the main process.
      env: { NOTIFY_SOCKET: notify.path, WATCHDOG_USEC: String(usec) },
    });
    await notify.waitFor('READY');
    const oldPid = d.proc.pid;
    const answer = await d.json<{ fromPid: number; toPid: number }>('POST', '/v1/upgrade', undefined, 200);
    successors.push(answer.toPid);
    expect(answer.fromPid).toBe(oldPid);
    expect(answer.toPid).not.toBe(oldPid);
    const mainPid = await notify.waitFor('MAINPID');
    expect(Number(mainPid.fields['MAINPID'])).toBe(answer.toPid);
    const ready = await notify.waitFor('READY', 2);
    expect(ready.atMs).toBeGreaterThan(mainPid.atMs);
    await waitFor('the old process to exit', () => !pidAlive(oldPid ?? -1), { timeoutMs: 20_000 });
    // The successor pings on its own once the old process is gone.
    const goneAt = performance.now();
    await waitFor('watchdog pings after the old process exited', () =>
      notify.with('WATCHDOG').filter((m) => m.atMs > goneAt).length >= 3 ? true : undefined,
    );
    expect(notify.with('STOPPING')).toEqual([]);
    const kinds = notify.kinds().filter((k) => k !== 'STATUS' && k !== 'WATCHDOG');
    expect(kinds).toEqual(['READY', 'MAINPID', 'READY']);
    expect(notify.error).toBeNull();
  });
});
