/**
 * Reconnect storms against the built daemon: an `exec` program that exits at once
 * (`/bin/true`) and a TCP peer that accepts and closes at once. Neither resets the
 * backoff nor starts boots: over a window of more than 2 s the connections stay
 * within what the backoff allows and the boot number does not move; the guest is
 * flagged in status and metrics. A real guest after the storm (a connection that
 * sends) ends it with a new boot, and its restart still reconnects and boots.
 */
import { createServer, type Server } from 'node:net';
import { afterAll, describe, expect, it } from 'vitest';
import {
  closeAllPeers,
  type DaemonHandle,
  readWholeLog,
  SocketPeer,
  startDaemon,
  stopAllDaemons,
} from '../support/daemon.js';
import { removeTmpDirs } from '../support/tmp.js';
import { sleep, waitFor } from '../support/wait.js';

/** The test daemon's backoff (support/daemon.ts) and Source's storm threshold. */
const INITIAL_DELAY_MS = 20;
const MAX_DELAY_MS = 200;
const STORM_CLOSES = 3;
const WINDOW_MS = 2500;

interface StormStatus {
  state: string;
  boot: number;
  chardev: { connects: number; quickCloses: number };
  reconnectStorm: { active: boolean; closesInRow: number };
}

let d: DaemonHandle;
const servers: Server[] = [];

afterAll(async () => {
  for (const s of servers) s.close();
  await stopAllDaemons();
  await closeAllPeers();
  await removeTmpDirs();
});

function status(id: string): Promise<StormStatus> {
  return d.json<StormStatus>('GET', `/v1/guests/${id}`);
}

/**
 * Most connections a storm can make in `windowMs` once flagged: by then the backoff
 * has doubled at least STORM_CLOSES times, and a delay is at least half its base.
 */
function maxConnects(windowMs: number): number {
  const base = Math.min(MAX_DELAY_MS, INITIAL_DELAY_MS * 2 ** STORM_CLOSES);
  return Math.ceil(windowMs / (base / 2)) + 1;
}

/** Waits for the storm flag, then counts connections and boots over WINDOW_MS. */
async function measureStorm(id: string): Promise<{ connects: number; boots: number; status: StormStatus }> {
  const first = await waitFor(`${id} flagged as a storm`, async () => {
    const s = await status(id);
    return s.reconnectStorm.active ? s : undefined;
  });
  const t0 = performance.now();
  await sleep(WINDOW_MS);
  const last = await status(id);
  const elapsed = performance.now() - t0;
  expect(elapsed).toBeGreaterThanOrEqual(WINDOW_MS);
  return {
    connects: last.chardev.connects - first.chardev.connects,
    boots: last.boot - first.boot,
    status: last,
  };
}

async function metric(name: string, id: string): Promise<number> {
  const text = await (await d.api('GET', '/metrics')).text();
  const line = text.split('\n').find((l) => l.startsWith(`${name}{guest="${id}"}`));
  if (!line) throw new Error(`no ${name} for ${id} in /metrics`);
  return Number(line.split(' ').pop());
}

