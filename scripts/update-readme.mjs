#!/usr/bin/env node
// Regenerates the generated parts of README.md: the error-code table (from
// common/errors.ts, built) and, when benchmark results exist, the benchmark tables.
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';

const root = resolve(dirname(new URL(import.meta.url).pathname), '..');
const readmePath = join(root, 'README.md');
const { ERROR_CODES } = await import(join(root, 'dist/common/errors.js'));

function replaceBetween(text, name, body) {
  const start = `<!-- ${name}:start -->`;
  const end = `<!-- ${name}:end -->`;
  const i = text.indexOf(start);
  const j = text.indexOf(end);
  if (i < 0 || j < 0) throw new Error(`README.md has no ${name} markers`);
  return `${text.slice(0, i + start.length)}\n${body}\n${text.slice(j)}`;
}

const rows = Object.entries(ERROR_CODES).map(([code, e]) => `| \`${code}\` | ${e.http} | ${e.ws} | ${e.text.replace(/\|/g, '\\|')} |`);
let readme = readFileSync(readmePath, 'utf8');
readme = replaceBetween(readme, 'errors', ['| code | HTTP | WebSocket close | meaning |', '|---|---|---|---|', ...rows].join('\n'));

const benchFile = join(root, 'docs', 'benchmarks.md');
if (existsSync(benchFile)) readme = replaceBetween(readme, 'bench', readFileSync(benchFile, 'utf8').trim());
writeFileSync(readmePath, readme);
console.log('README.md updated');
