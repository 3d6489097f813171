#!/usr/bin/env node
// tsc compiles .ts only: copy the files the built tree needs beside the compiled JS
// (Redis Lua scripts, the console page's static files).
import { cpSync, existsSync, rmSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';

const root = resolve(dirname(new URL(import.meta.url).pathname), '..');
for (const dir of ['store/replication/scripts', 'sidecar/console/page']) {
  const from = join(root, dir);
  // Replaced whole: a file renamed or removed in the source must not linger in the build.
  rmSync(join(root, 'dist', dir), { recursive: true, force: true });
  if (existsSync(from)) cpSync(from, join(root, 'dist', dir), { recursive: true });
}
