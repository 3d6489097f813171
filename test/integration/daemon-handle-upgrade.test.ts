/**
 * The test harness follows an upgrade (docs/design.md "Upgrade"): after
 * `handle.upgrade()` the handle's process is the successor, its API address is the
 * same, its log goes on in `logs()`, and `stop()` ends the successor by pid; a second
 * upgrade and a start after that work as with any handle.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { pidAlive, startDaemon, stopAllDaemons } from '../support/daemon.js';
import { removeTmpDirs } from '../support/tmp.js';
import { waitFor } from '../support/wait.js';

afterAll(async () => {
  await stopAllDaemons();
  await removeTmpDirs();
});

describe('a daemon handle across upgrades', () => {
  it('adopts the successor: pid, running, logs, stop and start', async () => {
    const daemon = await startDaemon();
    const url = daemon.url;
    const first = daemon.pid;
    expect(first).toBe(daemon.proc.pid);

    const once = await daemon.upgrade();
    expect(once.fromPid).toBe(first);
    expect(daemon.pid).toBe(once.toPid);
    expect(pidAlive(first)).toBe(false);
    expect(daemon.running).toBe(true);
    expect(daemon.url).toBe(url);
    expect((await fetch(`${url}/healthz`)).status).toBe(200);

    const twice = await daemon.upgrade();
    expect(twice.fromPid).toBe(once.toPid);
    expect(daemon.pid).toBe(twice.toPid);
    expect(pidAlive(once.toPid)).toBe(false);
    // Both processes of each upgrade said `upgraded`, on the pipes the first one was given
    // (the successor says it once it took over, which may be just after the answer).
    await waitFor('four upgraded lines', () => daemon.logs().match(/"msg":"upgraded"/g)?.length === 4);
    expect(daemon.logs().match(/"msg":"upgraded"/g)?.length).toBe(4);

    expect(await daemon.stop()).toBeNull(); // not this process's child: no exit code
    expect(pidAlive(twice.toPid)).toBe(false);
    expect(daemon.running).toBe(false);

    await daemon.start();
    expect(daemon.pid).toBe(daemon.proc.pid);
    expect(daemon.running).toBe(true);
    await daemon.kill();
    expect(daemon.running).toBe(false);
  }, 60_000);
});
