import { existsSync } from 'node:fs';
import { chmod, mkdir, stat } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { type Config, validateConfig } from '../config.js';
import type { Daemon } from '../daemon.js';

const here = dirname(fileURLToPath(import.meta.url));

/** The embedded default: one demo guest under a pseudo-terminal, state in ./.consoled-demo, no Redis. */
export async function demoConfig(options: { port?: number; stateDir?: string }): Promise<Readonly<Config>> {
  const stateDir = resolve(options.stateDir ?? '.consoled-demo');
  // The daemon refuses a state dir that group or others may write (store/safe-files.ts):
  // create ours without those bits whatever the umask, and take them off a demo dir an
  // older version made. A --state-dir given by the operator is left as it is.
  await mkdir(stateDir, { recursive: true, mode: 0o750 });
  if (options.stateDir === undefined) {
    const st = await stat(stateDir);
    if (st.uid === process.getuid?.() && (st.mode & 0o022) !== 0) await chmod(stateDir, st.mode & 0o755);
  }
  const demoGuest = join(here, 'demo-guest.js');
  if (!existsSync(demoGuest)) throw new Error(`demo guest not built: ${demoGuest} (run npm run build)`);
  return validateConfig(
    {
      stateDir,
      listen: { host: '127.0.0.1', port: options.port ?? 7070 },
      guests: [{ id: 'demo', source: { type: 'exec', command: [process.execPath, demoGuest] } }],
    },
    'demo',
  );
}

/** Tells the operator how to look at the demo guest. */
export function printDemoBanner(daemon: Daemon): void {
  const url = daemon.url;
  const tokenFile = join(daemon.config.stateDir, 'admin-token');
  const lines = [
    '',
    `consoled demo is running on ${url} with guest "demo" (state in ${daemon.config.stateDir})`,
    '',
    '  read its log:',
    `    curl -s -H "Authorization: Bearer $(cat ${tokenFile})" ${url}/v1/guests/demo/log`,
    `    node dist/cli/consolectl.js --url ${url} --token-file ${tokenFile} logs demo --lines 20`,
    `  status:  node dist/cli/consolectl.js --url ${url} --token-file ${tokenFile} status demo`,
    ...daemon.demoHints(),
    '',
    '  Ctrl-C stops it.',
    '',
  ];
  process.stderr.write(`${lines.join('\n')}\n`);
}
