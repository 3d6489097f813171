/**
 * The console page over the TLS listener (README "TLS") in real headless Chromium: a
 * browser loads `https://localhost:<tls port>/console/{id}` with a certificate the test
 * made (the browser context accepts it; nothing else about TLS is relaxed), the page
 * connects over wss, shows the guest's output, and what the writer types runs in the
 * guest. The page's own Origin is https, and the daemon admits it.
 */
import type { Browser } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { issueViewerToken } from '../../sidecar/console/viewer-token.js';
import {
  chromiumAvailable,
  chromiumUnavailableReason,
  launchChromium,
  SHELL_GUEST_SOURCE,
  waitForTerminalText,
} from '../support/browser.js';
import { type DaemonHandle, readWholeLog, startDaemon, stopAllDaemons } from '../support/daemon.js';
import { freePort } from '../support/free-port.js';
import { makeTestCert } from '../support/tls-cert.js';
import { removeTmpDirs, tmpDir } from '../support/tmp.js';
import { waitFor } from '../support/wait.js';

const SECRET = 'console-tls-test-secret-0123456789abcdef';
const GUEST = 'shell';
const skipReason = chromiumUnavailableReason();

describe.skipIf(!chromiumAvailable())(
  `the console page over https in Chromium${skipReason ? ` (skipped: ${skipReason})` : ''}`,
  () => {
    let d: DaemonHandle;
    let browser: Browser;
    let port: number;

    beforeAll(async () => {
      const cert = makeTestCert(tmpDir('tls'));
      port = await freePort();
      d = await startDaemon({
        config: {
          listen: { tls: { port, cert: cert.cert, key: cert.key } },
          console: { tokenSecret: SECRET },
        },
      });
      const res = await d.api('PUT', `/v1/guests/${GUEST}`, {
        source: SHELL_GUEST_SOURCE,
      });
      expect(res.status).toBe(201);
      browser = await launchChromium();
    });

    afterAll(async () => {
      await browser?.close();
      await stopAllDaemons();
      await removeTmpDirs();
    });

    it('loads over https, connects over wss, and what the writer types runs in the guest', async () => {
      const token = issueViewerToken(Buffer.from(SECRET), {
        guest: GUEST,
        mode: 'rw',
        ttlMs: 600_000,
        name: 'tls-writer',
      });
      const context = await browser.newContext({ ignoreHTTPSErrors: true });
      const page = await context.newPage();
      const problems: string[] = [];
      page.on('pageerror', (err) => problems.push(err.message));
      const socketUrls: string[] = [];
      page.on('websocket', (ws) => socketUrls.push(ws.url()));
      await page.goto(`https://localhost:${port}/console/${GUEST}#token=${token}`);
      expect(page.url().startsWith(`https://localhost:${port}/`)).toBe(true);
      await waitFor('the page to connect', () =>
        page
          .evaluate(
            () =>
              (globalThis as unknown as { consoled: { state: { status: string } } }).consoled.state.status,
          )
          .then((s) => s === 'connected'),
      );
      expect(socketUrls[0]).toMatch(new RegExp(`^wss://localhost:${port}/`));
      await waitForTerminalText(page, 'guest$');
      await page.locator('#terminal').click();
      await page.keyboard.type('echo over-tls-$((6*7))');
      await page.keyboard.press('Enter');
      await waitForTerminalText(page, 'over-tls-42');
      // The page shows output as the hub sends it; the log has it once the write is done.
      await waitFor('the command output in the log', async () =>
        (await readWholeLog(d, GUEST)).bytes.toString('latin1').includes('over-tls-42'),
      );
      expect(problems).toEqual([]);
      await context.close();
    });
  },
);
