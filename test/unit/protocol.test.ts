/**
 * sidecar/console/protocol.ts on its own: the close-code table holds every error's
 * close code, a close is explained by its reason before its code, client frames
 * are parsed with the codes the server always answered, and the page's
 * protocol-table.js (written by scripts/gen-protocol-table.mjs from the built
 * module) is exactly the module's table. The daemon-level protocol is in
 * integration/console-protocol.test.ts.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { runInNewContext } from 'node:vm';
import { afterAll, describe, expect, it } from 'vitest';
import { ConsoledError, ERROR_CODES, type ErrorCode } from '../../common/errors.js';
import {
  CLOSE_CODES,
  explainClose,
  PAGE_PROTOCOL_FILE,
  pageProtocolScript,
  pageProtocolTable,
  parseAuthFrame,
  parseClientMessage,
  RENEWAL_TIMING,
  renewalDelayMs,
  resizeSize,
  SHARED_CLOSE_FALLBACK,
} from '../../sidecar/console/protocol.js';
import { DIST_DIR, REPO_ROOT } from '../support/daemon.js';
import { removeTmpDirs, tmpDir } from '../support/tmp.js';

afterAll(async () => {
  await removeTmpDirs();
});

const errorCodes = Object.keys(ERROR_CODES) as ErrorCode[];

function refusal(f: () => unknown): { code: string; message: string } {
  try {
    f();
  } catch (err) {
    expect(err).toBeInstanceOf(ConsoledError);
    const e = err as ConsoledError;
    return { code: e.code, message: e.message };
  }
  throw new Error('expected a refusal');
}

/** Runs a generated protocol-table.js as the page does and returns what it put on window. */
function runPageScript(text: string): unknown {
  const window: Record<string, unknown> = {};
  runInNewContext(text, { window });
  return JSON.parse(JSON.stringify(window['consoledProtocol']));
}

describe('the close-code table', () => {
  it('holds every error’s close code, listing the error under it', () => {
    for (const code of errorCodes) {
      const entry = CLOSE_CODES[ERROR_CODES[code].ws];
      expect(entry, code).toBeDefined();
      expect(entry!.errors).toContain(code);
    }
  });

  it('names each shared close code after one of its errors, and each unshared one after its only error', () => {
    const shared = new Set<number>();
    for (const [ws, entry] of Object.entries(CLOSE_CODES)) {
      if (entry.errors.length > 1) shared.add(Number(ws));
      if (entry.errors.length === 1) expect(entry.name).toBe(entry.errors[0]);
      if (entry.errors.length > 0) {
        expect(entry.errors).toContain(entry.name);
        expect(entry.text).toBe(ERROR_CODES[entry.name as ErrorCode].text);
      }
    }
    // The codes the finding names, and no fallback left for a code no longer shared.
    expect([...shared].sort()).toEqual(expect.arrayContaining([1008, 1013, 4401, 4403, 4404]));
    expect(Object.keys(SHARED_CLOSE_FALLBACK).map(Number).sort()).toEqual([...shared].sort());
  });

  it('explains the standard closes the clients meet', () => {
    for (const ws of [1001, 1006, 1011, 1012]) expect(CLOSE_CODES[ws]?.text, String(ws)).toMatch(/\w/);
    expect(CLOSE_CODES[1001]!.name).toBe('SHUTTING_DOWN');
    expect(CLOSE_CODES[1006]!.name).toBe('CONNECTION_LOST');
  });
});

describe('explainClose', () => {
  it('reads the reason first: 4401 with TOKEN_INVALID is TOKEN_INVALID, not UNAUTHORIZED', () => {
    expect(explainClose(4401, 'TOKEN_INVALID')).toEqual({
      code: 'TOKEN_INVALID',
      text: ERROR_CODES.TOKEN_INVALID.text,
    });
    expect(explainClose(4403, 'TOKEN_WRONG_GUEST')?.code).toBe('TOKEN_WRONG_GUEST');
    // A code added after this client was built still comes through, without a text.
    expect(explainClose(4499, 'SOMETHING_NEW')).toEqual({ code: 'SOMETHING_NEW', text: '' });
  });

  it('falls back to the close code, and to CLOSED_<code> for one it does not know', () => {
    expect(explainClose(4401, '')).toEqual({ code: 'UNAUTHORIZED', text: ERROR_CODES.UNAUTHORIZED.text });
    expect(explainClose(1008, '')?.code).toBe('BAD_REQUEST');
    expect(explainClose(1006, '')?.code).toBe('CONNECTION_LOST');
    expect(explainClose(4000, 'stale')).toEqual({ code: 'CLOSED_4000', text: 'stale' });
  });

  it('takes 1000 and 1005 for normal closes', () => {
    expect(explainClose(1000, '')).toBeNull();
    expect(explainClose(1005, '')).toBeNull();
  });
});

