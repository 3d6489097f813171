/**
 * The console follows a live-migrated guest (README "Console across hosts"), with the
 * real things: three daemons (hosts a, b, c) and a real Redis; a QEMU guest (TCG)
 * printing a numbered line every 100 ms with a shell on the same console runs on a and
 * is live-migrated to b through QMP; real Chromium pages: a writer connected through
 * c, which never owns the guest, and a read-only page on a; and a WebSocket client
 * through c. Across the migration the pages' terminals (xterm.js's buffer) hold every
 * numbered line once, none missing or doubled; a command typed into the writer's page
 * after the migration runs in the guest on b; the WebSocket client's bytes equal the
 * stream byte for byte.
 */
import type { Redis } from 'ioredis';
import type { Browser, Page } from 'playwright-core';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { issueViewerToken } from '../../sidecar/console/viewer-token.js';
import {
  chromiumUnavailableReason,
  launchChromium,
  terminalText,
  waitForTerminalText,
} from '../support/browser.js';
import { ConsoleViewer } from '../support/console-viewer.js';
import { type InProcessDaemon, startInProcessDaemon, stopAllInProcessDaemons } from '../support/daemon.js';
import { freePort } from '../support/free-port.js';
import { migrate, type QemuGuest, qemuAvailable, startQemuGuest } from '../support/qemu-guest.js';
import { type RedisHandle, startRedis, stopAllRedis } from '../support/redis-server.js';
import { guestStatus, localLog, readStream, replicationConfig } from '../support/replication.js';
import { removeTmpDirs } from '../support/tmp.js';
import { waitFor } from '../support/wait.js';

const qemu = qemuAvailable();
const browserSkip = chromiumUnavailableReason();
const skip = !qemu.ok ? qemu.reason : browserSkip;
/** Boot under TCG takes seconds, many more on a busy host. */
const BOOT_TIMEOUT_MS = 90_000;
const ID = 'roaming';
const SECRET = 'console-migration-e2e-secret-0123456789';

/** The counter numbers in a text, in order (a line may be broken by typed echo, so anywhere). */
function counters(text: string): number[] {
  return [...text.matchAll(/counter (\d+)/g)].map((m) => Number(m[1]));
}

/** Each number from the first to the last exactly once, in order. */
function expectContiguous(numbers: number[], what: string): void {
  expect(numbers.length, `${what}: some counter lines`).toBeGreaterThan(10);
  const first = numbers[0]!;
  const expected = numbers.map((_, i) => first + i);
  expect(numbers, `${what}: every counter line once, in order`).toEqual(expected);
}

async function pageStatus(page: Page): Promise<string> {
  return page.evaluate(
    () => (globalThis as unknown as { consoled: { state: { status: string } } }).consoled.state.status,
  );
}