describe('reconnect storms', () => {
  it('exec /bin/true: backs off, starts no boots, and is flagged in status and metrics', async () => {
    d = await startDaemon();
    await d.json('PUT', '/v1/guests/true', { source: { type: 'exec', command: ['/bin/true'] } }, 201);
    const { connects, boots, status: s } = await measureStorm('true');
    expect(boots).toBe(0);
    expect(s.boot).toBeLessThanOrEqual(1); // the first run of an empty log is boot 1, no more
    expect(connects).toBeGreaterThan(0); // it does keep trying
    expect(connects).toBeLessThanOrEqual(maxConnects(WINDOW_MS));
    expect(s.chardev.quickCloses).toBeGreaterThanOrEqual(STORM_CLOSES);
    expect(await metric('consoled_guest_reconnect_storm', 'true')).toBe(1);
    expect(await metric('consoled_guest_quick_closes_total', 'true')).toBeGreaterThanOrEqual(STORM_CLOSES);
    // Nothing but the first boot's marker was written.
    const log = (await readWholeLog(d, 'true')).bytes.toString('latin1');
    expect(log.match(/\[consoled\]/g)?.length ?? 0).toBeLessThanOrEqual(1);
  });

  it('a TCP peer that accepts and closes: the same; then a real guest ends the storm with a new boot', async () => {
    // The "peer": accepts and resets every connection, until it turns into a guest that talks.
    let talk = false;
    const peer = createServer((socket) => {
      socket.on('error', () => undefined);
      if (talk) socket.write('real guest output\r\n');
      // A moment later, so that consoled has seen the connection up before the reset.
      else setTimeout(() => socket.resetAndDestroy(), 10);
    });
    servers.push(peer);
    await new Promise<void>((resolve) => peer.listen(0, '127.0.0.1', resolve));
    const port = (peer.address() as { port: number }).port;
    await d.json('PUT', '/v1/guests/rst', { source: { type: 'tcp', host: '127.0.0.1', port } }, 201);

    const { connects, boots, status: s } = await measureStorm('rst');
    expect(boots).toBe(0);
    expect(s.boot).toBeLessThanOrEqual(1);
    expect(connects).toBeGreaterThan(0);
    expect(connects).toBeLessThanOrEqual(maxConnects(WINDOW_MS));
    expect(await metric('consoled_guest_reconnect_storm', 'rst')).toBe(1);

    // A real guest now answers: established at its first byte, the storm is over, and
    // its output starts a new boot, marker first.
    talk = true;
    const after = await waitFor('the storm to end', async () => {
      const t = await status('rst');
      return !t.reconnectStorm.active && t.state === 'connected' ? t : undefined;
    });
    expect(after.boot).toBe(s.boot + 1);
    // Connected and counted is not yet flushed: wait for the output itself.
    const log = await waitFor('the guest output in the log', async () => {
      const text = (await readWholeLog(d, 'rst')).bytes.toString('latin1');
      return text.includes('real guest output') ? text : undefined;
    });
    expect(log).toMatch(
      new RegExp(`\\[consoled\\] boot ${after.boot} started at [^\\r]*\\r\\nreal guest output`),
    );
    expect(await metric('consoled_guest_reconnect_storm', 'rst')).toBe(0);
    peer.close();
  });

  it('a real QEMU restart (a connection that delivered bytes, then closed) still reconnects at once into a new boot', async () => {
    const peer = await SocketPeer.listen();
    await d.json(
      'PUT',
      '/v1/guests/qemu',
      { source: { type: 'tcp', host: '127.0.0.1', port: peer.port } },
      201,
    );
    await peer.waitForConnections(1);
    peer.send('first qemu\r\n');
    await waitFor('boot 1 output', async () =>
      (await readWholeLog(d, 'qemu')).bytes.toString('latin1').includes('first qemu'),
    );
    // QEMU exits and a new one listens at once: consoled comes back without waiting
    // out a grown backoff, and it is boot 2 as soon as it connects.
    peer.current!.destroy();
    await peer.waitForConnections(2);
    const s = await waitFor('boot 2', async () => {
      const t = await status('qemu');
      return t.boot === 2 && t.state === 'connected' ? t : undefined;
    });
    expect(s.reconnectStorm.active).toBe(false);
    // The retry after QEMU's exit used the initial delay: the backoff had been reset.
    const retries = d
      .logs()
      .split('\n')
      .filter((l) => l.includes('"guest":"qemu"') && l.includes('retrying in'));
    const delay = Number(/retrying in (\d+) ms/.exec(retries[retries.length - 1] ?? '')?.[1]);
    expect(delay).toBeLessThanOrEqual(INITIAL_DELAY_MS);
  });
});
