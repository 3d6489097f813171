/**
 * The console page must not type into the guest by itself (README, "Browser page"):
 * terminal queries in the guest's output (`ESC[6n`, `ESC[c`, `ESC[>c`, DECRQSS, OSC 10
 * `?`, and focus reporting turned on) make xterm.js produce answers, which the page
 * used to send as keystrokes. In real Chromium against a real daemon whose guest logs
 * every byte it reads (a raw-mode tty): the queries it printed before the page opened
 * (replayed) and those it prints while the page watches (live) make the page send
 * nothing; the guest reads exactly what was typed.
 */
import { readFileSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Browser, Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { issueViewerToken } from '../../sidecar/console/viewer-token.js';
import {
  chromiumAvailable,
  chromiumUnavailableReason,
  launchChromium,
  waitForTerminalText,
} from '../support/browser.js';
import {
  type InProcessDaemon,
  readWholeLog,
  startInProcessDaemon,
  stopAllInProcessDaemons,
} from '../support/daemon.js';
import { removeTmpDirs, tmpDir } from '../support/tmp.js';
import { waitFor } from '../support/wait.js';

const SECRET = 'console-answers-test-secret-0123456789abcdef';
const GUEST = 'asker';
const skipReason = chromiumUnavailableReason();

/**
 * The guest: a raw-mode tty that appends every byte it reads to a file, prints the
 * queries at start and again each time it reads the line `live`.
 */
const GUEST_SCRIPT = `
const { appendFileSync } = require('node:fs');
const readLog = process.argv[2];
const QUERIES = '\\x1b[6n\\x1b[c\\x1b[>c\\x1bP$qm\\x1b\\\\\\x1b]10;?\\x07\\x1b[?1004h';
process.stdin.setRawMode(true);
process.stdout.write('queries:' + QUERIES + ' READY\\r\\n');
let line = '';
process.stdin.on('data', (chunk) => {
  appendFileSync(readLog, chunk);
  for (const c of chunk.toString('latin1')) {
    if (c !== '\\r') { line += c; continue; }
    if (line === 'live') process.stdout.write('live queries:' + QUERIES + ' LIVE-DONE\\r\\n');
    line = '';
  }
});
`;

interface PageState {
  status: string;
  viewerId: string | null;
  writer: { viewerId: string } | null;
}

function pageState(page: Page): Promise<PageState> {
  return page.evaluate(() => (globalThis as unknown as { consoled: { state: PageState } }).consoled.state);
}

describe.skipIf(!chromiumAvailable())(
  `the console page answers no terminal query${skipReason ? ` (skipped: ${skipReason})` : ''}`,
  () => {
    let d: InProcessDaemon;
    let browser: Browser;
    let readLog: string;

    beforeAll(async () => {
      const dir = tmpDir('answers');
      const script = join(dir, 'guest.cjs');
      readLog = join(dir, 'read.log');
      await writeFile(script, GUEST_SCRIPT);
      await writeFile(readLog, '');
      d = await startInProcessDaemon({ config: { console: { tokenSecret: SECRET } } });
      const res = await d.api('PUT', `/v1/guests/${GUEST}`, {
        source: { type: 'exec', command: [process.execPath, script, readLog] },
      });
      expect(res.status).toBe(201);
      // The queries are in the log before any page opens: the page gets them replayed.
      await waitFor('the guest to print its queries', async () =>
        (await readWholeLog(d, GUEST)).bytes.toString('latin1').includes('READY'),
      );
      browser = await launchChromium();
    });

    afterAll(async () => {
      await browser?.close();
      await stopAllInProcessDaemons();
      await removeTmpDirs();
    });

    const guestRead = () => readFileSync(readLog, 'latin1');

    /** Types `text` and Enter, and waits until the guest has read it. */
    async function typeLine(page: Page, text: string): Promise<void> {
      await page.keyboard.type(text);
      await page.keyboard.press('Enter');
      await waitFor(`the guest to read ${text}`, () => guestRead().includes(`${text}\r`));
    }

    it('sends only what was typed: replayed and live queries get no answer from the page', async () => {
      const token = issueViewerToken(Buffer.from(SECRET), { guest: GUEST, mode: 'rw', ttlMs: 600_000 });
      const page = await browser.newPage();
      const problems: string[] = [];
      page.on('pageerror', (err) => problems.push(err.message));
      await page.goto(`${d.url}/console/${GUEST}#token=${token}`);
      await waitFor('the page to hold the writer lock', async () => {
        const s = await pageState(page);
        return s.status === 'connected' && s.writer !== null && s.writer.viewerId === s.viewerId;
      });
      await waitForTerminalText(page, 'READY');
      // Focus moves away and back: with focus reporting on, xterm.js reports both.
      await page.locator('#status').click();
      await page.locator('#terminal').click();

      // Anything the page sent for the replayed queries is read by the guest before this.
      await typeLine(page, 'typed-1');
      expect(JSON.stringify(guestRead())).toBe(JSON.stringify('typed-1\r'));

      await typeLine(page, 'live');
      await waitForTerminalText(page, 'LIVE-DONE');
      await typeLine(page, 'typed-2');
      expect(JSON.stringify(guestRead())).toBe(JSON.stringify('typed-1\rlive\rtyped-2\r'));
      // xterm.js did answer (twice the queries, and the focus reports); the page kept the answers.
      const kept = await page.evaluate(
        () =>
          (globalThis as unknown as { consoled: { state: { answersDropped: number; keyboard: boolean } } })
            .consoled.state,
      );
      expect(kept.keyboard).toBe(true);
      expect(kept.answersDropped).toBeGreaterThan(2 * 'ESC[3;9R'.length);
      expect(problems).toEqual([]);
      await page.close();
    });
  },
);
