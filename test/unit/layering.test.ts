/**
 * store/ never imports from sidecar/, common/ imports from neither, and none of them
 * imports cli/ (README, "How it works"). `scripts/check-layering.mjs` enforces it; this
 * runs it on the tree, and on small trees with a violation to show the check can fail.
 */
import { copyFile, mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { REPO_ROOT } from '../support/daemon.js';
import { runScript as run } from '../support/run-script.js';
import { removeTmpDirs, tmpDir } from '../support/tmp.js';

const SCRIPT = join(REPO_ROOT, 'scripts', 'check-layering.mjs');

afterAll(async () => {
  await removeTmpDirs();
});

describe('layering', () => {
  it('store/ does not import sidecar/, common/ imports neither', async () => {
    const result = await run(SCRIPT);
    expect(result.code, result.stderr).toBe(0);
    expect(result.stdout).toContain('layering ok');
  });

  it('the check fails when sidecar/ imports cli/', async () => {
    const root = tmpDir('layering');
    for (const dir of ['scripts', 'store', 'common', 'sidecar', 'cli']) await mkdir(join(root, dir));
    await copyFile(SCRIPT, join(root, 'scripts', 'check-layering.mjs'));
    await writeFile(join(root, 'cli', 'api-client.ts'), 'export const x = 1;\n');
    await writeFile(
      join(root, 'sidecar', 'daemon.ts'),
      "import type { x } from '../cli/api-client.js';\nexport type Y = typeof x;\n",
    );
    const result = await run(join(root, 'scripts', 'check-layering.mjs'));
    expect(result.code).toBe(1);
    expect(result.stderr).toContain('sidecar/daemon.ts imports ../cli/api-client.js');
  });

  it('the check fails, naming the file, when store/ imports sidecar/', async () => {
    const root = tmpDir('layering');
    for (const dir of ['scripts', 'store', 'common', 'sidecar']) await mkdir(join(root, dir));
    await copyFile(SCRIPT, join(root, 'scripts', 'check-layering.mjs'));
    await writeFile(join(root, 'sidecar', 'guest.ts'), 'export const x = 1;\n');
    await writeFile(join(root, 'common', 'ok.ts'), 'export const y = 2;\n');
    await writeFile(
      join(root, 'store', 'bad.ts'),
      "import { x } from '../sidecar/guest.js';\nexport const z = x;\n",
    );
    const result = await run(join(root, 'scripts', 'check-layering.mjs'));
    expect(result.code).toBe(1);
    expect(result.stderr).toContain('store/bad.ts imports ../sidecar/guest.js');
  });
});
