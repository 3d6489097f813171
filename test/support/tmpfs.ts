/**
 * Small tmpfs mounts for tests of a disk that fills (root, or CAP_SYS_ADMIN): mount one
 * over a test directory, and take every one down in `afterAll`.
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, rmdirSync } from 'node:fs';
import { join } from 'node:path';
import { tmpDir } from './tmp.js';

const mounts: string[] = [];

/** Mounts a tmpfs of `size` (`1m`, …) over `dir`; `unmountAllTmpfs` takes it down. */
export function mountTmpfs(dir: string, size: string): void {
  execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${size},mode=0755`, 'tmpfs', dir], { stdio: 'pipe' });
  mounts.push(dir);
}

/** Unmounts every tmpfs `mountTmpfs` mounted (lazily where one is still busy). */
export function unmountAllTmpfs(): void {
  for (const dir of mounts.splice(0)) {
    try {
      execFileSync('umount', [dir], { stdio: 'pipe' });
    } catch {
      execFileSync('umount', ['-l', dir], { stdio: 'pipe' });
    }
  }
}

/** Why this process may not mount a tmpfs, or null when it may. Use with `skipIf`. */
export function tmpfsUnavailableReason(): string | null {
  const probe = join(tmpDir('mount-probe'), 'm');
  mkdirSync(probe);
  try {
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=64k', 'tmpfs', probe], { stdio: 'pipe' });
    execFileSync('umount', [probe], { stdio: 'pipe' });
    return null;
  } catch (err) {
    return (
      ((err as { stderr?: Buffer }).stderr?.toString().trim() || (err as Error).message).split('\n')[0] ??
      'mount failed'
    );
  } finally {
    rmdirSync(probe);
  }
}