describe.skipIf(skip !== null && skip !== undefined)(
  `the console across a live migration, in Chromium${skip ? ` (skipped: ${skip})` : ''}`,
  () => {
    const guests: QemuGuest[] = [];
    let redis: RedisHandle;
    let client: Redis;
    let browser: Browser | null = null;

    afterEach(async () => {
      await browser?.close();
      browser = null;
      await Promise.all(guests.splice(0).map((g) => g.kill()));
      await stopAllInProcessDaemons();
      await stopAllRedis();
    });
    afterAll(removeTmpDirs);

    async function host(id: string): Promise<InProcessDaemon> {
      return startInProcessDaemon({
        config: replicationConfig(
          id,
          { url: redis.url, hosts: { heartbeatMs: 200, ttlMs: 5000 } },
          { console: { tokenSecret: SECRET } },
        ),
      });
    }

    function token(mode: 'ro' | 'rw', name: string): string {
      return issueViewerToken(Buffer.from(SECRET), { guest: ID, mode, ttlMs: 600_000, name });
    }

    it('pages through c and on a show every line once across the migration; typed keys run on b', async () => {
      redis = await startRedis();
      client = redis.client();
      const [a, b, c] = await Promise.all([host('host-a'), host('host-b'), host('host-c')]);

      // The guest on a (paused until a is attached, so a sees every byte), its destination on b.
      const sourcePort = await freePort();
      const destPort = await freePort();
      const migrationPort = await freePort();
      const src = await startQemuGuest({
        mode: 'counter-shell',
        hz: 10,
        serial: { kind: 'tcp-server', port: sourcePort },
        paused: true,
      });
      guests.push(src);
      const put = await a.api('PUT', `/v1/guests/${ID}`, {
        source: { type: 'tcp', host: '127.0.0.1', port: sourcePort },
      });
      expect(put.status).toBe(201);
      await waitFor('a to connect to the chardev', async () => (await guestStatus(a, ID)).offset > 0);
      await src.qmp.execute('cont');
      const dst = await startQemuGuest({
        mode: 'counter-shell',
        hz: 10,
        serial: { kind: 'tcp-server', port: destPort },
        incoming: migrationPort,
      });
      guests.push(dst);
      const incoming = await b.api('PUT', `/v1/guests/${ID}`, {
        source: { type: 'tcp', host: '127.0.0.1', port: destPort },
        incoming: true,
      });
      expect(incoming.status).toBe(201);
      await waitFor(
        'counter 20 in the stream',
        async () => counters((await readStream(client, ID)).bytes.toString('latin1')).includes(20),
        { timeoutMs: BOOT_TIMEOUT_MS, intervalMs: 100 },
      );

      // The writer's page through c, a read-only page on a, a WebSocket client through c.
      browser = await launchChromium();
      const problems: string[] = [];
      const open = async (base: string, t: string): Promise<Page> => {
        const page = await (await browser!.newContext()).newPage();
        page.on('pageerror', (err) => problems.push(err.message));
        await page.goto(`${base}/console/${ID}#token=${t}`);
        await waitFor('the page to connect', async () => (await pageStatus(page)) === 'connected');
        return page;
      };
      const writerPage = await open(c.url, token('rw', 'web'));
      const watcherPage = await open(a.url, token('ro', 'watch'));
      const wsClient = await ConsoleViewer.connect(c.url, ID, {
        token: token('ro', 'ws'),
        header: true,
        from: 0,
      });
      await waitForTerminalText(writerPage, (t) => counters(t).length > 5);
      await waitForTerminalText(watcherPage, (t) => counters(t).length > 5);

      // The migration, while the guest prints.
      const lastBefore = Math.max(...counters((await localLog(a, ID)).bytes.toString('latin1')));
      await migrate(src, migrationPort);
      await waitFor(
        'b to own the guest',
        async () => (await guestStatus(b, ID)).replication?.role === 'owner',
        {
          timeoutMs: 30_000,
        },
      );
      const target = lastBefore + 40;
      const seen = (t: string) => counters(t).some((n) => n >= target);
      await waitForTerminalText(writerPage, seen, 30_000);
      await waitForTerminalText(watcherPage, seen, 30_000);
      expect(await pageStatus(writerPage)).toBe('connected');

      // Typed into the page after the migration: it runs in the guest on b.
      await writerPage.locator('#terminal').click();
      await writerPage.keyboard.type('echo moved-$((6*7))');
      await writerPage.keyboard.press('Enter');
      await waitForTerminalText(writerPage, /(^|\n)moved-42/, 20_000);
      await waitFor('the command output in b’s log', async () =>
        (await localLog(b, ID)).bytes.toString('latin1').includes('moved-42'),
      );
      expect((await localLog(a, ID)).bytes.toString('latin1')).not.toContain('moved-42');

      // Every numbered line once on both pages, across the seam; the seam's markers shown.
      const writerText = await terminalText(writerPage);
      const watcherText = await terminalText(watcherPage);
      expectContiguous(counters(writerText), 'the page through c');
      expectContiguous(counters(watcherText), 'the read-only page on a');
      expect(counters(writerText).at(-1)).toBeGreaterThanOrEqual(target);
      for (const text of [writerText, watcherText]) {
        expect(text).toContain('handoff to host-b');
        expect(text).toContain('handoff from host-a');
      }
      expect(watcherText).toContain('moved-42'); // the watcher on a sees b's output
      expect(problems).toEqual([]);

      // The WebSocket client through c: the stream, byte for byte, in one contiguous run.
      await wsClient.waitForText('moved-42', 20_000);
      expect(wsClient.protocolErrors).toEqual([]);
      expect(wsClient.segments).toHaveLength(1);
      // What the client had at this moment (the guest goes on printing meanwhile).
      const end = wsClient.next;
      const got = wsClient.output.subarray(0, end - wsClient.segments[0]!.offset);
      const stream = await waitFor('the stream to reach the client', async () => {
        const s = await readStream(client, ID);
        return (s.next ?? 0) >= end ? s : undefined;
      });
      const start = stream.oldest ?? 0;
      const want = stream.bytes.subarray(wsClient.segments[0]!.offset - start, end - start);
      let same = 0;
      while (same < got.length && got[same] === want[same]) same++;
      const around = (b: Buffer) =>
        JSON.stringify(b.subarray(Math.max(0, same - 80), same + 80).toString('latin1'));
      expect(same, `first difference: got ${around(got)}, the stream ${around(want)}`).toBe(want.length);
      expect(got.length).toBe(want.length);
      expect(wsClient.messages.filter((m) => m.type === 'moved')).toEqual([
        expect.objectContaining({ host: 'host-b', proxied: true }),
      ]);
      await wsClient.close();
    }, 240_000);
  },
);
