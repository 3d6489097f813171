import { lstat, mkdir, readdir, rename } from 'node:fs/promises';
import { join } from 'node:path';
import { LOG_DIR_FILES } from '../../store/log-files.js';
import { REPLICATION_STATE_FILE } from '../../store/replication/replication-state.js';
import { checkPrivateDir } from '../../store/safe-files.js';

/**
 * Moves a guest's local log (and its replication state) into
 * `<dir>/archive/<ISO time>/`, so that the guest's next stay on this host starts an
 * empty log that can continue the shared stream's offsets. Returns the archive dir,
 * or null when there was nothing to move.
 */
export async function archiveLog(dir: string, now = new Date()): Promise<string | null> {
  // A guest dir that is a link (or not ours) is refused, not archived through.
  const st = await lstat(dir).catch(() => null);
  if (st === null) return null;
  checkPrivateDir(dir, st);
  const names = (await readdir(dir).catch(() => [] as string[])).filter(
    (n) => LOG_DIR_FILES.test(n) || n === REPLICATION_STATE_FILE,
  );
  if (names.length === 0) return null;
  const target = join(dir, 'archive', now.toISOString().replace(/[:.]/g, '-'));
  await mkdir(target, { recursive: true, mode: 0o750 });
  for (const name of names) await rename(join(dir, name), join(target, name));
  return target;
}
