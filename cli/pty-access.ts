/**
 * Gives the daemon's user access to a guest's pty (README "libvirt"). A libvirt pty
 * slave belongs to the QEMU user (group `tty`, mode 0620; or 0600), so an unprivileged
 * consoled cannot open it. Linux's devpts has no ACLs (`setfacl` fails with "Operation
 * not supported"), so the hook, as root, gives the slave the daemon's group and lets
 * the group read and write it; the owner stays. QEMU holds the master and never needs
 * the slave's group; the pty goes away with the QEMU process.
 */
import { execFile } from 'node:child_process';
import { chmod, chown, lstat } from 'node:fs/promises';
import { promisify } from 'node:util';

const run = promisify(execFile);

export async function grantPtyAccess(path: string, gid: number): Promise<void> {
  if (!/^\/dev\/pts\/\d+$/.test(path)) throw new Error(`${path} is not a /dev/pts slave`);
  const st = await lstat(path);
  if (!st.isCharacterDevice()) throw new Error(`${path} is not a character device`);
  await chown(path, st.uid, gid);
  await chmod(path, (st.mode & 0o7777) | 0o060);
}

/** The uid and gid of `user` (`getent passwd`), or null when there is no such user. */
export async function lookupUser(user: string): Promise<{ uid: number; gid: number } | null> {
  try {
    const { stdout } = await run('getent', ['passwd', user], { timeout: 5000 });
    const fields = stdout.trim().split(':');
    const uid = Number(fields[2]);
    const gid = Number(fields[3]);
    return Number.isInteger(uid) && Number.isInteger(gid) ? { uid, gid } : null;
  } catch {
    return null;
  }
}
