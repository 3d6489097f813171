// Redis for the replication benchmarks: a real redis-server on a free port in a temp
// dir (noeviction, no persistence), and guest-side writers that stamp each line with
// the time it was written, so the lag to the stream can be measured from outside.
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort, startDaemon, waitUntil } from './bench-lib.mjs';

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

/** The viewer-token secret the hosts of a bench cluster share (README "Console across hosts"). */
const CLUSTER_TOKEN_SECRET = 'bench-cluster-console-secret-0123456789abcdef';

/**
 * Daemons standing for the hosts of one cluster, one per entry of `hosts`
 * (`{hostId, overrides?, nodeArgs?}`, `overrides` merged into its config): all on
 * `redis`, with one `console.tokenSecret` and a 200 ms registry heartbeat, so that any
 * of them serves any guest's console (README "Console across hosts"). Resolves with
 * the daemons, in order, once every host is in the host registry.
 */
export async function startClusterHosts(redis, hosts) {
  const daemons = [];
  try {
    for (const { hostId, overrides = {}, nodeArgs } of hosts) {
      const config = {
        hostId,
        redis: { url: redis.url, hosts: { heartbeatMs: 200, ttlMs: 5_000 } },
        console: { tokenSecret: CLUSTER_TOKEN_SECRET },
        ...overrides,
      };
      daemons.push(await startDaemon(config, { nodeArgs }));
    }
    await waitUntil(
      'every host in the registry',
      async () => (await (await daemons[0].api('GET', '/v1/hosts')).json()).hosts.length === hosts.length,
      20_000,
    );
    return daemons;
  } catch (err) {
    for (const d of daemons) await d.stop();
    throw err;
  }
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

/** Claims a fresh guest's stream for the benchmark host `bench`; returns its epoch. */
export async function claimForBench(commands, keys) {
  const { epoch } = await commands.claim(keys, {
    host: 'bench',
    expectedEpoch: 'any',
    requireSealed: false,
    knownEpoch: 0,
    requireUnowned: true,
  });
  return epoch;
}

/** Appends `bytes` at `offset` through the real append script, as the host `bench`. */
export function appendForBench(commands, keys, epoch, offset, bytes, retentionBytes) {
  return commands.append(keys, {
    epoch,
    host: 'bench',
    offset,
    bytes,
    boot: 1,
    timestampMs: Date.now(),
    retentionBytes,
    allowSkip: false,
    markers: '',
  });
}
