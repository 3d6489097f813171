// Redis for the replication benchmarks: a real redis-server on a free port in a temp
// dir (noeviction, no persistence), and guest-side writers that stamp each line with
// the time it was written, so the lag to the stream can be measured from outside.
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort } from './bench-lib.mjs';

let exitOnSignal = false;

export async function startRedisServer(extraArgs = []) {
  if (!exitOnSignal) {
    // Turn an interrupt into an exit, so the `exit` hooks below stop the servers.
    exitOnSignal = true;
    for (const signal of ['SIGINT', 'SIGTERM']) process.once(signal, () => process.exit(130));
  }
  const dir = mkdtempSync(join(tmpdir(), 'consoled-bench-redis-'));
  const port = await freePort();
  const proc = spawn(
    'redis-server',
    [
      '--port',
      String(port),
      '--bind',
      '127.0.0.1',
      '--dir',
      dir,
      '--save',
      '',
      '--appendonly',
      'no',
      '--maxmemory-policy',
      'noeviction',
      '--protected-mode',
      'no',
      ...extraArgs,
    ],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  await new Promise((resolve, reject) => {
    let out = '';
    const onData = (d) => {
      out += d;
      if (out.includes('Ready to accept connections')) resolve();
    };
    proc.stdout.on('data', onData);
    proc.once('exit', (code) => reject(new Error(`redis-server exited ${code}: ${out}`)));
  });
  // A benchmark that dies (or is interrupted) must not leave a redis-server behind.
  const killAtExit = () => proc.kill('SIGKILL');
  process.once('exit', killAtExit);
  return {
    port,
    url: `redis://127.0.0.1:${port}`,
    pid: proc.pid,
    async stop() {
      process.off('exit', killAtExit);
      if (proc.exitCode === null && proc.signalCode === null) {
        const exited = new Promise((r) => proc.once('exit', r));
        proc.kill('SIGKILL');
        await exited;
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** A chardev stand-in (QEMU `server=on`): resolves the first connection the daemon makes. */
export async function chardev() {
  let resolveSocket;
  const connected = new Promise((r) => {
    resolveSocket = r;
  });
  const server = createServer((s) => {
    s.setNoDelay(true);
    s.on('error', () => undefined);
    resolveSocket(s);
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  return { port: server.address().port, connected, close: () => server.close() };
}

/**
 * A line stamped with the time it is written: `T<ms since the bench's time origin,
 * µs precision> <padding>\n`, `size` bytes in all.
 */
export function stampedLine(size) {
  const head = `T${performance.now().toFixed(3)} `;
  return `${head}${'.'.repeat(Math.max(0, size - head.length - 1))}\n`;
}

/** Pulls the stamps out of stream entries, one guest at a time, across entry boundaries. */
export class StampParser {
  carry = '';
  /** Calls `onStamp(ms)` for each whole line in `bytes`. */
  feed(bytes, onStamp) {
    const text = this.carry + bytes.toString('latin1');
    const lines = text.split('\n');
    this.carry = lines.pop() ?? '';
    for (const line of lines) {
      const m = /T(\d+\.\d+) /.exec(line);
      if (m) onStamp(Number(m[1]));
    }
  }
}
