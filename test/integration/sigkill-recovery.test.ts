/**
 * docs/design.md, "Local store": a SIGKILL at any instant must leave a store that the next
 * start recovers without corruption; at most the unflushed tail is lost. A peer floods
 * a counter pattern (rate limit off, small files, many rotations) while the daemon is
 * killed at random moments and restarted; afterwards the files, the state file, the
 * offsets and every line of the log are checked.
 */
import { readdir, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, expect, it } from 'vitest';
import { LocalLog } from '../../store/local-log.js';
import {
  COUNTER_LINE_BYTES,
  CounterFlood,
  checkCounterLog,
  closeAllPeers,
  readLog,
  SocketPeer,
  startDaemon,
  stopAllDaemons,
} from '../support/daemon.js';
import { removeTmpDirs } from '../support/tmp.js';
import { waitFor } from '../support/wait.js';

const FILE_BYTES = 16 * 1024;
const MAX_FILES = 200;
/** Lines each connection writes: ~512 KiB, so the whole history (4 bursts) stays within retention. */
const BURST_LINES = Math.floor((512 * 1024) / COUNTER_LINE_BYTES);
const KILLS = 3;

interface Status {
  boot: number;
  state: string;
  offset: number;
  flushedOffset: number;
  oldestOffset: number;
  drops: { lostBytes: number; suppressedBytes: number };
}

afterAll(async () => {
  await stopAllDaemons();
  await closeAllPeers();
  await removeTmpDirs();
});

it('recovers from SIGKILLs mid-flood with consistent files, offsets and content, and no extra boots', async () => {
  const peer = await SocketPeer.listen();
  const flood = new CounterFlood(peer, { linesPerConnection: BURST_LINES });
  const d = await startDaemon({ config: { defaults: { rateLimit: { bytesPerSec: 0, burstBytes: 1 } } } });
  await d.json('PUT', '/v1/guests/flood', {
    source: { type: 'tcp', host: '127.0.0.1', port: peer.port },
    rotation: { maxFileBytes: FILE_BYTES, maxFiles: MAX_FILES },
  });
  const status = () => d.json<Status>('GET', '/v1/guests/flood');

  const dir = join(d.stateDir, 'guests', 'flood');
  const killedAt: string[] = [];
  /** Where the log ended at the last kill: the next connection's bytes start there. */
  let base = 0;
  for (let k = 0; k < KILLS; k++) {
    const connection = k + 1;
    await peer.waitForConnections(connection);
    // Kill when a random share (20–80 %) of this connection's burst is on disk: the peer
    // is still writing, consoled is mid-stream, often mid-rotation.
    const share = 0.2 + Math.random() * 0.6;
    const target = base + Math.floor(share * BURST_LINES * COUNTER_LINE_BYTES);
    const reached = await waitFor(
      `kill #${connection}: offset ${target}`,
      async () => {
        const s = await status();
        return s.flushedOffset >= target ? s.flushedOffset : undefined;
      },
      { intervalMs: 5 },
    );
    await d.kill();
    killedAt.push(`kill ${connection} at ~${reached} (${Math.round(share * 100)} % of the burst)`);
    const left = await LocalLog.inspect(dir, {
      maxFileBytes: FILE_BYTES,
      maxFiles: MAX_FILES,
      maxQueueBytes: 1 << 20,
      maxWriteBytes: 1 << 20,
      fileMode: 0o640,
      diskRetryMs: 1000,
    });
    base = (await left!.bounds()).next;
    expect(base, 'the kill loses at most what was not flushed').toBeGreaterThanOrEqual(reached);
    await d.start();
  }

  // The last connection writes its whole burst; then the log must be quiet and settled.
  await peer.waitForConnections(KILLS + 1);
  await waitFor('the last burst to be written', () => flood.latestBurstDone, { timeoutMs: 30_000 });
  const settled = await waitFor(
    'the log to settle',
    async () => {
      const s = await status();
      const { bytes } = await readLog(d, 'flood', { tail: COUNTER_LINE_BYTES * 2 });
      const last = bytes.toString('latin1').trimEnd().split('\n').pop() ?? '';
      return s.flushedOffset === s.offset && last.startsWith(`L${String(flood.next - 1).padStart(10, '0')}:`)
        ? s
        : undefined;
    },
    { timeoutMs: 30_000 },
  );
  const context = `${killedAt.join('; ')}\n--- daemon log ---\n${d.logs()}`;

  // Boots did not increase because of the kills; each restart wrote a reattach marker.
  expect(settled.boot, context).toBe(1);
  expect(settled.drops.lostBytes, context).toBe(0);
  const whole = await readLog(d, 'flood', { start: 0 });
  expect([whole.start, whole.next], context).toEqual([settled.oldestOffset, settled.flushedOffset]);
  expect(whole.start, `the whole history is within retention: ${context}`).toBe(0);
  const report = checkCounterLog(whole.bytes);
  expect(
    report.markers.filter((m) => m.startsWith('boot ')),
    context,
  ).toEqual([expect.stringMatching(/^boot 1 started at /)]);
  expect(
    report.markers.filter((m) => m.startsWith('reattached at ')),
    context,
  ).toHaveLength(KILLS);
  expect(report.markers, context).toHaveLength(KILLS + 1);
  // Lines only go missing at a kill (bytes in flight or not flushed), never elsewhere.
  expect(report.jumps.length, context).toBeLessThanOrEqual(KILLS);
  for (const jump of report.jumps) expect(jump.marker, context).toMatch(/^reattached at /);
  expect(report.lines[0], context).toBe(0);
  expect(report.lines[report.lines.length - 1], context).toBe(flood.next - 1);
  // The final burst arrived whole.
  const lastBurst = report.lines.slice(-BURST_LINES);
  expect(lastBurst[0], context).toBe(flood.next - BURST_LINES);

  // Stop cleanly, then look at the files themselves.
  expect(await d.stop(), context).toBe(0);
  const names = await readdir(dir);
  const chain: string[] = [];
  for (let i = 0; names.includes(i === 0 ? 'console.log' : `console.log.${i}`); i++)
    chain.push(i === 0 ? 'console.log' : `console.log.${i}`);
  const stray = names.filter((n) => n.startsWith('console.log') && !chain.includes(n));
  expect(stray, `files outside the console.log, .1, .2 … chain: ${context}`).toEqual([]);
  expect(chain.length, context).toBeGreaterThan(KILLS * 4);
  const files = await Promise.all(
    chain.map(async (name) => ({
      name,
      bytes: await readFile(join(dir, name)),
      st: await stat(join(dir, name)),
    })),
  );
  for (const f of files) {
    expect(f.st.mode & 0o777, f.name).toBe(0o640);
    if (f.name === 'console.log') expect(f.bytes.length, f.name).toBeLessThanOrEqual(FILE_BYTES);
    else
      expect(f.bytes.length, `${f.name} is a rotated file: exactly maxFileBytes. ${context}`).toBe(
        FILE_BYTES,
      );
  }
  // Offsets are monotonic and continuous: the log served from the oldest offset is the
  // files, oldest to newest, end to end.
  const concatenated = Buffer.concat(files.reverse().map((f) => f.bytes));
  expect(concatenated.length, context).toBe(whole.next - whole.start);
  expect(concatenated.equals(whole.bytes), context).toBe(true);

  // The state files parse and agree.
  const state = JSON.parse(await readFile(join(dir, 'log-state.json'), 'utf8')) as {
    end: number;
    boots: Array<{ boot: number; offset: number }>;
    awaitingBoot: boolean;
  };
  expect(state.boots, context).toEqual([expect.objectContaining({ boot: 1, offset: 0 })]);
  expect(state.awaitingBoot).toBe(false);
  expect(state.end, context).toBe(whole.next);
  const attachments = JSON.parse(await readFile(join(d.stateDir, 'attachments.json'), 'utf8')) as {
    guests: Record<string, unknown>;
  };
  expect(Object.keys(attachments.guests)).toEqual(['flood']);
  expect(
    names.filter((n) => n.endsWith('.tmp')),
    'no torn state file left behind',
  ).toEqual([]);

  // And a fresh start serves the same history (the peer stays quiet now).
  flood.stop();
  await d.start();
  const after = await readLog(d, 'flood', { start: 0 });
  expect(after.bytes.subarray(0, whole.bytes.length).equals(whole.bytes), context).toBe(true);
});

