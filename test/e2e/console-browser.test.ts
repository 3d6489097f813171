/**
 * The console page in a real browser (Debian's chromium, headless, driven by
 * playwright-core) against a real daemon whose guest is a shell under a pty: a
 * writer types a command and sees its output rendered; a second page with a
 * read-only token sees the same output and cannot type (checked at the guest: the
 * shell never runs its command, the log never holds it). A page given a short
 * renewable token renews it in band and stays connected past its expiry. A screenshot
 * is kept under test-artifacts/.
 */
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import type { Browser, Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ERROR_CODES } from '../../common/errors.js';
import { issueViewerToken } from '../../sidecar/console/viewer-token.js';
import {
  chromiumAvailable,
  chromiumUnavailableReason,
  launchChromium,
  SHELL_GUEST_SOURCE,
  waitForTerminalText,
} from '../support/browser.js';
import { ConsoleViewer } from '../support/console-viewer.js';
import {
  type InProcessDaemon,
  REPO_ROOT,
  readWholeLog,
  startInProcessDaemon,
  stopAllInProcessDaemons,
} from '../support/daemon.js';
import { freePort } from '../support/free-port.js';
import {
  GUEST_BANNER,
  GUEST_PROMPT,
  type QemuGuest,
  qemuAvailable,
  startQemuGuest,
} from '../support/qemu-guest.js';
import { removeTmpDirs } from '../support/tmp.js';
import { sleep, waitFor } from '../support/wait.js';

const SECRET = 'console-browser-test-secret-0123456789abc';
const GUEST = 'shell';
const ARTIFACTS = join(REPO_ROOT, 'test-artifacts');

const skipReason = chromiumUnavailableReason();
const qemu = qemuAvailable();

interface PageState {
  status: string;
  viewerId: string | null;
  mode: string | null;
  writer: { viewerId: string } | null;
  viewers: number | null;
  reconnects: number;
  renewals: number;
  tokenExpiresAt: string | null;
}

function pageState(page: Page): Promise<PageState> {
  return page.evaluate(() => (globalThis as unknown as { consoled: { state: PageState } }).consoled.state);
}

