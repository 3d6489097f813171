/**
 * The zero-loss upgrade (docs/design.md "Upgrade") against real QEMU guests (TCG),
 * each printing a numbered line every 20 ms: one on a `server=on,wait=off` TCP chardev
 * consoled dials (`tcp`), one that dials consoled (`tcp-listen`), one on a pty
 * (`pty`). Through three `POST /v1/upgrade`:
 * - each guest's capture is byte for byte what QEMU wrote to its `logfile=`, once the
 *   one boot marker is taken out: no `reattached`, no second boot, no gap;
 * - the process changes each time, the API stays on the same address;
 * - the stream in Redis keeps its owner and epoch and holds every byte;
 * - a console viewer closed with 1012 at each upgrade resumes by offset and gets
 *   every byte exactly once.
 * And a successor that throws at start leaves the old process serving and capturing.
 *
 * About 580 lines on purpose: the QEMU guests are booted once and shared by every case
 * (a TCG boot costs seconds on two cores).
 */
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { readFile, writeFile } from 'node:fs/promises';
import { createServer, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import type { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MARKER_REGEX } from '../../common/marker.js';
import type { GuestStatus } from '../../sidecar/guest.js';
import { SharedLog } from '../../store/replication/shared-log.js';
import { ConsoleViewer } from '../support/console-viewer.js';
import {
  CONSOLECTL_BIN,
  type DaemonHandle,
  pidAlive,
  REPO_ROOT,
  readLog,
  startDaemon,
  stopAllDaemons,
} from '../support/daemon.js';
import { freePort } from '../support/free-port.js';
import { type QemuGuest, qemuAvailable, startQemuGuest } from '../support/qemu-guest.js';
import { type RedisHandle, startRedis, stopAllRedis } from '../support/redis-server.js';
import { readStream, replicationConfig, waitReplicated } from '../support/replication.js';
import { removeTmpDirs, tmpDir } from '../support/tmp.js';
import { sleep, waitFor } from '../support/wait.js';

const qemu = qemuAvailable();
if (!qemu.ok) console.warn(`skipping the upgrade tests: ${qemu.reason}`);

/** Three TCG boots at once, beside the rest of the suite on two cores. */
const BOOT_TIMEOUT_MS = 180_000;
const STEP_TIMEOUT_MS = 30_000;
const UPGRADES = 3;

interface UpgradeAnswer {
  fromPid: number;
  toPid: number;
  fromVersion: string;
  toVersion: string;
  wallMs: number;
  guests: number;
}

function markersOf(bytes: Buffer): string[] {
  return [...bytes.toString('latin1').matchAll(MARKER_REGEX)].map((m) =>
    m[0].slice('\r\n[consoled] '.length, -2),
  );
}

function withoutMarkers(bytes: Buffer): string {
  return bytes.toString('latin1').replace(MARKER_REGEX, '');
}

/** Pids of successors this file started (the harness only knows the first process). */
const successors = new Set<number>();

async function killSuccessors(): Promise<void> {
  for (const pid of successors) {
    if (!pidAlive(pid)) continue;
    process.kill(pid, 'SIGTERM');
    await waitFor(`successor ${pid} to exit`, () => !pidAlive(pid), { timeoutMs: 20_000 }).catch(() =>
      process.kill(pid, 'SIGKILL'),
    );
  }
}

afterAll(async () => {
  await killSuccessors();
  await stopAllDaemons();
  await stopAllRedis();
  await removeTmpDirs();
});

describe.skipIf(!qemu.ok)(
  `upgrading consoled under QEMU guests${qemu.ok ? '' : ` (skipped: ${qemu.reason})`}`,
  () => {
    let daemon: DaemonHandle;
    let redis: RedisHandle;
    let client: Redis;
    const guests: QemuGuest[] = [];
    const logfiles = new Map<string, string>();

    afterAll(async () => {
      await Promise.all(guests.map((g) => g.kill()));
    });

    function status(id: string): Promise<GuestStatus> {
      return daemon.json<GuestStatus>('GET', `/v1/guests/${id}`);
    }

    beforeAll(async () => {
      redis = await startRedis();
      client = redis.client();
      daemon = await startDaemon({
        // The writer's reservation outlasts a reconnect on a loaded machine (the default is 5 s).
        config: {
          ...replicationConfig('upgrade-host', { url: redis.url }),
          console: { writerReservationMs: 60_000 },
        },
      });
    }, 60_000);

    it(
      'hands three guests over three times: no byte lost or doubled, no marker, same owner and epoch',
      async () => {
        const dir = tmpDir('qemu-logs');
        // tcp: QEMU serves, consoled dials.
        const tcpPort = await freePort();
        logfiles.set('up-tcp', join(dir, 'tcp.log'));
        guests.push(
          await startQemuGuest({
            mode: 'counter',
            hz: 50,
            serial: { kind: 'tcp-server', port: tcpPort },
            logfile: logfiles.get('up-tcp')!,
            paused: true,
          }),
        );
        await daemon.json('PUT', '/v1/guests/up-tcp', {
          source: { type: 'tcp', host: '127.0.0.1', port: tcpPort },
        });
        // tcp-listen: consoled listens, QEMU dials.
        const listenPort = await freePort();
        await daemon.json('PUT', '/v1/guests/up-listen', {
          source: { type: 'tcp-listen', host: '127.0.0.1', port: listenPort },
        });
        await waitFor('up-listen listening', async () => (await status('up-listen')).state === 'listening', {
          timeoutMs: STEP_TIMEOUT_MS,
        });
        logfiles.set('up-listen', join(dir, 'listen.log'));
        guests.push(
          await startQemuGuest({
            mode: 'counter',
            hz: 50,
            serial: { kind: 'tcp-client', port: listenPort },
            logfile: logfiles.get('up-listen')!,
            paused: true,
          }),
        );
        // pty: QEMU allocates it, consoled opens the slave.
        logfiles.set('up-pty', join(dir, 'pty.log'));
        const ptyGuest = await startQemuGuest({
          mode: 'counter',
          hz: 50,
          serial: { kind: 'pty' },
          logfile: logfiles.get('up-pty')!,
          paused: true,
        });
        guests.push(ptyGuest);
        await daemon.json('PUT', '/v1/guests/up-pty', { source: { type: 'pty', path: ptyGuest.ptyPath } });

        for (const id of logfiles.keys()) {
          await waitFor(`${id} connected`, async () => (await status(id)).state === 'connected', {
            timeoutMs: STEP_TIMEOUT_MS,
          });
        }
        // Only now do the guests run: QEMU drops what a wait=off chardev emits with nobody connected.
        for (const g of guests) await g.qmp.execute('cont');
        await waitFor(
          'every guest printing',
          async () => {
            for (const id of logfiles.keys()) {
              const read = await readLog(daemon, id, { start: 0 });
              if (!/counter 5\r?\n/.test(read.bytes.toString('latin1'))) return false;
            }
            return true;
          },
          { timeoutMs: BOOT_TIMEOUT_MS, intervalMs: 200 },
        ).catch(async (err: unknown) => {
          // Say which guest is not printing, and what it and QEMU have so far (a CI run
          // under heavy load once timed out here).
          const lines: string[] = [];
          for (const [id, file] of logfiles) {
            const read = await readLog(daemon, id, { start: 0 }).catch(() => null);
            const st = await status(id).catch(() => null);
            const qemu = await readFile(file, 'latin1').catch(() => '(no QEMU log)');
            lines.push(
              `${id}: state ${st?.state} (${st?.stateReason}), chardev ${JSON.stringify(st?.chardev)}, ` +
                `log tail ${JSON.stringify(read?.bytes.toString('latin1').slice(-200))}, ` +
                `QEMU log tail ${JSON.stringify(qemu.slice(-200))}`,
            );
          }
          throw new Error(`${(err as Error).message}\n${lines.join('\n')}`);
        });
        await waitFor('up-tcp owned', async () => (await status('up-tcp'))['replication'] !== undefined, {
          timeoutMs: STEP_TIMEOUT_MS,
        });
        await waitReplicated(daemon, 'up-tcp');
        const ownerBefore = await new SharedLog(client).owner('up-tcp');
        expect(ownerBefore.host).toBe('upgrade-host');
        expect(ownerBefore.epoch).toBeGreaterThan(0);

        // A viewer of up-tcp from the first byte, resumed by offset after each 1012.
        const received: Buffer[] = [];
        // A viewer of up-tcp from the first byte, holding the writer lock (the admin token is named `admin`).
        let viewer = await ConsoleViewer.connect(daemon.url, 'up-tcp', {
          token: daemon.token,
          from: 0,
          mode: 'rw',
        });
        const writerOf = async () =>
          ((await status('up-tcp'))['console'] as { writer: { viewerId: string } | null }).writer?.viewerId;
        await waitFor(
          'the viewer to hold the lock',
          async () => (await writerOf()) === viewer.welcome?.['viewerId'],
        );
        const closes: number[] = [];
        const collect = async (v: ConsoleViewer): Promise<number> => {
          const closed = await v.closed;
          closes.push(closed.code);
          for (const segment of v.segments) received.push(...segment.bytes);
          return v.next;
        };

        // Another operator's rw token: during the reservation it must not get the lock.
        const { token: otherToken } = await daemon.json<{ token: string }>(
          'POST',
          '/v1/guests/up-tcp/tokens',
          {
            mode: 'rw',
            ttl: '1h',
            name: 'other-operator',
          },
        );
        const pids = [daemon.proc.pid!];
        for (let i = 0; i < UPGRADES; i++) {
          await sleep(700); // the guests print on meanwhile
          const closing = collect(viewer);
          const answer = await daemon.json<UpgradeAnswer>('POST', '/v1/upgrade', undefined, 200);
          successors.add(answer.toPid);
          expect(answer.fromPid).toBe(pids[pids.length - 1]);
          expect(answer.toPid).not.toBe(answer.fromPid);
          expect(answer.guests).toBe(3);
          pids.push(answer.toPid);
          await waitFor(`old process ${answer.fromPid} to exit`, () => !pidAlive(answer.fromPid), {
            timeoutMs: STEP_TIMEOUT_MS,
          });
          const resumeAt = await closing;
          if (i === 0) {
            const other = await waitFor(
              'the other operator to connect',
              () =>
                ConsoleViewer.connect(daemon.url, 'up-tcp', { token: otherToken, mode: 'rw' }).catch(
                  () => undefined,
                ),
              { timeoutMs: STEP_TIMEOUT_MS, intervalMs: 100 },
            );
            expect(other.welcome?.['writer']).toBeNull();
            expect(await writerOf()).toBeUndefined(); // kept for `admin`, not given to `other-operator`
            other.ws.close();
            await other.closed;
          }
          viewer = await waitFor(
            'the viewer to reconnect',
            () =>
              ConsoleViewer.connect(daemon.url, 'up-tcp', {
                token: daemon.token,
                from: resumeAt,
                mode: 'rw',
              }).catch(() => undefined),
            { timeoutMs: STEP_TIMEOUT_MS, intervalMs: 100 },
          );
          // The lock was kept for its name across the upgrade, and it has it again.
          const current = viewer;
          await waitFor(
            'the writer lock back',
            async () => (await writerOf()) === current.welcome?.['viewerId'],
          );
        }
        expect(new Set(pids).size).toBe(UPGRADES + 1);
        expect(closes).toEqual([1012, 1012, 1012]);
        await sleep(700);

        // Stop the guests and let everything settle.
        for (const g of guests) await g.qmp.execute('stop');
        for (const id of logfiles.keys()) {
          await waitFor(
            `${id}'s capture to match QEMU's logfile`,
            async () => {
              const qemuLog = await readFile(logfiles.get(id)!, 'latin1');
              const s = await status(id);
              return s.flushedOffset === s.offset &&
                (await readLog(daemon, id, { start: 0 })).bytes.length > 0
                ? withoutMarkers((await readLog(daemon, id, { start: 0 })).bytes) === qemuLog
                : false;
            },
            { timeoutMs: STEP_TIMEOUT_MS, intervalMs: 200 },
          ).catch(() => undefined);
          const captured = (await readLog(daemon, id, { start: 0 })).bytes;
          const qemuLog = await readFile(logfiles.get(id)!, 'latin1');
          expect(markersOf(captured).map((m) => m.replace(/ at .*/, ''))).toEqual(['boot 1 started']);
          const tail = (t: string) => t.slice(-40);
          expect(
            withoutMarkers(captured).length,
            `${id}: ${JSON.stringify({ captured: tail(withoutMarkers(captured)), qemu: tail(qemuLog), status: await status(id) })}`,
          ).toBe(qemuLog.length);
          expect(withoutMarkers(captured) === qemuLog, `${id}: capture equals QEMU's logfile`).toBe(true);
          const s = await status(id);
          expect(s.boot).toBe(1);
          expect(s.offset).toBe(captured.length); // offsets continue: nothing reset, nothing skipped
          const counters = [...withoutMarkers(captured).matchAll(/counter (\d+)\r?\n/g)].map((m) =>
            Number(m[1]),
          );
          expect(counters.length).toBeGreaterThan(50);
          expect(counters.every((n, k) => k === 0 || n === counters[k - 1]! + 1)).toBe(true);
        }

        // The viewer got every byte exactly once.
        viewer.ws.close();
        await collect(viewer);
        const wholeLog = (await readLog(daemon, 'up-tcp', { start: 0 })).bytes;
        const seen = Buffer.concat(received);
        expect(seen.length).toBe(wholeLog.length);
        expect(seen.equals(wholeLog)).toBe(true);

        // Redis: same owner, same epoch, every byte.
        await waitReplicated(daemon, 'up-tcp');
        const ownerAfter = await new SharedLog(client).owner('up-tcp');
        expect({ host: ownerAfter.host, epoch: ownerAfter.epoch }).toEqual({
          host: ownerBefore.host,
          epoch: ownerBefore.epoch,
        });
        const stream = await readStream(client, 'up-tcp');
        expect(stream.oldest).toBe(0);
        expect(stream.bytes.equals(wholeLog)).toBe(true);
        expect(new Set(stream.entries.map((e) => e.epoch))).toEqual(new Set([ownerBefore.epoch]));

        // The daemon's own log has the `upgraded` lines; the guests' logs do not.
        expect(daemon.logs().match(/"msg":"upgraded"/g)?.length).toBe(2 * UPGRADES);
      },
      BOOT_TIMEOUT_MS + 240_000,
    );
  },
);

/** A chardev like QEMU's: a numbered line (`next()`) every 20 ms to whoever is connected. */
async function counterChardev(peers: Set<Socket>, next: () => number): Promise<Server> {
  const server = createServer((socket) => {
    peers.add(socket);
    socket.on('error', () => undefined);
    const timer = setInterval(() => socket.write(`counter ${next()}\r\n`), 20);
    socket.on('close', () => clearInterval(timer));
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return server;
}

describe('a failed upgrade', () => {
  let chardev: Server;
  let written = 0;
  const peers = new Set<Socket>();

  afterAll(async () => {
    for (const s of peers) s.destroy();
    chardev?.close();
  });

  it('leaves the old process serving and capturing, and says why', async () => {
    chardev = await counterChardev(peers, () => ++written);
    const port = (chardev.address() as { port: number }).port;
    const broken = join(tmpDir('broken-build'), 'consoled.js');
    await writeFile(broken, "throw new Error('a broken build');\n");
    const daemon = await startDaemon({
      env: { CONSOLED_SUCCESSOR_COMMAND: JSON.stringify([process.execPath, broken]) },
    });
    await daemon.json('PUT', '/v1/guests/up-failed', { source: { type: 'tcp', host: '127.0.0.1', port } });
    await waitFor(
      'some output',
      async () => (await readLog(daemon, 'up-failed', { start: 0 })).bytes.length > 500,
      {
        timeoutMs: STEP_TIMEOUT_MS,
      },
    );
    const res = await daemon.api('POST', '/v1/upgrade');
    const body = (await res.json()) as { error: { code: string; message: string } };
    expect(res.status).toBe(500);
    expect(body.error.code).toBe('UPGRADE_FAILED');
    expect(body.error.message).toMatch(/exit code 1/);
    expect(daemon.running).toBe(true);
    const before = written;
    await waitFor('capture to go on', () => written > before + 25, { timeoutMs: STEP_TIMEOUT_MS });
    const status = await daemon.json<GuestStatus>('GET', '/v1/guests/up-failed');
    expect(status.state).toBe('connected');
    expect(peers.size).toBe(1); // the first connection, adopted back: no reconnect
    await waitFor(
      'the log to catch up',
      async () =>
        withoutMarkers((await readLog(daemon, 'up-failed', { start: 0 })).bytes).includes(
          `counter ${before + 20}\r\n`,
        ),
      { timeoutMs: STEP_TIMEOUT_MS },
    );
    const captured = (await readLog(daemon, 'up-failed', { start: 0 })).bytes;
    expect(markersOf(captured).map((m) => m.replace(/ at .*/, ''))).toEqual(['boot 1 started']);
    const counters = [...withoutMarkers(captured).matchAll(/counter (\d+)\r\n/g)].map((m) => Number(m[1]));
    expect(counters[0]).toBe(1);
    expect(counters.every((n, k) => k === 0 || n === counters[k - 1]! + 1)).toBe(true);
    // And it can still be upgraded afterwards (the failed attempt left nothing behind).
    expect(daemon.logs()).toMatch(/upgrade failed; taking the guests back/);
  }, 60_000);
});

describe('consolectl console across an upgrade', () => {
  let chardev: Server;
  let written = 0;
  const peers = new Set<Socket>();

  afterAll(async () => {
    for (const s of peers) s.destroy();
    chardev?.close();
  });

  it('resumes by offset after the 1012: every line once, and the writer lock back', async () => {
    chardev = await counterChardev(peers, () => ++written);
    const port = (chardev.address() as { port: number }).port;
    const daemon = await startDaemon({
      config: {
        defaults: { rateLimit: { bytesPerSec: 0, burstBytes: 1 } },
        console: { writerReservationMs: 60_000 },
      },
    });
    await daemon.json('PUT', '/v1/guests/up-cli', { source: { type: 'tcp', host: '127.0.0.1', port } });
    const child = spawn(
      process.execPath,
      [CONSOLECTL_BIN, '--url', daemon.url, '--token', daemon.token, 'console', 'up-cli'],
      { cwd: REPO_ROOT, stdio: ['pipe', 'pipe', 'pipe'] },
    );
    let out = '';
    let err = '';
    child.stdout.on('data', (c: Buffer) => (out += c.toString('latin1')));
    child.stderr.on('data', (c: Buffer) => (err += c.toString('utf8')));
    try {
      await waitFor('the console to connect', () => err.includes('you hold the writer lock'), {
        timeoutMs: STEP_TIMEOUT_MS,
      });
      await sleep(500);
      const answer = await daemon.json<UpgradeAnswer>('POST', '/v1/upgrade', undefined, 200);
      successors.add(answer.toPid);
      await waitFor(
        'the console to resume with the lock',
        () => (err.match(/you hold the writer lock/g)?.length ?? 0) >= 2,
        { timeoutMs: STEP_TIMEOUT_MS },
      );
      const atResume = written;
      await waitFor('output after the upgrade', () => out.includes(`counter ${atResume + 20}\r\n`), {
        timeoutMs: STEP_TIMEOUT_MS,
      });
      const counters = [...out.matchAll(/counter (\d+)\r\n/g)].map((m) => Number(m[1]));
      expect(counters.length).toBeGreaterThan(40);
      expect(counters.every((n, k) => k === 0 || n === counters[k - 1]! + 1)).toBe(true);
      expect(err).toMatch(/UPGRADING|SERVICE_RESTART/);
    } finally {
      child.stdin.write('\x1d');
      await once(child, 'exit');
    }
  }, 60_000);
});

describe('an exec source across an upgrade', () => {
  it('starts its program again in the successor, under a `restarted … (upgrade)` marker', async () => {
    const daemon = await startDaemon({
      config: { defaults: { rateLimit: { bytesPerSec: 0, burstBytes: 1 } } },
    });
    await daemon.json('PUT', '/v1/guests/up-exec', {
      source: { type: 'exec', command: ['/bin/sh', '-c', 'echo "run $$"; exec sleep 600'] },
    });
    await waitFor('the first run', async () =>
      /run \d+/.test((await readLog(daemon, 'up-exec', { start: 0 })).bytes.toString('latin1')),
    );
    const answer = await daemon.json<UpgradeAnswer>('POST', '/v1/upgrade', undefined, 200);
    successors.add(answer.toPid);
    const log = await waitFor(
      'the second run',
      async () => {
        const text = (await readLog(daemon, 'up-exec', { start: 0 })).bytes.toString('latin1');
        return (text.match(/run \d+/g)?.length ?? 0) >= 2 ? text : undefined;
      },
      { timeoutMs: STEP_TIMEOUT_MS },
    );
    expect(markersOf(Buffer.from(log, 'latin1')).map((m) => m.replace(/ at \S+/, ''))).toEqual([
      'boot 1 started',
      'restarted (upgrade)',
    ]);
    const status = await daemon.json<GuestStatus>('GET', '/v1/guests/up-exec');
    expect(status.boot).toBe(1);
  }, 60_000);
});

describe('unix sockets across an upgrade', () => {
  const sockets = new Set<Socket>();
  let server: Server | null = null;

  afterAll(() => {
    for (const s of sockets) s.destroy();
    server?.close();
  });

  it('hands over a dialled unix chardev and a listening one: nothing lost, the socket file stays', async () => {
    const dir = tmpDir('unix-chardevs');
    const served = join(dir, 'served.sock'); // the guest serves (`unix`)
    const listened = join(dir, 'listened.sock'); // consoled listens (`unix-listen`)
    let servedCount = 0;
    server = createServer((socket) => {
      sockets.add(socket);
      socket.on('error', () => undefined);
      const timer = setInterval(() => socket.write(`counter ${++servedCount}\r\n`), 20);
      socket.on('close', () => clearInterval(timer));
    });
    server.listen(served);
    await once(server, 'listening');
    const daemon = await startDaemon({
      config: { defaults: { rateLimit: { bytesPerSec: 0, burstBytes: 1 } } },
    });
    await daemon.json('PUT', '/v1/guests/up-unix', { source: { type: 'unix', path: served } });
    await daemon.json('PUT', '/v1/guests/up-unix-listen', {
      source: { type: 'unix-listen', path: listened },
    });
    await waitFor(
      'the listening socket',
      async () => (await daemon.json<GuestStatus>('GET', '/v1/guests/up-unix-listen')).state === 'listening',
    );
    // The guest dials consoled, as QEMU's `server=off` chardev does.
    const { connect } = await import('node:net');
    const client = connect({ path: listened });
    sockets.add(client);
    client.on('error', () => undefined);
    let dialledCount = 0;
    await once(client, 'connect');
    const timer = setInterval(() => client.write(`counter ${++dialledCount}\r\n`), 20);
    try {
      await sleep(500);
      const answer = await daemon.json<UpgradeAnswer>('POST', '/v1/upgrade', undefined, 200);
      successors.add(answer.toPid);
      await sleep(500);
      const upgradedOnce = await daemon.json<UpgradeAnswer>('POST', '/v1/upgrade', undefined, 200);
      successors.add(upgradedOnce.toPid);
      await sleep(500);
    } finally {
      clearInterval(timer);
    }
    const lastServed = servedCount;
    await waitFor(
      'both logs to catch up',
      async () =>
        withoutMarkers((await readLog(daemon, 'up-unix', { start: 0 })).bytes).includes(
          `counter ${lastServed - 5}\r\n`,
        ) &&
        withoutMarkers((await readLog(daemon, 'up-unix-listen', { start: 0 })).bytes).includes(
          `counter ${dialledCount}\r\n`,
        ),
      { timeoutMs: STEP_TIMEOUT_MS },
    );
    for (const id of ['up-unix', 'up-unix-listen']) {
      const captured = (await readLog(daemon, id, { start: 0 })).bytes;
      expect(markersOf(captured).map((m) => m.replace(/ at .*/, ''))).toEqual(['boot 1 started']);
      const counters = [...withoutMarkers(captured).matchAll(/counter (\d+)\r\n/g)].map((m) => Number(m[1]));
      expect(counters[0]).toBe(1);
      expect(
        counters.every((n, k) => k === 0 || n === counters[k - 1]! + 1),
        id,
      ).toBe(true);
    }
    expect(sockets.size).toBe(2); // no reconnect on either side
    // The socket file is still there and still the daemon's: a new guest connection is accepted.
    client.destroy();
    await waitFor(
      'the guest gone',
      async () => (await daemon.json<GuestStatus>('GET', '/v1/guests/up-unix-listen')).state === 'listening',
    );
    const again = connect({ path: listened });
    again.on('error', () => undefined);
    await once(again, 'connect');
    again.write('counter again\r\n');
    await waitFor('the new connection captured', async () =>
      withoutMarkers((await readLog(daemon, 'up-unix-listen', { start: 0 })).bytes).includes('counter again'),
    );
    again.destroy();
  }, 60_000);
});