it('keeps boot records across a SIGKILL: each boot appends to the boot index, none rewrites the state file', async () => {
  const peer = await SocketPeer.listen();
  const d = await startDaemon();
  await d.json('PUT', '/v1/guests/boots', { source: { type: 'tcp', host: '127.0.0.1', port: peer.port } });
  const dir = join(d.stateDir, 'guests', 'boots');
  const stateIno = async () => (await stat(join(dir, 'log-state.json'))).ino;
  const BOOTS = 6;
  let inoAtBoot2 = 0;
  for (let boot = 1; boot <= BOOTS; boot++) {
    // Each QEMU run prints and exits: the next connection is a new boot.
    const socket = await peer.waitForConnections(boot);
    await waitFor(
      `boot ${boot}`,
      async () => (await d.json<Status>('GET', '/v1/guests/boots')).boot === boot,
    );
    if (boot === 2) inoAtBoot2 = await stateIno();
    socket.write(`output of boot ${boot}\r\n`);
    await waitFor(`boot ${boot} output`, async () =>
      (await readLog(d, 'boots', { start: 0 })).bytes.toString('latin1').includes(`output of boot ${boot}`),
    );
    if (boot < BOOTS) socket.destroy();
  }
  // Boots 3 … 6 were appended to the index; the state file (replaced on every save) was not saved again.
  expect(await stateIno()).toBe(inoAtBoot2);
  const index = (await readFile(join(dir, 'boot-index.jsonl'), 'utf8')).trim().split('\n');
  expect(index.filter((l) => l.includes('"boot"')).length).toBeGreaterThanOrEqual(BOOTS - 2);

  await d.kill();
  await d.start();
  const s = await d.json<Status>('GET', '/v1/guests/boots');
  expect(s.boot).toBe(BOOTS); // the restart is a reattach: the last boot is still current
  for (let boot = 1; boot <= BOOTS; boot++) {
    const { bytes } = await readLog(d, 'boots', { boot });
    expect(bytes.toString('latin1')).toContain(`output of boot ${boot}`);
    if (boot < BOOTS) expect(bytes.toString('latin1')).not.toContain(`output of boot ${boot + 1}`);
  }
  // The restart folded the index into the state file.
  const state = JSON.parse(await readFile(join(dir, 'log-state.json'), 'utf8')) as { boots: unknown[] };
  expect(state.boots).toHaveLength(BOOTS);
});