describe('client frames', () => {
  it('parses the auth frame with the codes the server always answered', () => {
    expect(parseAuthFrame(Buffer.from('{"type":"auth","token":"abc"}'), false)).toBe('abc');
    expect(parseAuthFrame(Buffer.from('{"type":"auth"}'), false)).toBeUndefined();
    expect(refusal(() => parseAuthFrame(Buffer.from('{"type":"auth"}'), true)).code).toBe('UNAUTHORIZED');
    expect(refusal(() => parseAuthFrame(Buffer.from('{nope'), false)).code).toBe('BAD_JSON');
    expect(refusal(() => parseAuthFrame(Buffer.from('{"type":"ping"}'), false)).code).toBe('UNAUTHORIZED');
    expect(refusal(() => parseAuthFrame(Buffer.from('null'), false)).code).toBe('UNAUTHORIZED');
    expect(refusal(() => parseAuthFrame(Buffer.from('{"type":"auth","token":7}'), false)).code).toBe(
      'TOKEN_INVALID',
    );
  });

  it('parses control messages, refusing what is not one', () => {
    for (const type of ['acquire', 'takeover', 'release', 'ping', 'renew'] as const)
      expect(parseClientMessage(JSON.stringify({ type, extra: 1 }))).toEqual({ type });
    expect(parseClientMessage('{"type":"resize","cols":80,"rows":"x"}')).toEqual({
      type: 'resize',
      cols: 80,
      rows: 'x',
    });
    expect(refusal(() => parseClientMessage('not json')).code).toBe('BAD_JSON');
    expect(refusal(() => parseClientMessage('[1]')).code).toBe('BAD_REQUEST');
    expect(refusal(() => parseClientMessage('{"type":3}')).code).toBe('BAD_REQUEST');
    expect(refusal(() => parseClientMessage('{"type":"auth","token":"t"}'))).toEqual({
      code: 'BAD_REQUEST',
      message: 'already authenticated',
    });
    expect(refusal(() => parseClientMessage(`{"type":"${'x'.repeat(100)}"}`)).message).toBe(
      `unknown message type "${'x'.repeat(40)}"`,
    );
  });

  it('checks a resize’s size: integers from 1 to 1000', () => {
    expect(resizeSize({ cols: 1, rows: 1000 })).toEqual({ cols: 1, rows: 1000 });
    for (const bad of [0, 1001, 1.5, '80', null, undefined])
      expect(refusal(() => resizeSize({ cols: bad, rows: 24 })).code).toBe('BAD_PARAMETER');
  });
});

describe('when a client renews its token', () => {
  const T = 1_700_000_000; // seconds, as in a token

  it('at 80 % of the lifetime or 30 s before expiry, whichever is earlier, never before half of it', () => {
    // 5 minutes: 30 s before is later than 80 % (4 min): at 4 min.
    expect(renewalDelayMs({ iat: T, exp: T + 300, ren: T + 43_200 }, T * 1000, false)).toBe(240_000);
    // 1 minute: 80 % is at 48 s, 30 s before at 30 s: the earlier.
    expect(renewalDelayMs({ iat: T, exp: T + 60, ren: T + 3600 }, T * 1000, false)).toBe(30_000);
    // 4 seconds: 30 s before would be before it was issued: at half of it.
    expect(renewalDelayMs({ iat: T, exp: T + 4, ren: T + 60 }, T * 1000, false)).toBe(2_000);
    // By the clock, part of the lifetime has passed already.
    expect(renewalDelayMs({ iat: T, exp: T + 300, ren: T + 43_200 }, (T + 100) * 1000, false)).toBe(140_000);
  });

  it('counts a fresh renewal from its receipt, and a clock that runs ahead or behind does not spin or stall', () => {
    const claims = { iat: T, exp: T + 300, ren: T + 43_200 };
    expect(renewalDelayMs(claims, (T + 1000) * 1000, true)).toBe(240_000);
    // Ahead by far: at once (once; the answer is fresh), not in a negative time.
    expect(renewalDelayMs(claims, (T + 1000) * 1000, false)).toBe(0);
    // Behind by far: no later than a fresh token would wait.
    expect(renewalDelayMs(claims, (T - 1000) * 1000, false)).toBe(240_000);
  });

  it('not at all when no renewal can extend the token', () => {
    expect(renewalDelayMs({ iat: T, exp: T + 300 }, T * 1000, false)).toBeNull();
    expect(renewalDelayMs({ iat: T, exp: T + 300, ren: T + 300 }, T * 1000, true)).toBeNull();
  });

  it('gives the page the same timing', () => {
    expect(pageProtocolTable().renewal).toEqual(RENEWAL_TIMING);
  });
});

describe('the page’s protocol-table.js', () => {
  it('is the module’s table, as the generator writes it from the build', () => {
    const out = tmpDir('protocol-table');
    execFileSync(process.execPath, [join(REPO_ROOT, 'scripts/gen-protocol-table.mjs'), out]);
    const written = readFileSync(join(out, PAGE_PROTOCOL_FILE), 'utf8');
    expect(written).toBe(pageProtocolScript());
    expect(runPageScript(written)).toEqual(pageProtocolTable());
  });

  it('is in the build beside console.js (npm run build)', () => {
    const built = join(DIST_DIR, 'sidecar/console/page', PAGE_PROTOCOL_FILE);
    expect(existsSync(built), `${built} is missing: run npm run build`).toBe(true);
    expect(readFileSync(built, 'utf8')).toBe(pageProtocolScript());
    expect(existsSync(join(DIST_DIR, 'sidecar/console/page/console.js'))).toBe(true);
  });

  it('gives the page every close code, and console.js keeps no table of its own', () => {
    const table = pageProtocolTable();
    for (const code of errorCodes) {
      expect(table.closeCodes[String(ERROR_CODES[code].ws)], code).toBeDefined();
      expect(table.errors[code]).toBe(ERROR_CODES[code].text);
    }
    const page = readFileSync(join(REPO_ROOT, 'sidecar/console/page/console.js'), 'utf8');
    expect(page).not.toMatch(/\b(?:1\d{3}|4\d{3})\s*:\s*'/);
    const html = readFileSync(join(REPO_ROOT, 'sidecar/console/page/console.html'), 'utf8');
    expect(html.indexOf(`/console/assets/${PAGE_PROTOCOL_FILE}`)).toBeGreaterThan(-1);
    expect(html.indexOf(`/console/assets/${PAGE_PROTOCOL_FILE}`)).toBeLessThan(
      html.indexOf('/console/assets/console.js'),
    );
  });
});
