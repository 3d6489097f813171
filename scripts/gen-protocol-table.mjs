#!/usr/bin/env node
// The console page has no bundler, so it gets the close-code table of
// sidecar/console/protocol.ts as a file written from the compiled module:
// dist/sidecar/console/page/protocol-table.js. Runs in `npm run build` after tsc and
// copy-assets.mjs (which replaces that directory). An argument names another
// output directory (the tests use one).
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';

const root = resolve(dirname(new URL(import.meta.url).pathname), '..');
const { PAGE_PROTOCOL_FILE, pageProtocolScript } = await import(
  pathToFileURL(join(root, 'dist/sidecar/console/protocol.js')).href
);
const outDir = process.argv[2] ? resolve(process.argv[2]) : join(root, 'dist/sidecar/console/page');
mkdirSync(outDir, { recursive: true });
writeFileSync(join(outDir, PAGE_PROTOCOL_FILE), pageProtocolScript());
