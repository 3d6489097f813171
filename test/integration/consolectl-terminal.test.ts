/**
 * `consolectl logs` (the built binary) on a real terminal (a node-pty pseudo-terminal)
 * against the running built daemon, whose guest printed an OSC 52 clipboard write, a
 * window title, a title report request (`CSI 21 t`) and colour: on the terminal only the
 * colour arrives as it is and the rest shows escaped (`\x1b]52;…`), with and without
 * `-f` (output logged before, and output that arrives while it follows); `--raw` writes the
 * bytes exactly; with stdout not a terminal nothing changes.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import * as pty from 'node-pty';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  CONSOLECTL_BIN,
  type DaemonHandle,
  REPO_ROOT,
  readWholeLog,
  runConsolectl,
  startDaemon,
  stopAllDaemons,
} from '../support/daemon.js';
import { removeTmpDirs, tmpDir } from '../support/tmp.js';
import { waitFor } from '../support/wait.js';

// What the guest prints, as printf formats (\033 is ESC, \007 BEL).
const FIRST =
  'START \\033[31mRED\\033[0m clip:\\033]52;c;cHduZWQ=\\007 title:\\033]0;TITLE\\007 report:\\033[21t FIRST-END\\n';
const SECOND = 'LIVE \\033]52;c;bGl2ZQ==\\007 LIVE-END\\n';

let d: DaemonHandle;
const terminals = new Set<pty.IPty>();

beforeAll(async () => {
  d = await startDaemon();
  // Two writes a second apart: the log holds them as two chunks.
  await d.json('PUT', '/v1/guests/evil', {
    source: {
      type: 'exec',
      command: ['/bin/sh', '-c', `printf '${FIRST}'; sleep 1; printf '${SECOND}'; exec sleep 600`],
    },
  });
  await waitFor('both lines in the log', async () =>
    (await readWholeLog(d, 'evil')).bytes.toString('latin1').includes('LIVE-END'),
  );
});

afterAll(async () => {
  for (const t of terminals) t.kill();
  await stopAllDaemons();
  await removeTmpDirs();
});

/**
 * Runs consolectl on a pseudo-terminal until `until` matches what it wrote, or it exits;
 * `onOutput` sees the output as it grows (to act on the guest while consolectl runs).
 */
async function onTerminal(
  args: string[],
  until?: (out: string) => boolean,
  guest = 'evil',
  onOutput?: (out: string) => void,
): Promise<string> {
  const term = pty.spawn(
    process.execPath,
    [CONSOLECTL_BIN, '--url', d.url, '--token', d.token, 'logs', guest, ...args],
    {
      name: 'xterm-256color',
      cols: 200,
      rows: 50,
      cwd: REPO_ROOT,
      env: process.env as Record<string, string>,
    },
  );
  terminals.add(term);
  let out = '';
  let exited = false;
  term.onData((data) => {
    out += data;
    onOutput?.(out);
  });
  term.onExit(() => {
    exited = true;
  });
  try {
    await waitFor(`consolectl ${args.join(' ')} on a terminal`, () => exited || (until?.(out) ?? false), {
      timeoutMs: 20_000,
    });
  } finally {
    term.kill();
    terminals.delete(term);
  }
  return out;
}

function expectEscaped(out: string): void {
  expect(out).toContain('\x1b[31mRED\x1b[0m'); // colour passes
  expect(out).toContain('clip:\\x1b]52;c;cHduZWQ=\\x07');
  expect(out).toContain('title:\\x1b]0;TITLE\\x07');
  expect(out).toContain('report:\\x1b[21t');
  expect(out).toContain('LIVE \\x1b]52;c;bGl2ZQ==\\x07 LIVE-END');
  // No raw OSC and no raw report request reached the terminal.
  expect(out).not.toContain('\x1b]');
  expect(out).not.toContain('\x1b[21t');
  expect(out).not.toContain('\x07');
}

describe('consolectl logs on a terminal', () => {
  it('shows control sequences escaped and keeps colour', async () => {
    expectEscaped(await onTerminal(['--start', '0']));
  });

  it('does the same with -f', async () => {
    expectEscaped(await onTerminal(['--start', '0', '-f'], (out) => out.includes('LIVE-END')));
  });

  it('escapes output that arrives while -f follows, not only what was logged before', async () => {
    const trigger = join(tmpDir('trigger'), 'go');
    // The guest prints its live line only once consolectl is following (the trigger file).
    await d.json('PUT', '/v1/guests/evil-live', {
      source: {
        type: 'exec',
        command: [
          '/bin/sh',
          '-c',
          `printf '${FIRST}'; while [ ! -e ${trigger} ]; do sleep 0.05; done; printf '${SECOND}'; exec sleep 600`,
        ],
      },
    });
    await waitFor('the first line in the log', async () =>
      (await readWholeLog(d, 'evil-live')).bytes.toString('latin1').includes('FIRST-END'),
    );
    expect((await readWholeLog(d, 'evil-live')).bytes.toString('latin1')).not.toContain('LIVE-END');
    const out = await onTerminal(
      ['--start', '0', '-f'],
      (o) => o.includes('LIVE-END'),
      'evil-live',
      (o) => {
        if (o.includes('FIRST-END')) writeFileSync(trigger, '');
      },
    );
    expectEscaped(out);
  });

  it('writes the bytes exactly with --raw', async () => {
    const out = await onTerminal(['--start', '0', '--raw']);
    expect(out).toContain('clip:\x1b]52;c;cHduZWQ=\x07');
    expect(out).toContain('report:\x1b[21t');
  });

  it('changes nothing when stdout is not a terminal', async () => {
    const log = (await readWholeLog(d, 'evil')).bytes;
    const result = await runConsolectl(d, ['logs', 'evil', '--start', '0']);
    expect(result.stdout.equals(log)).toBe(true);
  });
});
