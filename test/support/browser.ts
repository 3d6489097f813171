/**
 * Real headless Chromium for browser tests, driven by playwright-core. Uses the
 * system's Debian chromium; nothing is ever downloaded.
 */
import { accessSync, constants } from 'node:fs';
import { type Browser, chromium, type Page } from 'playwright-core';

/** The browser binary; `CONSOLED_CHROMIUM` overrides it. */
export const CHROMIUM_PATH = process.env['CONSOLED_CHROMIUM'] ?? '/usr/bin/chromium';

const CHROMIUM_ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-background-networking',
  '--disable-component-update',
  '--no-first-run',
];

/** Why Chromium cannot run here, or null when it can. Use with `describe.skipIf`. */
export function chromiumUnavailableReason(): string | null {
  try {
    accessSync(CHROMIUM_PATH, constants.X_OK);
    return null;
  } catch {
    return `no executable Chromium at ${CHROMIUM_PATH} (set CONSOLED_CHROMIUM)`;
  }
}

/** Whether Chromium can run here. */
export function chromiumAvailable(): boolean {
  return chromiumUnavailableReason() === null;
}

/** Launches headless Chromium; close it in `afterAll`. */
export async function launchChromium(): Promise<Browser> {
  return chromium.launch({ executablePath: CHROMIUM_PATH, headless: true, args: CHROMIUM_ARGS });
}

/**
 * The console page's terminal buffer as text, one line per row, trailing blanks
 * trimmed; reads `window.consoled.term` (sidecar/console/page/console.js).
 */
export async function terminalText(page: Page): Promise<string> {
  return page.evaluate(() => {
    interface XtermLine {
      translateToString(trimRight?: boolean): string;
    }
    interface XtermLike {
      buffer: { active: { length: number; getLine(i: number): XtermLine | undefined } };
    }
    const term = (globalThis as unknown as { consoled?: { term: XtermLike } }).consoled?.term;
    if (term === undefined) throw new Error('window.consoled.term is not there (is this the console page?)');
    const buffer = term.buffer.active;
    const lines: string[] = [];
    for (let i = 0; i < buffer.length; i++) lines.push(buffer.getLine(i)?.translateToString(true) ?? '');
    return lines.join('\n').trimEnd();
  });
}

/** Waits until the terminal text satisfies `predicate` (a substring or a test). */
export async function waitForTerminalText(
  page: Page,
  expected: string | RegExp | ((text: string) => boolean),
  timeoutMs = 10_000,
): Promise<string> {
  const test =
    typeof expected === 'string'
      ? (t: string) => t.includes(expected)
      : expected instanceof RegExp
        ? (t: string) => expected.test(t)
        : expected;
  const deadline = Date.now() + timeoutMs;
  let text = '';
  for (;;) {
    text = await terminalText(page);
    if (test(text)) return text;
    if (Date.now() > deadline) {
      throw new Error(
        `terminal text did not match ${String(expected)} within ${timeoutMs} ms; it was:\n${text}`,
      );
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

/** A shell under a pty, prompting `guest$ `: the guest the browser tests type into. */
export const SHELL_GUEST_SOURCE = {
  type: 'exec',
  command: ['/bin/sh', '-i'],
  env: { PATH: '/usr/bin:/bin', PS1: 'guest$ ', TERM: 'xterm-256color', HOME: '/tmp' },
} as const;
