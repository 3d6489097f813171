/**
 * Symbolic links and loose modes in the state directory (SECURITY.md, "Symbolic
 * links"), attacked against the running built daemon: a `console.log` that points
 * outside, a `log-state.json.tmp` (and `attachments.json.tmp`) that points outside, a
 * guest directory that points outside, and a state directory that group may write,
 * that another user owns, or whose `guests/` is a link. Each is refused (or, for the
 * temporary files, replaced without being followed) and the outside files stay as
 * they were. Plus the helpers on real files: a descriptor opened through a link is
 * told apart from the path, and a state file that is a link is refused.
 */
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import {
  chmodSync,
  chownSync,
  closeSync,
  mkdirSync,
  openSync,
  readFileSync,
  renameSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { lstat, readdir, readFile, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { JsonStateFile } from '../../store/json-state-file.js';
import { assertOpenedFile } from '../../store/safe-files.js';
import {
  baseConfig,
  CONSOLED_BIN,
  type DaemonHandle,
  readWholeLog,
  startDaemon,
  stopAllDaemons,
} from '../support/daemon.js';
import { removeTmpDirs, tmpDir } from '../support/tmp.js';
import { waitFor } from '../support/wait.js';

const OUTSIDE_TEXT = 'outside file: must never change or be served\n';

/** A guest that prints one line and then stays quiet. */
const talker = (line: string) => ({
  source: { type: 'exec', command: ['/bin/sh', '-c', `echo ${line}; exec sleep 600`] },
});

/** A file outside the state dir, with known contents. */
async function outsideFile(name = 'secret.txt'): Promise<string> {
  const path = join(tmpDir('outside'), name);
  await writeFile(path, OUTSIDE_TEXT);
  return path;
}

async function expectRefused(res: Response): Promise<string> {
  const body = (await res.json()) as { error: { code: string; message: string } };
  expect(res.status).toBe(500);
  expect(body.error.code).toBe('UNSAFE_PATH');
  return body.error.message;
}

/** A guest dir made the way consoled makes it (0750), for the test to plant things in. */
function guestDirOf(d: DaemonHandle, id: string): string {
  const dir = join(d.stateDir, 'guests', id);
  mkdirSync(dir, { mode: 0o750 });
  return dir;
}

afterAll(async () => {
  await stopAllDaemons();
  await removeTmpDirs();
});

describe('links planted in the state directory, against the running daemon', () => {
  it('a console.log that links outside: the attach and the log read are refused, the outside file is untouched', async () => {
    const d = await startDaemon();
    const outside = await outsideFile();
    await symlink(outside, join(guestDirOf(d, 'linked-log'), 'console.log'));

    const message = await expectRefused(await d.api('PUT', '/v1/guests/linked-log', talker('guest-output')));
    expect(message).toContain('console.log is a symbolic link');
    // Not served either (the guest is not attached: the read opens the files it left).
    await expectRefused(await d.api('GET', '/v1/guests/linked-log/log?start=0'));
    // Not remembered as attached.
    expect((await d.api('GET', '/v1/guests/linked-log')).status).toBe(404);

    // The same daemon attaches a guest with a plain directory and writes its log.
    await d.json('PUT', '/v1/guests/plain', talker('plain-output'));
    await waitFor('the plain guest to be logged', async () =>
      (await readWholeLog(d, 'plain')).bytes.toString().includes('plain-output'),
    );
    expect(await readFile(outside, 'utf8')).toBe(OUTSIDE_TEXT);
  });

  it('a log-state.json.tmp or attachments.json.tmp that links outside is replaced, never written through', async () => {
    const d = await startDaemon();
    const outsideState = await outsideFile('state.txt');
    const outsideAttachments = await outsideFile('attachments.txt');
    const dir = guestDirOf(d, 'linked-tmp');
    await symlink(outsideState, join(dir, 'log-state.json.tmp'));
    await symlink(outsideAttachments, join(d.stateDir, 'attachments.json.tmp'));

    await d.json('PUT', '/v1/guests/linked-tmp', talker('tmp-guest-output'));
    await waitFor('the guest to be logged', async () =>
      (await readWholeLog(d, 'linked-tmp')).bytes.toString().includes('tmp-guest-output'),
    );
    // Both state files were saved (the attach saves both), as files of their own.
    for (const path of [join(dir, 'log-state.json'), join(d.stateDir, 'attachments.json')]) {
      const st = await lstat(path);
      expect(st.isFile()).toBe(true);
      expect(JSON.parse(await readFile(path, 'utf8'))).toMatchObject({ version: 1 });
    }
    expect((await readdir(dir)).filter((n) => n.endsWith('.tmp'))).toEqual([]);
    expect(await readFile(outsideState, 'utf8')).toBe(OUTSIDE_TEXT);
    expect(await readFile(outsideAttachments, 'utf8')).toBe(OUTSIDE_TEXT);
  });

  it('a guest directory that links outside: the attach and the log read are refused, the outside directory is untouched', async () => {
    const d = await startDaemon();
    const outsideDir = tmpDir('outside-dir');
    await writeFile(join(outsideDir, 'console.log'), OUTSIDE_TEXT);
    await symlink(outsideDir, join(d.stateDir, 'guests', 'linked-dir'));

    const message = await expectRefused(await d.api('PUT', '/v1/guests/linked-dir', talker('dir-output')));
    expect(message).toContain('is a symbolic link');
    await expectRefused(await d.api('GET', '/v1/guests/linked-dir/log?start=0'));

    expect(await readdir(outsideDir)).toEqual(['console.log']);
    expect(await readFile(join(outsideDir, 'console.log'), 'utf8')).toBe(OUTSIDE_TEXT);
  });

  it('a guest directory swapped for a link while the guest runs: the rotation is refused, nothing lands outside', async () => {
    const d = await startDaemon();
    const outsideDir = tmpDir('outside-swap');
    const go = join(tmpDir('control'), 'go');
    // Prints a line, then, once told, enough to rotate its 4 KiB files twice.
    const script = `echo before-swap; while [ ! -e ${go} ]; do sleep 0.05; done; head -c 9000 /dev/zero | tr '\\0' x; echo; exec sleep 600`;
    await d.json('PUT', '/v1/guests/swapped', {
      source: { type: 'exec', command: ['/bin/sh', '-c', script] },
      rotation: { maxFileBytes: 4096, maxFiles: 3 },
    });
    await waitFor('the guest to be logged', async () =>
      (await readWholeLog(d, 'swapped')).bytes.toString().includes('before-swap'),
    );
    const dir = join(d.stateDir, 'guests', 'swapped');
    renameSync(dir, `${dir}.moved`);
    await symlink(outsideDir, dir);
    await writeFile(go, '');

    await waitFor('the rotation to be refused', async () => {
      const status = await d.json<{ disk: { state: string; lastError: string | null } }>(
        'GET',
        '/v1/guests/swapped',
      );
      return status.disk.state === 'disk-error' && status.disk.lastError === 'UNSAFE_PATH';
    });
    await expectRefused(await d.api('GET', '/v1/guests/swapped/log?start=0'));
    expect(await readdir(outsideDir)).toEqual([]);
  });
});

/** Runs the built daemon on `stateDir` and returns how it exited (it must not start). */
async function runRefused(stateDir: string): Promise<{ code: number | null; stderr: string }> {
  const configPath = join(tmpDir('conf'), 'consoled.json');
  await writeFile(configPath, JSON.stringify(baseConfig(stateDir, 'x'.repeat(32))));
  const child = spawn(process.execPath, [CONSOLED_BIN, '--config', configPath], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stderr = '';
  child.stderr.on('data', (chunk: Buffer) => {
    stderr += chunk.toString();
  });
  const timer = setTimeout(() => child.kill('SIGKILL'), 20_000);
  const [code] = (await once(child, 'exit')) as [number | null];
  clearTimeout(timer);
  return { code, stderr };
}

describe('the state directory itself, checked at start', () => {
  it('refuses a state directory that group may write, saying why', async () => {
    const stateDir = tmpDir('loose');
    chmodSync(stateDir, 0o770);
    const { code, stderr } = await runRefused(stateDir);
    expect(code).not.toBe(0);
    expect(stderr).toContain('UNSAFE_PATH');
    expect(stderr).toContain(`${stateDir} is writable by group or others (mode 0770)`);
    expect(await readdir(stateDir)).toEqual([]); // refused before anything was created in it
  });

  // Giving a directory to another user takes root (CI runs as root).
  it.skipIf(process.getuid?.() !== 0)('refuses a state directory owned by another user', async () => {
    const stateDir = tmpDir('foreign');
    chownSync(stateDir, 65534, 65534);
    const { code, stderr } = await runRefused(stateDir);
    expect(code).not.toBe(0);
    expect(stderr).toContain(`${stateDir} is owned by uid 65534`);
  });

  it('refuses a guests/ that links outside', async () => {
    const stateDir = tmpDir('linked-guests');
    const outsideDir = tmpDir('outside-guests');
    await symlink(outsideDir, join(stateDir, 'guests'));
    const { code, stderr } = await runRefused(stateDir);
    expect(code).not.toBe(0);
    expect(stderr).toContain(`${join(stateDir, 'guests')} is a symbolic link`);
    expect(await readdir(outsideDir)).toEqual([]);
  });

  it('refuses a console-secret that links outside', async () => {
    const stateDir = tmpDir('linked-secret');
    const outside = await outsideFile('secret-outside.txt');
    await writeFile(outside, 's'.repeat(48));
    await symlink(outside, join(stateDir, 'console-secret'));
    const { code, stderr } = await runRefused(stateDir);
    expect(code).not.toBe(0);
    expect(stderr).toContain(`${join(stateDir, 'console-secret')} is a symbolic link`);
    expect(readFileSync(outside, 'utf8')).toBe('s'.repeat(48));
  });

  it('starts on a fresh state directory it creates, whatever the umask', async () => {
    const stateDir = join(tmpDir('fresh'), 'state');
    const previous = process.umask(0o002);
    let d: DaemonHandle;
    try {
      d = await startDaemon({ stateDir });
    } finally {
      process.umask(previous);
    }
    expect((await lstat(stateDir)).mode & 0o777).toBe(0o750);
    expect((await d.api('GET', '/v1/guests')).status).toBe(200);
  });
});

describe('the no-follow helpers on real files', () => {
  it('tells a descriptor opened through a link, or by a path replaced since, from the path', () => {
    const dir = tmpDir('opened');
    const real = join(dir, 'real');
    const link = join(dir, 'link');
    writeFileSync(real, 'x');
    symlinkSync(real, link);
    const throughLink = openSync(link, 'a'); // follows, as rotating-file-stream's open does
    try {
      expect(() => assertOpenedFile(throughLink, link)).toThrow(/link is a symbolic link/);
    } finally {
      closeSync(throughLink);
    }
    const fd = openSync(real, 'a');
    try {
      assertOpenedFile(fd, real); // the same file: accepted
      writeFileSync(join(dir, 'other'), 'y');
      renameSync(join(dir, 'other'), real);
      expect(() => assertOpenedFile(fd, real)).toThrow(/was replaced as it was opened/);
    } finally {
      closeSync(fd);
    }
  });

  it('replaces a temporary file a crash left behind', async () => {
    const dir = tmpDir('leftover');
    const path = join(dir, 'state.json');
    writeFileSync(`${path}.tmp`, '{"torn":');
    const file = new JsonStateFile<{ version: number }>(path, 0o600);
    await file.save({ version: 2 });
    expect(await file.load()).toEqual({ version: 2 });
    expect(await readdir(dir)).toEqual(['state.json']);
    expect((await lstat(path)).mode & 0o777).toBe(0o600);
  });

  it('refuses to load a state file that is a link', async () => {
    const dir = tmpDir('state-link');
    const outside = await outsideFile('state.json');
    await writeFile(outside, '{"version":1}');
    await symlink(outside, join(dir, 'log-state.json'));
    await expect(new JsonStateFile(join(dir, 'log-state.json')).load()).rejects.toMatchObject({
      code: 'UNSAFE_PATH',
    });
    expect(readFileSync(outside, 'utf8')).toBe('{"version":1}');
  });
});

describe('state files of a version this build does not read (docs/design.md "State files")', () => {
  it('an attachments.json of a newer build stops the daemon at start with STATE_VERSION (exit 78), file untouched', async () => {
    const stateDir = tmpDir('newer-attachments');
    const newer = `${JSON.stringify({ version: 2, guests: { g: { source: { type: 'pty', path: '/dev/null' } } }, more: [1] })}\n`;
    await writeFile(join(stateDir, 'attachments.json'), newer, { mode: 0o600 });
    const { code, stderr } = await runRefused(stateDir);
    expect(code).toBe(78);
    expect(stderr).toContain('STATE_VERSION');
    expect(stderr).toContain('version 2; this build reads 1');
    expect(await readFile(join(stateDir, 'attachments.json'), 'utf8')).toBe(newer);
  });

  it("a guest's log-state.json of a newer build refuses that attach with STATE_VERSION, file untouched; others attach", async () => {
    const d = await startDaemon();
    const dir = guestDirOf(d, 'newer');
    const newer = JSON.stringify({ version: 7, anchor: { future: true } });
    await writeFile(join(dir, 'log-state.json'), newer, { mode: 0o640 });
    const res = await d.api('PUT', '/v1/guests/newer', talker('hello'));
    const body = (await res.json()) as { error: { code: string; message: string } };
    expect(res.status).toBe(500);
    expect(body.error.code).toBe('STATE_VERSION');
    expect(await readFile(join(dir, 'log-state.json'), 'utf8')).toBe(newer);
    expect((await d.api('PUT', '/v1/guests/other', talker('other'))).status).toBe(201);
  });
});
