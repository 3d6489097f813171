/**
 * No import cycles among sidecar/, store/, common/ and cli/, type-only imports and
 * re-exports included. `scripts/check-import-cycles.mjs` enforces it; this runs it on
 * the tree, and on small trees with a planted cycle to show the check can fail.
 */
import { copyFile, mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { REPO_ROOT } from '../support/daemon.js';
import { runScript as run } from '../support/run-script.js';
import { removeTmpDirs, tmpDir } from '../support/tmp.js';

const SCRIPT = join(REPO_ROOT, 'scripts', 'check-import-cycles.mjs');

/** A copy of the script in a fresh tree holding `files` (path → text). */
async function tree(files: Record<string, string>): Promise<string> {
  const root = tmpDir('cycles');
  for (const dir of ['scripts', 'store', 'common', 'sidecar/http'])
    await mkdir(join(root, dir), { recursive: true });
  await copyFile(SCRIPT, join(root, 'scripts', 'check-import-cycles.mjs'));
  for (const [path, text] of Object.entries(files)) await writeFile(join(root, path), text);
  return join(root, 'scripts', 'check-import-cycles.mjs');
}

afterAll(async () => {
  await removeTmpDirs();
});

describe('import cycles', () => {
  it('the tree has none', async () => {
    const result = await run(SCRIPT);
    expect(result.code, result.stderr).toBe(0);
    expect(result.stdout).toContain('import cycles ok');
  });

  it('a type-only cycle across folders fails the check, and it names each file on it', async () => {
    const script = await tree({
      'sidecar/daemon.ts':
        "import { Service } from './http/service.js';\nexport class Daemon { s = new Service(); }\n",
      'sidecar/http/service.ts':
        "import type { Daemon } from '../daemon.js';\nexport class Service { d: Daemon | null = null; }\n",
      'common/ok.ts': 'export const y = 2;\n',
    });
    const result = await run(script);
    expect(result.code).toBe(1);
    expect(result.stderr).toContain(
      'import cycle: sidecar/daemon.ts -> sidecar/http/service.ts -> sidecar/daemon.ts',
    );
  });

  it('a cycle closed by a re-export (`export ... from`) fails the check', async () => {
    const script = await tree({
      'store/a.ts': "export type { B } from './b.js';\nexport type A = number;\n",
      'store/b.ts': "import type { A } from './a.js';\nexport type B = A[];\n",
    });
    const result = await run(script);
    expect(result.code).toBe(1);
    expect(result.stderr).toContain('import cycle: store/a.ts -> store/b.ts -> store/a.ts');
  });

  it('imports written in comments and a chain without a cycle pass', async () => {
    const script = await tree({
      'common/a.ts': "// import { b } from './b.js';\nexport const a = 1;\n",
      'common/b.ts': "import { a } from './a.js';\nexport const b = a;\n",
      'store/c.ts': "import { b } from '../common/b.js';\nexport const c = b;\n",
    });
    const result = await run(script);
    expect(result.code, result.stderr).toBe(0);
    expect(result.stdout).toContain('none among 3 files');
  });
});
