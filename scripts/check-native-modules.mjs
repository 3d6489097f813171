#!/usr/bin/env node
// Loads and uses the native modules of a consoled tree (its node_modules, not this
// repository's): a pty runs a program, a unix datagram socket hears itself. Exits 1
// saying which failed. README.md "Install".
//   node scripts/check-native-modules.mjs DIR     DIR holds package.json and node_modules
import { mkdtempSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';

const dir = resolve(process.argv[2] ?? '.');
const require = createRequire(join(dir, 'package.json'));

function withTimeout(name, promise) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${name}: no answer within 10 s`)), 10_000);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

function checkPty() {
  const pty = require('node-pty');
  return new Promise((done, fail) => {
    let output = '';
    const child = pty.spawn('/bin/echo', ['pty-ok'], { cols: 80, rows: 24 });
    child.onData((data) => {
      output += data;
    });
    child.onExit(({ exitCode }) => {
      if (exitCode === 0 && output.includes('pty-ok')) done(require.resolve('node-pty'));
      else fail(new Error(`node-pty: exit ${exitCode}, output ${JSON.stringify(output)}`));
    });
  });
}

function checkUnixDgram() {
  const unix = require('unix-dgram');
  const scratch = mkdtempSync(join(tmpdir(), 'consoled-native-'));
  const path = join(scratch, 'notify.sock');
  return new Promise((done, fail) => {
    const socket = unix.createSocket('unix_dgram', (message) => {
      socket.close();
      if (message.toString() === 'READY=1') done(require.resolve('unix-dgram'));
      else fail(new Error(`unix-dgram: received ${JSON.stringify(message.toString())}`));
    });
    socket.on('error', fail);
    socket.bind(path);
    socket.send(Buffer.from('READY=1'), 0, 7, path);
  }).finally(() => rmSync(scratch, { recursive: true, force: true }));
}

let failed = false;
for (const [name, check] of [
  ['node-pty', checkPty],
  ['unix-dgram', checkUnixDgram],
]) {
  try {
    const from = await withTimeout(name, check());
    process.stdout.write(`${name}: ok (${from})\n`);
  } catch (err) {
    failed = true;
    process.stderr.write(`${name}: FAILED: ${err instanceof Error ? err.message : String(err)}\n`);
  }
}
process.exit(failed ? 1 : 0);
