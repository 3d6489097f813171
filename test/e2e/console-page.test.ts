/**
 * The browser console page (sidecar/console/page/) in real headless Chromium,
 * against a small real server of this test's own: node:http serving the page and
 * its assets with the page's CSP, and a `ws` WebSocketServer that speaks the
 * protocol of sidecar/console/protocol.ts (welcome, replay, echoing keystrokes like
 * a guest's tty, lock, skipped, boot, guest messages), checking Origin and viewer
 * tokens with the real modules.
 *
 * About 680 lines on purpose: one browser and one protocol server are started once for
 * all the page's cases, which share them.
 */
import { randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { fileURLToPath } from 'node:url';
import type { Browser, BrowserContext, Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type RawData, WebSocket, WebSocketServer } from 'ws';
import { ConsoledError, ERROR_CODES } from '../../common/errors.js';
import { checkOrigin } from '../../sidecar/console/origin-check.js';
import {
  CONSOLE_ASSET_HEADERS,
  CONSOLE_PAGE_CSP,
  CONSOLE_PAGE_HEADERS,
  consolePageAssets,
  escapeHtml,
  renderConsolePage,
} from '../../sidecar/console/page-assets.js';
import { pageProtocolScript } from '../../sidecar/console/protocol.js';
import {
  issueViewerToken,
  UsedTokenRegistry,
  type ViewerMode,
  verifyViewerToken,
} from '../../sidecar/console/viewer-token.js';
import {
  chromiumAvailable,
  chromiumUnavailableReason,
  launchChromium,
  waitForTerminalText,
} from '../support/browser.js';
import { waitFor } from '../support/wait.js';

const GUEST = 'g1';
const REPLAY_BYTES = 64 * 1024;

interface TestViewer {
  ws: WebSocket;
  viewerId: string;
  name: string | undefined;
  mode: ViewerMode;
}

/** A real protocol server, small enough to read: one guest whose "tty" echoes keystrokes. */
class ConsoleTestServer {
  readonly secret = randomBytes(32);
  readonly usedTokens = new UsedTokenRegistry();
  readonly http: Server;
  readonly wss = new WebSocketServer({ noServer: true });
  port = 0;
  requireAuth = true;
  log = Buffer.alloc(0);
  boot = 1;
  viewers = new Set<TestViewer>();
  writer: TestViewer | null = null;
  nextViewer = 1;
  /** `from` of every console connection, in order (null: none given). */
  froms: (number | null)[] = [];
  resizes: { cols: number; rows: number }[] = [];
  logRequests: { authorization: string | undefined; url: string }[] = [];
  /** The token of every auth frame, in order (null: anonymous). */
  authTokens: (string | null)[] = [];
  /** Upgrades refused before the handshake, by code. */
  refusedUpgrades: string[] = [];

  constructor() {
    this.http = createServer((req, res) => this.#route(req, res));
    this.http.on('upgrade', (req: IncomingMessage, socket, head) => {
      const path = new URL(req.url ?? '/', 'http://x').pathname;
      if (path !== `/v1/guests/${GUEST}/console`) {
        socket.destroy();
        return;
      }
      try {
        checkOrigin(req.headers.origin, { scheme: 'http:', host: req.headers.host }, []);
      } catch (err) {
        // Refused before the upgrade, as the daemon does: HTTP status and JSON error body.
        const e = err as ConsoledError;
        this.refusedUpgrades.push(e.code);
        const body = JSON.stringify(e.toJSON());
        socket.end(
          `HTTP/1.1 ${e.httpStatus} Forbidden\r\nContent-Type: application/json\r\n` +
            `Content-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`,
        );
        return;
      }
      this.wss.handleUpgrade(req, socket, head, (ws) => this.#onConnection(ws, req));
    });
  }

  async start(): Promise<void> {
    await new Promise<void>((resolve) => this.http.listen(0, '127.0.0.1', resolve));
    this.port = (this.http.address() as AddressInfo).port;
  }

  async stop(): Promise<void> {
    for (const v of this.viewers) v.ws.terminate();
    await new Promise<void>((resolve) => this.wss.close(() => resolve()));
    this.http.closeAllConnections();
    await new Promise<void>((resolve) => this.http.close(() => resolve()));
  }

  url(path: string, host = '127.0.0.1'): string {
    return `http://${host}:${this.port}${path}`;
  }

  token(mode: ViewerMode, name?: string): string {
    return issueViewerToken(this.secret, { guest: GUEST, mode, ttlMs: 600_000, ...(name ? { name } : {}) });
  }

  /** Guest output: into the log and out to every viewer. */
  emit(data: string | Buffer): void {
    const bytes = typeof data === 'string' ? Buffer.from(data, 'utf8') : data;
    this.log = Buffer.concat([this.log, bytes]);
    for (const v of this.viewers) v.ws.send(bytes, { binary: true });
  }

  broadcast(message: object, except?: TestViewer): void {
    for (const v of this.viewers) if (v !== except) v.ws.send(JSON.stringify(message));
  }

  broadcastLock(except?: TestViewer): void {
    this.broadcast({ type: 'lock', writer: this.#writerInfo(), viewers: this.viewers.size }, except);
  }

  /** Cuts every console connection without a close frame, like a network failure. */
  dropAll(): void {
    for (const v of this.viewers) v.ws.terminate();
  }

  #writerInfo(): { viewerId: string; name?: string } | null {
    const w = this.writer;
    return w === null ? null : { viewerId: w.viewerId, ...(w.name !== undefined ? { name: w.name } : {}) };
  }

  #route(req: IncomingMessage, res: ServerResponse): void {
    const url = new URL(req.url ?? '/', 'http://x');
    const asset = consolePageAssets().get(url.pathname);
    if (asset !== undefined) {
      res.writeHead(200, { ...CONSOLE_ASSET_HEADERS, 'Content-Type': asset.contentType });
      res.end(asset.body);
    } else if (url.pathname === `/console/${GUEST}`) {
      res.writeHead(200, CONSOLE_PAGE_HEADERS);
      res.end(renderConsolePage(GUEST));
    } else if (url.pathname === `/console/${GUEST}/log`) {
      const authorization = req.headers.authorization;
      this.logRequests.push({ authorization, url: req.url ?? '' });
      try {
        if (this.requireAuth) {
          const token = /^Bearer (.+)$/.exec(authorization ?? '')?.[1];
          if (token === undefined) throw new ConsoledError('UNAUTHORIZED');
          verifyViewerToken(this.secret, token, {
            guest: GUEST,
            wantMode: 'ro',
            usedTokens: this.usedTokens,
          });
        }
        res.writeHead(200, { 'Content-Type': 'application/octet-stream', 'X-Consoled-Start': '0' });
        res.end(this.log);
      } catch (err) {
        const e = err as ConsoledError;
        res.writeHead(e.httpStatus, { 'Content-Type': 'application/json' });
        res.end(JSON.stringify(e.toJSON()));
      }
    } else if (url.pathname === '/blank') {
      res.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8' });
      res.end('<!doctype html><title>another site</title><p>another site</p>');
    } else {
      res.writeHead(404).end();
    }
  }

  #onConnection(ws: WebSocket, req: IncomingMessage): void {
    const query = new URL(req.url ?? '/', 'http://x').searchParams;
    const fromParam = query.get('from');
    const from = fromParam === null ? null : Number(fromParam);
    const modeParam = query.get('mode');
    const wantMode = modeParam === 'ro' || modeParam === 'rw' ? modeParam : undefined;
    this.froms.push(from);
    const authTimer = setTimeout(() => ws.close(4408, 'AUTH_TIMEOUT'), 5000);
    ws.once('message', (data: RawData, isBinary: boolean) => {
      clearTimeout(authTimer);
      let auth: { type?: unknown; token?: unknown };
      try {
        auth = isBinary ? {} : (JSON.parse(data.toString()) as typeof auth);
      } catch {
        auth = {};
      }
      if (auth.type !== 'auth') {
        ws.close(1008, 'BAD_REQUEST');
        return;
      }
      let mode: ViewerMode;
      let name: string | undefined;
      this.authTokens.push(typeof auth.token === 'string' ? auth.token : null);
      try {
        if (typeof auth.token === 'string') {
          const v = verifyViewerToken(this.secret, auth.token, {
            guest: GUEST,
            wantMode,
            usedTokens: this.usedTokens,
          });
          mode = v.mode;
          name = v.name;
        } else if (this.requireAuth) {
          throw new ConsoledError('UNAUTHORIZED');
        } else {
          mode = wantMode ?? 'rw';
        }
      } catch (err) {
        const e = err as ConsoledError;
        ws.close(e.wsCloseCode, e.code);
        return;
      }
      this.#admit(ws, mode, name, from);
    });
  }

  #admit(ws: WebSocket, mode: ViewerMode, name: string | undefined, from: number | null): void {
    const viewer: TestViewer = { ws, viewerId: `v${this.nextViewer++}`, name, mode };
    this.viewers.add(viewer);
    if (mode === 'rw' && this.writer === null) this.writer = viewer;
    const start = Math.min(this.log.length, from ?? Math.max(0, this.log.length - REPLAY_BYTES));
    ws.send(
      JSON.stringify({
        type: 'welcome',
        guest: GUEST,
        viewerId: viewer.viewerId,
        mode,
        boot: this.boot,
        offset: start,
        clamped: false,
        writer: this.#writerInfo(),
        viewers: this.viewers.size,
        canTakeover: true,
        resizable: true,
      }),
    );
    if (start < this.log.length) ws.send(this.log.subarray(start), { binary: true });
    this.broadcastLock(viewer);

    ws.on('message', (data: RawData, isBinary: boolean) => {
      const bytes = Buffer.isBuffer(data) ? data : Buffer.concat(data as Buffer[]);
      if (isBinary) {
        // A tty in cooked mode echoes what is typed, Enter as CR LF.
        if (this.writer === viewer) this.emit(bytes.toString('latin1').replaceAll('\r', '\r\n'));
        return;
      }
      const msg = JSON.parse(bytes.toString()) as { type: string; cols?: number; rows?: number };
      switch (msg.type) {
        case 'takeover':
        case 'acquire':
          if (mode !== 'rw') {
            ws.send(JSON.stringify({ type: 'error', code: 'TOKEN_WRONG_MODE', message: 'read-only' }));
          } else if (msg.type === 'takeover' || this.writer === null) {
            this.writer = viewer;
            this.broadcastLock();
          }
          break;
        case 'release':
          if (this.writer === viewer) {
            this.writer = null;
            this.broadcastLock();
          }
          break;
        case 'resize':
          if (this.writer === viewer) this.resizes.push({ cols: msg.cols ?? 0, rows: msg.rows ?? 0 });
          else
            ws.send(
              JSON.stringify({ type: 'error', code: 'NOT_WRITER', message: 'only the writer resizes' }),
            );
          break;
        case 'ping':
          ws.send(JSON.stringify({ type: 'pong' }));
          break;
      }
    });
    ws.on('close', () => {
      this.viewers.delete(viewer);
      if (this.writer === viewer) this.writer = null;
      this.broadcastLock();
    });
  }
}

/** A second, non-browser viewer (what the CLI client is on the wire). */
async function nodeViewer(server: ConsoleTestServer, token: string) {
  const ws = new WebSocket(`ws://127.0.0.1:${server.port}/v1/guests/${GUEST}/console`);
  const messages: { type: string; [k: string]: unknown }[] = [];
  ws.on('message', (data, isBinary) => {
    if (!isBinary) messages.push(JSON.parse(data.toString()) as (typeof messages)[number]);
  });
  await new Promise<void>((resolve, reject) => {
    ws.once('open', resolve);
    ws.once('error', reject);
  });
  ws.send(JSON.stringify({ type: 'auth', token }));
  await waitUntil(() => messages.some((m) => m.type === 'welcome'), 'welcome for the node viewer');
  return { ws, messages };
}

async function waitUntil(predicate: () => boolean, what: string, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
}

async function waitForText(page: Page, selector: string, expected: string | RegExp, timeoutMs = 10_000) {
  const deadline = Date.now() + timeoutMs;
  let text: string | null = null;
  for (;;) {
    text = await page.locator(selector).textContent();
    if (text !== null && (typeof expected === 'string' ? text === expected : expected.test(text)))
      return text;
    if (Date.now() > deadline) {
      throw new Error(
        `${selector} did not show ${String(expected)} within ${timeoutMs} ms; it shows ${text}`,
      );
    }
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
}

interface PageState {
  status: string;
  viewerId: string | null;
  mode: string | null;
  offset: number | null;
  skippedBytes: number;
  reconnects: number;
  hasToken: boolean;
}

function pageState(page: Page): Promise<PageState> {
  return page.evaluate('window.consoled.state') as Promise<PageState>;
}

const ARTIFACTS = fileURLToPath(new URL('../../test-artifacts/', import.meta.url));

describe('page assets', () => {
  it('serves xterm, the fit addon and the page files from node_modules and the source tree', () => {
    const assets = consolePageAssets();
    expect([...assets.keys()].sort()).toEqual(
      ['addon-fit.js', 'console.css', 'console.js', 'protocol-table.js', 'xterm.css', 'xterm.js'].map(
        (n) => `/console/assets/${n}`,
      ),
    );
    expect(assets.get('/console/assets/xterm.js')!.contentType).toMatch(/^text\/javascript/);
    expect(assets.get('/console/assets/xterm.css')!.contentType).toMatch(/^text\/css/);
    expect(assets.get('/console/assets/xterm.js')!.body.length).toBeGreaterThan(100_000);
    expect(assets.get('/console/assets/addon-fit.js')!.body.toString()).toContain('FitAddon');
    // From the source tree the close-code table is rendered from protocol.ts itself.
    const table = assets.get('/console/assets/protocol-table.js')!;
    expect(table.contentType).toMatch(/^text\/javascript/);
    expect(table.body.toString('utf8')).toBe(pageProtocolScript());
  });

  it('renders the page with the guest id escaped and no inline script', () => {
    const html = renderConsolePage('vm-1.a_b');
    expect(html).toContain('data-guest="vm-1.a_b"');
    expect(html).not.toContain('{{');
    expect(renderConsolePage('"><script>x</script>')).not.toContain('<script>x');
    expect(escapeHtml(`<a href="x">'&'</a>`)).toBe('&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;');
    expect(html).not.toMatch(/<script(?![^>]*\bsrc=)[^>]*>/);
    expect(html).not.toMatch(/\son[a-z]+=/);
    expect(CONSOLE_PAGE_CSP).toContain("script-src 'self'");
    expect(CONSOLE_PAGE_CSP).toContain("frame-ancestors 'none'");
  });
});

const unavailable = chromiumUnavailableReason();

describe.skipIf(!chromiumAvailable())(
  `console page in headless Chromium${unavailable ? ` (${unavailable})` : ''}`,
  () => {
    const server = new ConsoleTestServer();
    let browser: Browser;
    let context: BrowserContext | undefined;
    const pageErrors: string[] = [];

    beforeAll(async () => {
      await server.start();
      browser = await launchChromium();
    });

    afterAll(async () => {
      await context?.close();
      await browser?.close();
      await server.stop();
    });

    /** A fresh browser profile per test (own sessionStorage), collecting console errors and CSP violations. */
    async function openPage(path: string, host?: string): Promise<Page> {
      await context?.close();
      // The previous page's viewer must be gone from the server first: if it held the lock, a
      // late close would leave this page watching instead of writing.
      await waitUntil(() => server.viewers.size === 0, 'the previous viewers to leave');
      context = await browser.newContext({ viewport: { width: 1100, height: 640 }, acceptDownloads: true });
      const page = await context.newPage();
      pageErrors.length = 0;
      page.on('console', (msg) => {
        if (msg.type() === 'error') pageErrors.push(msg.text());
      });
      page.on('pageerror', (err) => pageErrors.push(String(err)));
      await page.goto(server.url(path, host));
      return page;
    }

    async function waitConnected(page: Page): Promise<void> {
      await waitForText(page, '#status', 'connected');
    }

    it('connects with a #token, replays recent output, echoes typed keys and shows the status line', async () => {
      server.emit(
        '\x1b[1;32mSeaBIOS\x1b[0m (version 1.16.3)\r\nBooting from Hard Disk...\r\n\r\n' +
          'Debian GNU/Linux 12 g1 ttyS0\r\n\r\ng1 login: ',
      );
      const page = await openPage(`/console/${GUEST}#token=${server.token('rw', 'alice')}`);
      await waitConnected(page);
      // The token left the address bar, and stays for reloads in this tab only.
      expect(page.url()).toBe(server.url(`/console/${GUEST}`));
      await waitForText(page, '#mode', 'writer');
      await waitForText(page, '#boot', 'boot 1');
      await waitForText(page, '#viewers', '1 viewer');
      await waitForText(page, '#skipped', 'skipped 0 B');
      await waitForTerminalText(page, 'g1 login:');

      await page.locator('#terminal').click();
      await page.keyboard.type('hello');
      await waitForTerminalText(page, 'g1 login: hello');
      await page.keyboard.press('Enter');
      // The prompt follows the echo of Enter, as a tty's would.
      await waitFor('the echo of Enter', () => server.log.toString('latin1').endsWith('hello\r\n'));
      server.emit('Password: ');
      await waitForTerminalText(page, /g1 login: hello\nPassword:/);

      const state = await pageState(page);
      expect(state).toMatchObject({
        status: 'connected',
        mode: 'rw',
        offset: server.log.length,
        hasToken: true,
      });

      // The terminal fills the window below the status bar.
      const geometry = (await page.evaluate(`(() => {
      const bar = document.getElementById('bar').getBoundingClientRect();
      const screen = document.querySelector('#terminal .xterm-screen').getBoundingClientRect();
      const t = window.consoled.term;
      return { barHeight: bar.height, screenWidth: screen.width, screenBottom: screen.bottom,
               width: innerWidth, height: innerHeight, cols: t.cols, rows: t.rows };
    })()`)) as Record<string, number>;
      expect(geometry['cols']).toBeGreaterThan(100);
      expect(geometry['rows']).toBeGreaterThan(25);
      expect(geometry['screenWidth']).toBeGreaterThan(geometry['width']! - 40);
      expect(geometry['screenBottom']).toBeGreaterThan(geometry['height']! - 40);
      // As the writer of a resizable source, the page told the server its size.
      await waitUntil(() => server.resizes.length > 0, 'a resize message');
      expect(server.resizes.at(-1)).toEqual({ cols: geometry['cols'], rows: geometry['rows'] });

      mkdirSync(ARTIFACTS, { recursive: true });
      await page.screenshot({ path: `${ARTIFACTS}console-page.png` });
      expect(pageErrors).toEqual([]);
    });

    it('follows the lock: watching while another viewer writes, Take lock, Release', async () => {
      const page = await openPage(`/console/${GUEST}#token=${server.token('rw', 'alice')}`);
      await waitConnected(page);
      await waitForText(page, '#mode', 'writer');
      const bob = await nodeViewer(server, server.token('rw', 'bob'));
      await waitForText(page, '#viewers', '2 viewers');

      bob.ws.send(JSON.stringify({ type: 'takeover' }));
      await waitForText(page, '#mode', 'watching (writer: bob)');
      expect(await page.locator('#take-lock').isEnabled()).toBe(true);
      expect(await page.locator('#release').isEnabled()).toBe(false);
      await waitForText(page, '#notice', 'bob took the writer lock');

      // A watcher's keystrokes are not sent (only the writer's reach the guest).
      const before = server.log.length;
      await page.locator('#terminal').click();
      await page.keyboard.type('ignored');
      await waitForText(page, '#notice', 'watching: take the lock to type');
      expect(server.log.length).toBe(before);

      await page.locator('#take-lock').click();
      await waitForText(page, '#mode', 'writer');
      await waitUntil(
        () =>
          bob.messages.some(
            (m) => m.type === 'lock' && (m['writer'] as { name?: string } | null)?.name === 'alice',
          ),
        'bob told alice holds the lock',
      );
      await page.locator('#release').click();
      await waitForText(page, '#mode', 'watching (writer: nobody)');
      // With the lock free, "Take lock" acquires it.
      await page.locator('#take-lock').click();
      await waitForText(page, '#mode', 'writer');

      bob.ws.close();
      await waitForText(page, '#viewers', '1 viewer');
      expect(pageErrors).toEqual([]);
    });

    it('counts skipped bytes, shows boot and guest messages, and resumes after a drop without gap or duplicate', async () => {
      // A single-use token: the reconnect must use the token the server hands out instead.
      const once = issueViewerToken(server.secret, {
        guest: GUEST,
        mode: 'rw',
        ttlMs: 60_000,
        singleUse: true,
      });
      const page = await openPage(`/console/${GUEST}#token=${once}`);
      await waitConnected(page);
      server.emit('\r\nbefore-drop-1\r\n');
      await waitForTerminalText(page, 'before-drop-1');

      const pageViewer = [...server.viewers].at(-1)!;
      pageViewer.ws.send(JSON.stringify({ type: 'skipped', bytes: 4096, offset: server.log.length }));
      await waitForText(page, '#skipped', 'skipped 4.0 KiB');
      expect((await pageState(page)).skippedBytes).toBe(4096);

      server.boot = 2;
      server.broadcast({ type: 'boot', boot: 2, offset: server.log.length });
      await waitForText(page, '#boot', 'boot 2');
      server.broadcast({ type: 'guest', state: 'disconnected', reason: 'chardev closed' });
      await waitForText(page, '#guest-state', 'guest disconnected');
      await waitForTerminalText(page, '[console] guest disconnected: chardev closed');
      server.broadcast({ type: 'guest', state: 'connected' });
      await waitForText(page, '#guest-state', 'guest connected');

      const renewed = server.token('rw', 'alice');
      pageViewer.ws.send(
        JSON.stringify({ type: 'token', token: renewed, exp: Math.ceil(Date.now() / 1000) + 600 }),
      );
      await page.waitForFunction(
        `sessionStorage.getItem('consoled-token:${GUEST}') === ${JSON.stringify(renewed)}`,
      );
      const connections = server.froms.length;
      const offsetAtDrop = server.log.length;
      server.dropAll();
      await waitUntil(() => server.froms.length > connections, 'the page to reconnect');
      expect(server.froms.at(-1)).toBe(offsetAtDrop);
      await waitConnected(page);
      expect(server.authTokens.slice(-2)).toEqual([once, renewed]);
      server.emit('after-reconnect-1\r\n');
      const text = await waitForTerminalText(page, 'after-reconnect-1');
      expect(text.split('before-drop-1').length - 1).toBe(1);
      expect(text.split('after-reconnect-1').length - 1).toBe(1);
      const state = await pageState(page);
      expect(state.reconnects).toBe(1);
      expect(state.offset).toBe(server.log.length);
      // Chromium logs an aborted connection as an error; nothing else may appear.
      expect(pageErrors.filter((e) => !/WebSocket/.test(e))).toEqual([]);
    });

    it('downloads the log with the viewer token in an Authorization header', async () => {
      const token = server.token('ro', 'auditor');
      const page = await openPage(`/console/${GUEST}#token=${token}`);
      await waitConnected(page);
      await waitForText(page, '#mode', /^watching \(writer: nobody\) · read-only$/);
      expect(await page.locator('#take-lock').isEnabled()).toBe(false);
      const [download] = await Promise.all([
        page.waitForEvent('download'),
        page.locator('#download').click(),
      ]);
      expect(download.suggestedFilename()).toBe(`${GUEST}-console.log`);
      const body = readFileSync(await download.path());
      expect(body.equals(server.log)).toBe(true);
      const request = server.logRequests.at(-1)!;
      expect(request.authorization).toBe(`Bearer ${token}`);
      expect(request.url).toContain('start=0');
      expect(pageErrors).toEqual([]);
    });

    it('asks for a token when the server needs one and none was given', async () => {
      const page = await openPage(`/console/${GUEST}`);
      await waitForText(page, '#status', 'token needed');
      expect(await page.locator('#auth-form').isVisible()).toBe(true);
      await waitForText(page, '#auth-reason', 'This console needs a viewer token.');
      await page.locator('#token-input').fill(server.token('rw'));
      await page.locator('#token-submit').click();
      await waitConnected(page);
      expect(await page.locator('#auth-form').isVisible()).toBe(false);
      expect(pageErrors).toEqual([]);
    });

    it('asks again, naming the code, when the token is refused', async () => {
      const page = await openPage(`/console/${GUEST}#token=not-a-token`);
      await waitForText(page, '#status', 'token needed');
      // 4401 is UNAUTHORIZED and TOKEN_INVALID: the page goes by the close reason.
      await waitForText(
        page,
        '#auth-reason',
        `The token was refused: TOKEN_INVALID. ${ERROR_CODES.TOKEN_INVALID.text}`,
      );
      expect((await pageState(page)).hasToken).toBe(false);
      const wrongGuest = issueViewerToken(server.secret, { guest: 'g2', mode: 'rw', ttlMs: 60_000 });
      await page.locator('#token-input').fill(wrongGuest);
      await page.locator('#token-submit').click();
      // 4403 alone would read FORBIDDEN, which stops the page instead of asking for a token.
      await waitForText(
        page,
        '#auth-reason',
        `The token was refused: TOKEN_WRONG_GUEST. ${ERROR_CODES.TOKEN_WRONG_GUEST.text}`,
      );
      expect(pageErrors).toEqual([]);
    });

    it('without a close reason falls back to the close code', async () => {
      const page = await openPage(`/console/${GUEST}#token=${server.token('rw')}`);
      await waitConnected(page);
      [...server.viewers].at(-1)!.ws.close(4403);
      await waitForText(page, '#status', 'closed: FORBIDDEN');
      await waitForTerminalText(page, `connection closed: FORBIDDEN (${ERROR_CODES.FORBIDDEN.text})`);
      expect(pageErrors).toEqual([]);
    });

    it('connects without a token when the server runs without auth', async () => {
      server.requireAuth = false;
      try {
        const page = await openPage(`/console/${GUEST}`);
        await waitConnected(page);
        expect((await pageState(page)).hasToken).toBe(false);
        await waitForText(page, '#mode', 'writer');
      } finally {
        server.requireAuth = true;
      }
    });

    it('a page of another origin cannot open the console WebSocket (cross-site WebSocket hijacking)', async () => {
      // Same server, other origin: http://localhost:<port> is not http://127.0.0.1:<port>.
      const page = await openPage('/blank', 'localhost');
      const closed = (await page.evaluate(`new Promise((resolve) => {
      const ws = new WebSocket('ws://127.0.0.1:${server.port}/v1/guests/${GUEST}/console');
      ws.onopen = () => ws.send(JSON.stringify({ type: 'auth', token: ${JSON.stringify(server.token('rw'))} }));
      let got = [];
      ws.onmessage = (e) => got.push(String(e.data));
      ws.onclose = (e) => resolve({ code: e.code, reason: e.reason, got });
    })`)) as { code: number; reason: string; got: string[] };
      // A browser hides the HTTP refusal: the socket never opens and nothing is received.
      expect(closed).toEqual({ code: 1006, reason: '', got: [] });
      expect(server.refusedUpgrades).toEqual(['ORIGIN_FORBIDDEN']);
      // The same origin (the page on localhost talking to localhost) is allowed.
      const same = (await page.evaluate(`new Promise((resolve) => {
        const ws = new WebSocket('ws://localhost:${server.port}/v1/guests/${GUEST}/console');
        ws.onopen = () => { resolve('open'); ws.close(); };
        ws.onclose = () => resolve('closed');
      })`)) as string;
      expect(same).toBe('open');
    });

    it('stops after an idle-timeout close and reconnects from the Reconnect button', async () => {
      const page = await openPage(`/console/${GUEST}#token=${server.token('rw', 'alice')}`);
      await waitConnected(page);
      expect(await page.locator('#reconnect').isVisible()).toBe(false);
      const connections = server.froms.length;
      [...server.viewers].at(-1)!.ws.close(4409, 'IDLE_TIMEOUT');
      await waitForText(page, '#status', 'closed: IDLE_TIMEOUT');
      await new Promise((resolve) => setTimeout(resolve, 1500));
      expect(server.froms.length).toBe(connections); // no retry by itself
      await page.locator('#reconnect').click();
      await waitConnected(page);
      expect(server.froms.length).toBe(connections + 1);
      expect(await page.locator('#reconnect').isVisible()).toBe(false);
      expect(pageErrors).toEqual([]);
    });
  },
);
