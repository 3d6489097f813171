/**
 * A real libvirt for the tests, standalone (systemd is not PID 1 here): `virtlogd -d`
 * and `libvirtd -d`, with QEMU run as root (`user`/`group` in /etc/libvirt/qemu.conf).
 * `ensureLibvirt()` sets that up when it is not, idempotently, and fails, saying what to
 * install, when libvirt is absent; the test skips, naming the reason, where it cannot run. Hooks are machine-wide
 * (/etc/libvirt/hooks/qemu.d/): `installQemuHook` puts one there and returns its removal.
 */
import { execFile } from 'node:child_process';
import { existsSync, readdirSync, statSync } from 'node:fs';
import { chmod, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { waitFor } from './wait.js';

const run = promisify(execFile);

export const LIBVIRT_URI = 'qemu:///system';
const QEMU_CONF = '/etc/libvirt/qemu.conf';
export const QEMU_HOOK_DIR = '/etc/libvirt/hooks/qemu.d';
const PACKAGES = 'libvirt-daemon-system libvirt-daemon-driver-qemu libvirt-clients';
const PROGRAMS = ['/usr/sbin/libvirtd', '/usr/sbin/virtlogd', '/usr/bin/virsh'];

/** The result of one `virsh` run. */
export interface VirshResult {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

/** Runs `virsh -c qemu:///system ARGS`; rejects (with virsh's stderr) unless `allowFailure`. */
export async function virsh(args: string[], options: { allowFailure?: boolean } = {}): Promise<VirshResult> {
  try {
    const { stdout, stderr } = await run('virsh', ['-c', LIBVIRT_URI, ...args], { timeout: 60_000 });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code?: number; stdout?: string; stderr?: string; message: string };
    if (!options.allowFailure) throw new Error(`virsh ${args.join(' ')} failed: ${e.stderr ?? e.message}`);
    return { code: typeof e.code === 'number' ? e.code : 1, stdout: e.stdout ?? '', stderr: e.stderr ?? '' };
  }
}

async function pidOf(name: string): Promise<number | null> {
  try {
    const { stdout } = await run('pgrep', ['-x', name]);
    const pid = Number(stdout.trim().split('\n')[0]);
    return Number.isInteger(pid) && pid > 0 ? pid : null;
  } catch {
    return null;
  }
}

/** `user = "root"` and `group = "root"` in qemu.conf, added once. */
async function configureQemu(): Promise<boolean> {
  const text = await readFile(QEMU_CONF, 'utf8');
  const set = (key: string) => new RegExp(`^\\s*${key}\\s*=\\s*"root"`, 'm').test(text);
  if (set('user') && set('group')) return false;
  await writeFile(
    QEMU_CONF,
    `${text.trimEnd()}\n# consoled tests: QEMU runs as root (no systemd here)\nuser = "root"\ngroup = "root"\n`,
  );
  return true;
}

async function startLibvirtd(): Promise<void> {
  await run('libvirtd', ['-d']);
  await waitFor(
    'libvirtd to answer',
    async () => (await virsh(['list', '--all'], { allowFailure: true })).code === 0,
    {
      timeoutMs: 30_000,
      intervalMs: 100,
    },
  );
}

async function stopLibvirtd(pid: number): Promise<void> {
  process.kill(pid, 'SIGTERM');
  await waitFor('libvirtd to exit', () => !existsSync(`/proc/${pid}`), { timeoutMs: 30_000, intervalMs: 50 });
}

/**
 * Why the libvirt tests cannot run here (libvirt not installed, or not root), or null.
 * Use with `describe.skipIf`, naming the reason, as the QEMU and Chromium tests do;
 * `bash .ci/run` installs libvirt, so CI runs them.
 */
export function libvirtUnavailableReason(): string | null {
  const missing = PROGRAMS.filter((p) => !existsSync(p));
  if (missing.length > 0) return `libvirt is not installed (apt-get install ${PACKAGES})`;
  if (process.getuid?.() !== 0) return 'the libvirt tests run as root (they start libvirtd)';
  return null;
}

/**
 * Makes sure virtlogd and libvirtd run with QEMU as root; throws naming the packages
 * when libvirt is not installed.
 */
export async function ensureLibvirt(): Promise<void> {
  const missing = PROGRAMS.filter((p) => !existsSync(p));
  if (missing.length > 0)
    throw new Error(`libvirt is not installed (missing ${missing.join(', ')}): apt-get install ${PACKAGES}`);
  if (process.getuid?.() !== 0) throw new Error('the libvirt tests run as root (they start libvirtd)');
  const changed = await configureQemu();
  if ((await pidOf('virtlogd')) === null) await run('virtlogd', ['-d']);
  const pid = await pidOf('libvirtd');
  if (pid !== null && changed) await stopLibvirtd(pid);
  if (pid === null || changed) await startLibvirtd();
}

/** Seconds since boot at which process `pid` started (from /proc). */
async function startedAtSec(pid: number): Promise<number> {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const uptime = Number((await readFile('/proc/uptime', 'utf8')).split(' ')[0]);
  const ticks = Number(fields[19]); // starttime, field 22 of proc(5)
  return Date.now() / 1000 - uptime + ticks / 100;
}

/**
 * Installs an executable hook `name` in /etc/libvirt/hooks/qemu.d. libvirtd looks for
 * hooks once, at its start, and runs those of qemu.d only if it found one then (it
 * reads the directory again at every event): so when no hook there is older than the
 * running libvirtd, it is restarted. Returns the removal.
 */
export async function installQemuHook(name: string, script: string): Promise<() => Promise<void>> {
  await mkdir(QEMU_HOOK_DIR, { recursive: true });
  const path = join(QEMU_HOOK_DIR, name);
  const others = readdirSync(QEMU_HOOK_DIR)
    .filter((n) => n !== name)
    .map((n) => statSync(join(QEMU_HOOK_DIR, n)));
  await writeFile(path, script);
  await chmod(path, 0o755);
  const pid = await pidOf('libvirtd');
  if (pid !== null) {
    const since = await startedAtSec(pid);
    const seen = others.some((st) => st.isFile() && st.mode & 0o111 && st.mtimeMs / 1000 < since - 1);
    if (!seen) {
      await stopLibvirtd(pid);
      await startLibvirtd();
    }
  }
  return () => rm(path, { force: true });
}

/** Restarts libvirtd (running domains keep running; libvirtd reconnects to them). */
export async function restartLibvirtd(): Promise<void> {
  const pid = await pidOf('libvirtd');
  if (pid !== null) await stopLibvirtd(pid);
  await startLibvirtd();
}

/** Destroys and undefines a domain, ignoring a domain that is not there. */
export async function removeDomain(name: string): Promise<void> {
  await virsh(['destroy', name], { allowFailure: true });
  await virsh(['undefine', name], { allowFailure: true });
}