describe.skipIf(!chromiumAvailable())(
  `the console page in Chromium${skipReason ? ` (skipped: ${skipReason})` : ''}`,
  () => {
    let d: InProcessDaemon;
    let browser: Browser;

    beforeAll(async () => {
      d = await startInProcessDaemon({ config: { console: { tokenSecret: SECRET } } });
      const res = await d.api('PUT', `/v1/guests/${GUEST}`, {
        source: SHELL_GUEST_SOURCE,
      });
      expect(res.status).toBe(201);
      browser = await launchChromium();
    });

    afterAll(async () => {
      await browser?.close();
      await stopAllInProcessDaemons();
      await removeTmpDirs();
    });

    it('a writer types and sees the output; a read-only watcher sees it too and cannot type', async () => {
      const rw = issueViewerToken(Buffer.from(SECRET), {
        guest: GUEST,
        mode: 'rw',
        ttlMs: 600_000,
        name: 'writer',
      });
      const ro = issueViewerToken(Buffer.from(SECRET), {
        guest: GUEST,
        mode: 'ro',
        ttlMs: 600_000,
        name: 'watcher',
      });
      const context = await browser.newContext({ viewport: { width: 1000, height: 600 } });
      const writer = await context.newPage();
      const watcher = await context.newPage();
      const problems: string[] = [];
      for (const page of [writer, watcher]) page.on('pageerror', (err) => problems.push(err.message));

      await writer.goto(`${d.url}/console/${GUEST}#token=${rw}`);
      await waitFor(
        'the writer page to connect',
        async () => (await pageState(writer)).status === 'connected',
      );
      await waitFor('the writer page to hold the lock', async () => {
        const s = await pageState(writer);
        return s.writer !== null && s.writer.viewerId === s.viewerId;
      });
      // The token left the address bar.
      expect(writer.url()).not.toContain('token=');
      await waitForTerminalText(writer, 'guest$');

      await watcher.goto(`${d.url}/console/${GUEST}#token=${ro}`);
      await waitFor(
        'the watcher page to connect',
        async () => (await pageState(watcher)).status === 'connected',
      );
      expect(await pageState(watcher)).toMatchObject({ mode: 'ro', viewers: 2 });
      await waitFor(
        'the writer page to count 2 viewers',
        async () => (await pageState(writer)).viewers === 2,
      );

      await writer.locator('#terminal').click();
      await writer.keyboard.type('echo browser-$((6*7))');
      await writer.keyboard.press('Enter');
      await waitForTerminalText(writer, 'browser-42');
      await waitForTerminalText(watcher, 'browser-42');

      // The watcher types: nothing reaches the guest.
      await watcher.locator('#terminal').click();
      await watcher.keyboard.type('echo sneaky-$((7*6))');
      await watcher.keyboard.press('Enter');
      // Even a page that sends keystrokes over the read-only token itself gets nowhere.
      const forced = await watcher.evaluate(
        async ({ guest, token, host }) =>
          new Promise<string>((resolve) => {
            const ws = new WebSocket(`ws://${host}/v1/guests/${guest}/console`);
            ws.onopen = () => ws.send(JSON.stringify({ type: 'auth', token }));
            ws.onmessage = (event) => {
              if (typeof event.data !== 'string') return;
              const msg = JSON.parse(event.data) as { type: string; code?: string };
              if (msg.type === 'welcome') ws.send(new TextEncoder().encode('echo forced-$((3*3))\r'));
              if (msg.type === 'error') {
                ws.close();
                resolve(msg.code ?? '');
              }
            };
          }),
        { guest: GUEST, token: ro, host: new URL(d.url).host },
      );
      expect(forced).toBe('NOT_WRITER');
      await writer.keyboard.type('echo after-$((2+2))');
      await writer.keyboard.press('Enter');
      await waitForTerminalText(watcher, 'after-4');
      // The echo of keys typed after the refused ones: in the log, it is the positive signal.
      const log = await waitFor('after-4 in the log', async () => {
        const text = (await readWholeLog(d, GUEST)).bytes.toString('latin1');
        return text.includes('after-4') && text;
      });
      expect(log).toContain('browser-42');
      expect(log).not.toContain('sneaky');
      expect(log).not.toContain('forced');
      expect(await watcher.locator('#mode').textContent()).toMatch(/watching \(writer: writer\)/);
      expect(await writer.locator('#mode').textContent()).toBe('writer');
      expect(await watcher.locator('#viewers').textContent()).toBe('2 viewers');
      expect(await watcher.locator('#boot').textContent()).toBe('boot 1');

      mkdirSync(ARTIFACTS, { recursive: true });
      await writer.screenshot({ path: join(ARTIFACTS, 'console-browser-writer.png') });
      await watcher.screenshot({ path: join(ARTIFACTS, 'console-browser-watcher.png') });
      expect(problems).toEqual([]);
      await context.close();
    });

    it('renews a short renewable token in band: after 10 s it is still connected, and getting output', async () => {
      const res = await d.api('POST', `/v1/guests/${GUEST}/tokens`, {
        mode: 'ro',
        ttl: '4s',
        renewableFor: '1m',
        name: 'renewing',
      });
      expect(res.status).toBe(201);
      const issued = (await res.json()) as { token: string; expiresAt: string };
      const context = await browser.newContext();
      const page = await context.newPage();
      const problems: string[] = [];
      page.on('pageerror', (err) => problems.push(err.message));
      await page.goto(`${d.url}/console/${GUEST}#token=${issued.token}`);
      await waitFor('the page to connect', async () => (await pageState(page)).status === 'connected');
      const first = await pageState(page);
      await sleep(10_000);
      const later = await pageState(page);
      expect(later).toMatchObject({ status: 'connected', viewerId: first.viewerId, reconnects: 0 });
      expect(later.renewals).toBeGreaterThanOrEqual(2);
      expect(Date.parse(later.tokenExpiresAt!)).toBeGreaterThan(Date.parse(issued.expiresAt) + 5_000);
      // Output typed now (by an admin viewer holding the lock) reaches the page.
      const typist = await ConsoleViewer.connect(d.url, GUEST, { token: d.token });
      await waitFor('the typist to hold the lock', () => typist.lock.writer?.viewerId === typist.viewerId);
      typist.keys('echo renewed-$((6*7))\r');
      await waitForTerminalText(page, 'renewed-42');
      await typist.close();
      expect(problems).toEqual([]);
      await context.close();
    });

    it('explains a refused token by the close reason: a forged token is TOKEN_INVALID, not the 4401 fallback', async () => {
      const context = await browser.newContext();
      const page = await context.newPage();
      const problems: string[] = [];
      page.on('pageerror', (err) => problems.push(err.message));
      await page.goto(`${d.url}/console/${GUEST}#token=forged.token`);
      await waitFor(
        'the page to ask for a token',
        async () => (await pageState(page)).status === 'need-token',
      );
      expect(await page.locator('#auth-reason').textContent()).toBe(
        `The token was refused: TOKEN_INVALID. ${ERROR_CODES.TOKEN_INVALID.text}`,
      );
      expect(problems).toEqual([]);
      await context.close();
    });
  },
);

