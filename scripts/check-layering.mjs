#!/usr/bin/env node
// store/ (the durable path) never imports from sidecar/ (the live path), common/
// imports from neither, and none of the three imports cli/ (consolectl, a client of
// the daemon). Fails listing each offending import.
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { join, relative, resolve, dirname } from 'node:path';

const root = resolve(dirname(new URL(import.meta.url).pathname), '..');
const rules = [
  { dir: 'store', forbidden: ['sidecar', 'cli'] },
  { dir: 'common', forbidden: ['sidecar', 'store', 'cli'] },
  { dir: 'sidecar', forbidden: ['cli'] },
];

function* files(dir) {
  if (!existsSync(dir)) return;
  for (const name of readdirSync(dir)) {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) yield* files(path);
    else if (/\.(ts|mts|js|mjs)$/.test(name)) yield path;
  }
}

const problems = [];
for (const { dir, forbidden } of rules) {
  for (const file of files(join(root, dir))) {
    const text = readFileSync(file, 'utf8');
    for (const m of text.matchAll(/(?:from|import)\s*\(?\s*['"]([^'"]+)['"]/g)) {
      const spec = m[1];
      if (!spec.startsWith('.')) continue;
      const target = relative(root, resolve(dirname(file), spec)).split('/')[0];
      if (forbidden.includes(target)) problems.push(`${relative(root, file)} imports ${spec} (${dir}/ must not import ${target}/)`);
    }
  }
}
if (problems.length) {
  console.error(problems.join('\n'));
  process.exit(1);
}
console.log('layering ok: store/ does not import sidecar/; common/ imports neither; none imports cli/');
