/**
 * Real temporary directories for tests. Each one is registered and removed by
 * `removeTmpDirs()` (call it in `afterAll`) or, failing that, when the process exits.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const made = new Set<string>();

process.once('exit', () => {
  for (const dir of made) {
    try {
      rmSync(dir, { recursive: true, force: true });
    } catch {
      // best effort at exit: a mount point or a busy dir stays behind
    }
  }
});

/** A fresh directory under the system temp dir, named `consoled-<prefix>-XXXXXX`. */
export function tmpDir(prefix = 'test'): string {
  const dir = mkdtempSync(join(tmpdir(), `consoled-${prefix}-`));
  made.add(dir);
  return dir;
}

/** Removes one directory made by `tmpDir`. */
export async function removeTmpDir(dir: string): Promise<void> {
  made.delete(dir);
  await rm(dir, { recursive: true, force: true });
}

/** Removes every directory made by `tmpDir` in this test file. */
export async function removeTmpDirs(): Promise<void> {
  await Promise.all([...made].map((d) => removeTmpDir(d)));
}
