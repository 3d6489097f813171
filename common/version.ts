import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

let cached: string | null = null;

/** This build's version, from the package.json above this module (source or dist/). */
export function consoledVersion(): string {
  if (cached !== null) return cached;
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 4; i++) {
    try {
      const pkg = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')) as { version?: string };
      cached = pkg.version ?? 'unknown';
      return cached;
    } catch {
      dir = dirname(dir);
    }
  }
  cached = 'unknown';
  return cached;
}