describe.skipIf(!chromiumAvailable() || !qemu.ok)(
  `the console page in Chromium on a QEMU guest${skipReason ? ` (skipped: ${skipReason})` : qemu.ok ? '' : ` (skipped: ${qemu.reason})`}`,
  () => {
    let d: InProcessDaemon;
    let browser: Browser;
    let vm: QemuGuest;

    beforeAll(async () => {
      const port = await freePort();
      vm = await startQemuGuest({ mode: 'shell', serial: { kind: 'tcp-server', port } });
      d = await startInProcessDaemon({ config: { console: { tokenSecret: SECRET } } });
      const res = await d.api('PUT', '/v1/guests/vm', { source: { type: 'tcp', host: '127.0.0.1', port } });
      expect(res.status).toBe(201);
      browser = await launchChromium();
    });

    afterAll(async () => {
      await browser?.close();
      await stopAllInProcessDaemons();
      await vm?.kill();
      await removeTmpDirs();
    });

    it('types into the guest’s serial shell and both pages render the answer', async () => {
      const rw = issueViewerToken(Buffer.from(SECRET), {
        guest: 'vm',
        mode: 'rw',
        ttlMs: 600_000,
        name: 'operator',
      });
      const ro = issueViewerToken(Buffer.from(SECRET), { guest: 'vm', mode: 'ro', ttlMs: 600_000 });
      const context = await browser.newContext({ viewport: { width: 1000, height: 600 } });
      const writer = await context.newPage();
      const watcher = await context.newPage();
      await writer.goto(`${d.url}/console/vm#token=${rw}`);
      await watcher.goto(`${d.url}/console/vm#token=${ro}`);
      await waitForTerminalText(writer, GUEST_BANNER, 90_000);
      await waitFor('the writer page to hold the lock', async () => {
        const s = await pageState(writer);
        return s.writer !== null && s.writer.viewerId === s.viewerId;
      });
      await writer.locator('#terminal').click();
      await writer.keyboard.press('Enter');
      await waitForTerminalText(writer, GUEST_PROMPT.trim(), 30_000);
      await writer.keyboard.type('echo qemu-$((5*5)); uname -s');
      await writer.keyboard.press('Enter');
      await waitForTerminalText(writer, 'qemu-25', 30_000);
      await waitForTerminalText(watcher, 'qemu-25', 30_000);
      await waitForTerminalText(watcher, 'Linux', 30_000);
      mkdirSync(ARTIFACTS, { recursive: true });
      await watcher.screenshot({ path: join(ARTIFACTS, 'console-browser-qemu.png') });
      await context.close();
    });
  },
);
