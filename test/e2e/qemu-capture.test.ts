/**
 * The built daemon against real QEMU guests (TCG): what consoled captures from a
 * `-chardev socket,server=on,wait=off,logfile=FILE` serial port is byte for byte what
 * QEMU wrote to its own logfile, once consoled's markers are taken out; a new QEMU
 * process on the same port (nova's reboot) starts boot 2 while boot 1 stays readable;
 * a restart of the daemon is a reattach, not a boot; and a guest that went away while
 * the daemon was down still gets a new boot when it comes back.
 *
 * The four tests are one scenario, in order, so that it costs two guest boots: test 2
 * reboots the guest of test 1, test 3 restarts the daemon under the guest of test 2,
 * test 4 kills that guest, restarts the daemon, and starts a third QEMU (never run).
 *
 * QEMU drops the output of a `wait=off` server chardev while no client is connected (the
 * logfile still gets it), so each guest starts paused (`-S`) and runs (`cont`) only once
 * consoled is connected; and the daemon is restarted while the guest sits idle at its
 * prompt, so that nothing is emitted while no one listens.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { MARKER_REGEX } from '../../common/marker.js';
import type { GuestStatus } from '../../sidecar/guest.js';
import { ConsoleViewer } from '../support/console-viewer.js';
import { type DaemonHandle, type LogRead, readLog, startDaemon, stopAllDaemons } from '../support/daemon.js';
import { freePort } from '../support/free-port.js';
import {
  GUEST_BANNER,
  GUEST_PROMPT,
  type QemuGuest,
  type QemuGuestOptions,
  qemuAvailable,
  startQemuGuest,
} from '../support/qemu-guest.js';
import { removeTmpDirs, tmpDir } from '../support/tmp.js';
import { waitFor } from '../support/wait.js';

const qemu = qemuAvailable();
if (!qemu.ok) console.warn(`skipping the QEMU capture tests: ${qemu.reason}`);

const GUEST_ID = 'qemu-capture-guest';

/** A TCG boot takes 3 to 5 s on an idle 2-core host, much longer on a busy one. */
const BOOT_TIMEOUT_MS = 90_000;
/** Anything else the guest or the daemon is waited for (a command's output, a reconnect). */
const STEP_TIMEOUT_MS = 30_000;
const TEST_TIMEOUT_MS = 180_000;

/** Busybox's line editor follows each prompt with "where is the cursor?" (ESC [ 6 n). */
const IDLE_PROMPT = `${GUEST_PROMPT}\x1b[6n`;

/** Every framed marker, without its frame: `boot 1 started at …`. */
function markersOf(bytes: Buffer): string[] {
  return [...bytes.toString('latin1').matchAll(MARKER_REGEX)].map((m) =>
    m[0].slice('\r\n[consoled] '.length, -2),
  );
}

/** The guest's own bytes: the log with consoled's markers removed (latin1 keeps every byte). */
function withoutMarkers(bytes: Buffer): string {
  return bytes.toString('latin1').replace(MARKER_REGEX, '');
}

