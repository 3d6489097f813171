/**
 * The admin-token file is checked on every start (issue 12, item 7): the built
 * daemon refuses to start, exiting 78 (EX_CONFIG) with a message naming the file and
 * the problem, when the token is short or the file could be read or replaced by
 * others. A good file starts the daemon and its token works.
 */
import { chmod, chown, mkdir, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { runDaemonToExit, startDaemon, stopAllDaemons } from '../support/daemon.js';
import { removeTmpDirs, tmpDir } from '../support/tmp.js';

const GOOD_TOKEN = 'a-long-enough-admin-token-0123456789';

/** Starts the built daemon with the token settings in `config`, expecting it to refuse. */
function startExpectingExit(config: Record<string, unknown>) {
  return runDaemonToExit({ listen: { host: '127.0.0.1', port: 0 }, ...config });
}

/** A private directory holding a token file with `mode`. */
async function tokenFile(token: string, mode: number, dirMode = 0o700): Promise<string> {
  const dir = join(tmpDir('tok'), 'secrets');
  await mkdir(dir);
  await chmod(dir, dirMode);
  const path = join(dir, 'admin-token');
  await writeFile(path, `${token}\n`);
  await chmod(path, mode);
  return path;
}

afterAll(async () => {
  await stopAllDaemons();
  await removeTmpDirs();
});

describe('the admin-token file', () => {
  it('refuses to start with a token shorter than 16 characters', async () => {
    const path = await tokenFile('short-token', 0o600);
    const { code, stderr } = await startExpectingExit({ stateDir: tmpDir('state'), adminTokenFile: path });
    expect(code).toBe(78);
    expect(stderr).toContain(path);
    expect(stderr).toContain('the token has 11 characters; at least 16 are required');
  });

  it('refuses a short token left in the state directory too', async () => {
    const stateDir = tmpDir('state');
    await writeFile(join(stateDir, 'admin-token'), 'abc\n', { mode: 0o600 });
    const { code, stderr } = await startExpectingExit({ stateDir });
    expect(code).toBe(78);
    expect(stderr).toContain(join(stateDir, 'admin-token'));
  });

  it('refuses a file others can read, the group can write, or another user owns', async () => {
    for (const [mode, problem] of [
      [0o644, 'gives others access'],
      [0o604, 'gives others access'],
      [0o660, 'lets the group write it'],
    ] as const) {
      const path = await tokenFile(GOOD_TOKEN, mode);
      const { code, stderr } = await startExpectingExit({ stateDir: tmpDir('state'), adminTokenFile: path });
      expect(code, mode.toString(8)).toBe(78);
      expect(stderr).toContain(path);
      expect(stderr).toContain(problem);
    }
    if (process.getuid?.() === 0) {
      const path = await tokenFile(GOOD_TOKEN, 0o600);
      await chown(path, 65534, 65534);
      const { code, stderr } = await startExpectingExit({ stateDir: tmpDir('state'), adminTokenFile: path });
      expect(code).toBe(78);
      expect(stderr).toContain('is owned by uid 65534');
    }
  });

  it('refuses a file in a directory others can write to, and a symbolic link', async () => {
    const path = await tokenFile(GOOD_TOKEN, 0o600, 0o777);
    const worldWritable = await startExpectingExit({ stateDir: tmpDir('state'), adminTokenFile: path });
    expect(worldWritable.code).toBe(78);
    expect(worldWritable.stderr).toContain('is writable by others');

    const target = await tokenFile(GOOD_TOKEN, 0o600);
    const link = join(tmpDir('link'), 'admin-token');
    await symlink(target, link);
    const linked = await startExpectingExit({ stateDir: tmpDir('state'), adminTokenFile: link });
    expect(linked.code).toBe(78);
    expect(linked.stderr).toContain('is a symbolic link');
  });

  it('starts with a good file (0600, or 0640, in a private or sticky directory), and its token works', async () => {
    for (const [mode, dirMode] of [
      [0o600, 0o700],
      [0o640, 0o1777],
    ] as const) {
      const path = await tokenFile(GOOD_TOKEN, mode, dirMode);
      const d = await startDaemon({ config: { adminToken: undefined, adminTokenFile: path } });
      const res = await fetch(`${d.url}/v1/guests`, { headers: { authorization: `Bearer ${GOOD_TOKEN}` } });
      expect(res.status).toBe(200);
      await d.stop();
    }
  });
});
