/**
 * The browser console page served at `GET /console/{id}` and its static assets
 * under `/console/assets/`. xterm.js and its fit addon come from node_modules, so
 * the page needs no CDN and works on an isolated host.
 *
 * The page's own files live in `./page/`. When the daemon runs from a `tsc` build,
 * `dist/sidecar/console/` holds no `page/` (tsc copies no assets), so the source tree
 * is looked up as well. The page's close-code table, `protocol-table.js`, is written
 * there by `npm run build` from protocol.ts; from the source tree it is rendered from
 * that module here.
 */
import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { PAGE_PROTOCOL_FILE, pageProtocolScript } from './protocol.js';

export interface PageAsset {
  contentType: string;
  body: Buffer;
}

/** Path prefix of every asset; `consolePageAssets()` keys start with it. */
export const CONSOLE_ASSET_PREFIX = '/console/assets/';

/**
 * Content-Security-Policy for the page. Scripts only from this origin (no inline
 * script, no eval), network only back to this origin (`'self'` covers ws:/wss: to
 * the same host in CSP3), never framed (clickjacking a writer's keystrokes).
 * `style-src 'unsafe-inline'` is needed because xterm.js writes its theme and cell
 * sizes into `<style>` elements it creates at run time; styles cannot run script.
 */
export const CONSOLE_PAGE_CSP = [
  "default-src 'none'",
  "script-src 'self'",
  "style-src 'self' 'unsafe-inline'",
  "connect-src 'self'",
  "img-src 'self' data: blob:",
  "font-src 'self'",
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'",
].join('; ');

/** Headers to send with the page (`renderConsolePage`). */
export const CONSOLE_PAGE_HEADERS: Readonly<Record<string, string>> = Object.freeze({
  'Content-Type': 'text/html; charset=utf-8',
  'Content-Security-Policy': CONSOLE_PAGE_CSP,
  'X-Content-Type-Options': 'nosniff',
  // The token travels in the fragment, which is never in a Referer; this is belt and braces.
  'Referrer-Policy': 'no-referrer',
  'Cache-Control': 'no-store',
  'Cross-Origin-Opener-Policy': 'same-origin',
});

/** Headers to send with an asset, besides its Content-Type. */
export const CONSOLE_ASSET_HEADERS: Readonly<Record<string, string>> = Object.freeze({
  'X-Content-Type-Options': 'nosniff',
  'Cache-Control': 'no-cache',
});

const GUEST_PLACEHOLDER = '{{GUEST_ID}}';
const JS = 'text/javascript; charset=utf-8';
const CSS = 'text/css; charset=utf-8';

function pageDir(): string {
  const candidates = [
    new URL('./page/', import.meta.url),
    new URL('../../../sidecar/console/page/', import.meta.url),
  ];
  for (const dir of candidates) {
    const path = fileURLToPath(dir);
    if (existsSync(`${path}console.html`)) return path;
  }
  throw new Error(
    `console page assets not found (looked in ${candidates.map((u) => fileURLToPath(u)).join(', ')})`,
  );
}

let cachedAssets: ReadonlyMap<string, PageAsset> | undefined;
let cachedTemplate: string | undefined;

/**
 * Every static asset of the console page, keyed by request path
 * (`/console/assets/xterm.js`, `xterm.css`, `addon-fit.js`, `protocol-table.js`,
 * `console.js`, `console.css`). Read from disk once, then served from memory.
 */
export function consolePageAssets(): ReadonlyMap<string, PageAsset> {
  if (cachedAssets !== undefined) return cachedAssets;
  const require = createRequire(import.meta.url);
  const dir = pageDir();
  const files: [string, string, string][] = [
    ['xterm.js', require.resolve('@xterm/xterm/lib/xterm.js'), JS],
    ['xterm.css', require.resolve('@xterm/xterm/css/xterm.css'), CSS],
    ['addon-fit.js', require.resolve('@xterm/addon-fit/lib/addon-fit.js'), JS],
    ['console.js', `${dir}console.js`, JS],
    ['console.css', `${dir}console.css`, CSS],
  ];
  const assets = new Map<string, PageAsset>();
  for (const [name, path, contentType] of files) {
    assets.set(CONSOLE_ASSET_PREFIX + name, { contentType, body: readFileSync(path) });
  }
  const table = `${dir}${PAGE_PROTOCOL_FILE}`;
  assets.set(CONSOLE_ASSET_PREFIX + PAGE_PROTOCOL_FILE, {
    contentType: JS,
    body: existsSync(table) ? readFileSync(table) : Buffer.from(pageProtocolScript(), 'utf8'),
  });
  cachedAssets = assets;
  return assets;
}

const HTML_ESCAPES: Record<string, string> = {
  '&': '&amp;',
  '<': '&lt;',
  '>': '&gt;',
  '"': '&quot;',
  "'": '&#39;',
};

/** Escapes text for HTML element content and quoted attribute values. */
export function escapeHtml(text: string): string {
  return text.replace(/[&<>"']/g, (c) => HTML_ESCAPES[c]!);
}

/**
 * The console page for one guest. The id should already be validated by the router;
 * it is escaped here regardless. Send it with {@link CONSOLE_PAGE_HEADERS}.
 */
export function renderConsolePage(guestId: string): string {
  cachedTemplate ??= readFileSync(`${pageDir()}console.html`, 'utf8');
  return cachedTemplate.split(GUEST_PLACEHOLDER).join(escapeHtml(guestId));
}