describe.skipIf(!qemu.ok)(
  `consoled capturing a QEMU guest${qemu.ok ? '' : ` (skipped: ${qemu.reason})`}`,
  () => {
    let daemon: DaemonHandle;
    let port: number;
    const guests: QemuGuest[] = [];
    const viewers: ConsoleViewer[] = [];
    /** What the scenario hands from one test to the next. */
    const scenario: {
      firstLogfile?: string;
      firstBoot?: LogRead;
      second?: QemuGuest;
      secondLogfile?: string;
    } = {};

    function status(): Promise<GuestStatus> {
      return daemon.json<GuestStatus>('GET', `/v1/guests/${GUEST_ID}`);
    }

    function log(query: Record<string, string | number>): Promise<LogRead> {
      return readLog(daemon, GUEST_ID, query);
    }

    /** A guest on the shared port, started paused; `cont` runs it. */
    async function startGuest(logfile: string): Promise<QemuGuest> {
      const options: QemuGuestOptions = {
        mode: 'shell',
        serial: { kind: 'tcp-server', port },
        logfile,
        paused: true,
      };
      const guest = await startQemuGuest(options);
      guests.push(guest);
      return guest;
    }

    async function waitForStatus(
      what: string,
      test: (s: GuestStatus) => boolean,
      timeoutMs = STEP_TIMEOUT_MS,
    ): Promise<GuestStatus> {
      return waitFor(
        what,
        async () => {
          const s = await status();
          return test(s) ? s : undefined;
        },
        { timeoutMs, intervalMs: 50 },
      );
    }

    /** Waits until the current boot's log (flushed, readable) contains `text`. */
    function waitForLogText(text: string, timeoutMs = STEP_TIMEOUT_MS): Promise<LogRead> {
      return waitFor(
        `${JSON.stringify(text)} in the log of the current boot`,
        async () => {
          const read = await log({ boot: 'current', start: 0 });
          return read.bytes.toString('latin1').includes(text) ? read : undefined;
        },
        { timeoutMs, intervalMs: 50 },
      );
    }

    /** Types `line` through the console WebSocket, as the writer (the admin token grants rw). */
    async function type(line: string): Promise<void> {
      const viewer = await ConsoleViewer.connect(daemon.url, GUEST_ID, { token: daemon.token, mode: 'rw' });
      viewers.push(viewer);
      viewer.keys(line);
    }

    beforeAll(async () => {
      port = await freePort();
      daemon = await startDaemon({
        // Rate limit off: the comparison is byte for byte, and a boot is a burst.
        config: { defaults: { rateLimit: { bytesPerSec: 0, burstBytes: 4 * 1024 * 1024 } } },
      });
    });

    afterEach(async () => {
      await Promise.all(viewers.splice(0).map((v) => v.close()));
    });

    afterAll(async () => {
      await Promise.all(viewers.splice(0).map((v) => v.close()));
      await Promise.all(guests.splice(0).map((g) => g.kill()));
      await stopAllDaemons();
      await removeTmpDirs();
    });

    it(
      'captures boot 1 byte for byte as QEMU logs it, typed command included, up to a SIGKILL',
      async () => {
        const logfile = join(tmpDir('qemu-capture'), 'console-1.log');
        const guest = await startGuest(logfile);
        await daemon.json(
          'PUT',
          `/v1/guests/${GUEST_ID}`,
          { source: { type: 'tcp', host: '127.0.0.1', port } },
          201,
        );
        await waitForStatus(
          'consoled connected to the chardev, boot 1',
          (s) => s.state === 'connected' && s.boot === 1,
        );
        await guest.qmp.execute('cont');

        await waitForLogText(IDLE_PROMPT, BOOT_TIMEOUT_MS);
        await type('echo hello-$((6*7))\r');
        // The echo of the keystrokes shows `$((6*7))`; only the shell's output shows 42.
        await waitForLogText(`\r\nhello-42\r\n${IDLE_PROMPT}`);

        // The guest is idle at its prompt: everything it emitted is on the socket and in the logfile.
        await guest.kill('SIGKILL');
        const closed = await waitForStatus(
          'consoled to see the chardev close and flush',
          (s) => s.state !== 'connected' && s.flushedOffset === s.offset,
        );
        expect(closed.boot).toBe(1);

        const boot1 = await log({ boot: 1, start: 0 });
        const logged = await readFile(logfile);
        expect(logged.toString('latin1')).toContain(`${GUEST_BANNER} mode=shell\r\n`);
        expect(boot1.start).toBe(0);
        expect(boot1.next).toBe(closed.offset);
        expect(markersOf(boot1.bytes)).toEqual([expect.stringMatching(/^boot 1 started at /)]);
        expect(boot1.bytes.toString('latin1').startsWith('\r\n[consoled] boot 1 started at ')).toBe(true);
        const guestBytes = withoutMarkers(boot1.bytes);
        expect(guestBytes.length).toBe(logged.length);
        expect(guestBytes).toBe(logged.toString('latin1'));

        scenario.firstLogfile = logfile;
        scenario.firstBoot = boot1;
      },
      TEST_TIMEOUT_MS,
    );

    it(
      'starts boot 2 when a new QEMU serves the same port (a nova reboot); boot 1 stays readable as previous',
      async () => {
        const { firstLogfile, firstBoot } = scenario;
        if (firstLogfile === undefined || firstBoot === undefined)
          throw new Error('needs the guest of the first test');

        const logfile = join(tmpDir('qemu-capture'), 'console-2.log');
        const guest = await startGuest(logfile);
        const reconnected = await waitForStatus(
          'consoled reconnected, boot 2',
          (s) => s.state === 'connected' && s.boot === 2,
        );
        // The boot starts where boot 1 ended: nothing between the two.
        expect(reconnected.offset).toBeGreaterThan(firstBoot.next);
        await guest.qmp.execute('cont');
        await waitForLogText(IDLE_PROMPT, BOOT_TIMEOUT_MS);

        // The guest sits at its prompt; once consoled has flushed all of it, the two agree.
        let current = await log({ boot: 'current', start: 0 });
        await waitFor(
          'the log of boot 2 (markers removed) to equal the second logfile',
          async () => {
            current = await log({ boot: 'current', start: 0 });
            return withoutMarkers(current.bytes) === (await readFile(logfile, 'latin1'));
          },
          { timeoutMs: STEP_TIMEOUT_MS, intervalMs: 100 },
        );
        const logged2 = await readFile(logfile);
        expect(logged2.toString('latin1')).toContain(`${GUEST_BANNER} mode=shell\r\n`);
        expect(current.start).toBe(firstBoot.next);
        expect(markersOf(current.bytes)).toEqual([expect.stringMatching(/^boot 2 started at /)]);
        expect(current.bytes.toString('latin1').startsWith('\r\n[consoled] boot 2 started at ')).toBe(true);
        expect(withoutMarkers(current.bytes)).toBe(logged2.toString('latin1'));

        const previous = await log({ boot: 'previous', start: 0 });
        expect(previous.start).toBe(0);
        expect(previous.next).toBe(firstBoot.next);
        expect(previous.bytes.equals(firstBoot.bytes)).toBe(true);
        expect(withoutMarkers(previous.bytes)).toBe(await readFile(firstLogfile, 'latin1'));
        // Boot 1 by number is the same span.
        expect((await log({ boot: 1, start: 0 })).bytes.equals(firstBoot.bytes)).toBe(true);

        const s = await status();
        expect(s.boot).toBe(2);
        scenario.second = guest;
        scenario.secondLogfile = logfile;
      },
      TEST_TIMEOUT_MS,
    );

    it(
      'keeps the boot across a daemon restart (SIGTERM): a reattached marker, offsets continuing',
      async () => {
        const { second, secondLogfile, firstBoot } = scenario;
        if (second === undefined || secondLogfile === undefined || firstBoot === undefined) {
          throw new Error('needs the guest of the second test');
        }
        const before = await status();
        expect(before.state).toBe('connected');
        expect(before.boot).toBe(2);
        await waitForStatus('the log flushed', (s) => s.flushedOffset === s.offset);
        const all0 = await log({ start: 0 });
        const nexts = [all0.next];

        // The guest is idle at its prompt: nothing is emitted while consoled is away.
        expect(await daemon.stop()).toBe(0);
        await daemon.start();
        const after = await waitForStatus(
          'consoled reattached to the chardev',
          (s) => s.state === 'connected',
        );
        expect(after.boot).toBe(2);
        const withMarker = await waitForLogText('\r\n[consoled] reattached at ');
        nexts.push(withMarker.next);

        // The reattach marker sits exactly where the log stopped: no byte lost, none repeated.
        const all1 = await log({ start: 0 });
        nexts.push(all1.next);
        expect(all1.bytes.subarray(0, all0.next).equals(all0.bytes)).toBe(true);
        const markerAt = all1.bytes.toString('latin1').indexOf('\r\n[consoled] reattached at ');
        expect(markerAt).toBe(all0.next);
        expect(markersOf(all1.bytes)).toEqual([
          expect.stringMatching(/^boot 1 started at /),
          expect.stringMatching(/^boot 2 started at /),
          expect.stringMatching(/^reattached at /),
        ]);

        // Boot 2 still starts where it did and still holds only the guest's bytes.
        const current = await log({ boot: 'current', start: 0 });
        expect(current.start).toBe(firstBoot.next);
        expect(withoutMarkers(current.bytes)).toBe(await readFile(secondLogfile, 'latin1'));

        // Capture carries on after the restart: a command typed now is logged like the rest.
        await type('echo again-$((6*7))\r');
        await waitForLogText(`\r\nagain-42\r\n${IDLE_PROMPT}`);
        let final = await log({ boot: 'current', start: 0 });
        await waitFor(
          'the log of boot 2 (markers removed) to equal the second logfile after the restart',
          async () => {
            final = await log({ boot: 'current', start: 0 });
            return withoutMarkers(final.bytes) === (await readFile(secondLogfile, 'latin1'));
          },
          { timeoutMs: STEP_TIMEOUT_MS, intervalMs: 100 },
        );
        nexts.push(final.next);
        expect((await status()).boot).toBe(2);
        expect(final.start).toBe(firstBoot.next);
        expect(nexts.every((n, i) => i === 0 || n >= nexts[i - 1]!)).toBe(true);
        expect(final.next).toBeGreaterThan(all1.next);
      },
      TEST_TIMEOUT_MS,
    );

    it(
      'still starts a boot when the daemon restarts while the guest is down (QEMU gone, next not yet started)',
      async () => {
        const { second } = scenario;
        if (second === undefined) throw new Error('needs the guest of the second test');
        await second.kill('SIGKILL');
        const down = await waitForStatus(
          'consoled to see the chardev close and flush',
          (s) => s.state !== 'connected' && s.flushedOffset === s.offset,
        );
        expect(down.boot).toBe(2);
        expect(await daemon.stop()).toBe(0);
        await daemon.start();
        // Nobody serves the port now: consoled dials and backs off, and the boot is still 2.
        const restarted = await status();
        expect(restarted.boot).toBe(2);
        expect(restarted.state).not.toBe('connected');

        // The guest side closed the chardev before the restart: the next QEMU is boot 3, not a reattach.
        const logfile = join(tmpDir('qemu-capture'), 'console-3.log');
        const third = await startGuest(logfile);
        const up = await waitForStatus(
          'consoled connected to the third QEMU',
          (s) => s.state === 'connected',
        );
        expect(up.boot).toBe(3);
        // The boot marker goes through the write queue: the status can say boot 3 a moment before the log does.
        const all = await waitFor(
          'the boot 3 marker in the log',
          async () => {
            const read = await log({ start: 0 });
            return markersOf(read.bytes).length >= 4 ? read : undefined;
          },
          { timeoutMs: STEP_TIMEOUT_MS, intervalMs: 100 },
        );
        expect(all.start).toBe(0);
        expect(markersOf(all.bytes)).toEqual([
          expect.stringMatching(/^boot 1 started at /),
          expect.stringMatching(/^boot 2 started at /),
          expect.stringMatching(/^reattached at /),
          expect.stringMatching(/^boot 3 started at /),
        ]);
        const boot3 = await log({ boot: 'current', start: 0 });
        expect(boot3.start).toBe(down.offset);
        await third.kill('SIGKILL');
      },
      TEST_TIMEOUT_MS,
    );
  },
);
