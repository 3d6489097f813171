/**
 * The first thing `consoled run` does (docs/design.md "Restarts"): connect every
 * chardev it can before loading anything else, so that a restart leaves the guests
 * unread for as short a time as possible. It reads the guests declared in the config
 * file and those attached at run time (`attachments.json`), dials each `tcp` and
 * `unix` chardev and opens each `pty`, and holds them paused: the guest's bytes wait
 * in the kernel until the daemon is up and each guest adopts its connection.
 *
 * Nothing here is validated: an entry it does not understand is skipped, and the
 * daemon validates the config and connects whatever was not connected here. Only
 * node: imports and the light chardev modules; YAML is parsed only when the file is
 * not JSON.
 */
import { constants, openSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { ReadStream } from 'node:tty';
import { DEFAULT_STATE_DIR } from '../../common/default-paths.js';
import type { ChardevHandle, InheritedChardev, InheritedHandles } from '../sources/chardev-handle.js';
import { dialChardev } from '../sources/chardev-socket.js';

/** What the early start did, for the daemon's log. */
export interface PreDialReport {
  /** Milliseconds from the process start to the last dial or open. */
  readonly doneAtMs: number;
  /** When that was (ms since the epoch), for the daemon's log. */
  readonly dialledAt: number;
  readonly chardevs: number;
  readonly skipped: number;
}

type Raw = Record<string, unknown>;

function isObject(v: unknown): v is Raw {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

async function readConfig(path: string): Promise<Raw | null> {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch {
    return null;
  }
  try {
    const parsed = JSON.parse(text) as unknown;
    return isObject(parsed) ? parsed : null;
  } catch {
    // YAML, most likely
  }
  try {
    const { parse } = await import('yaml');
    const parsed = parse(text) as unknown;
    return isObject(parsed) ? parsed : null;
  } catch {
    return null;
  }
}

/** Every guest id with its raw source: declared first, then the persisted attachments. */
function guestSources(config: Raw): Map<string, Raw> {
  const sources = new Map<string, Raw>();
  for (const g of Array.isArray(config['guests']) ? config['guests'] : []) {
    if (isObject(g) && typeof g['id'] === 'string' && isObject(g['source']) && g['incoming'] !== true)
      sources.set(g['id'], g['source']);
  }
  const stateDir = typeof config['stateDir'] === 'string' ? config['stateDir'] : DEFAULT_STATE_DIR;
  try {
    const persisted = JSON.parse(readFileSync(join(stateDir, 'attachments.json'), 'utf8')) as unknown;
    const guests = isObject(persisted) && isObject(persisted['guests']) ? persisted['guests'] : {};
    for (const [id, spec] of Object.entries(guests)) {
      if (!sources.has(id) && isObject(spec) && isObject(spec['source']) && spec['incoming'] !== true)
        sources.set(id, spec['source']);
    }
  } catch {
    // none yet, or unreadable: the daemon says so
  }
  return sources;
}

function connect(source: Raw): ChardevHandle | null {
  const { type } = source;
  if (type === 'tcp' && typeof source['host'] === 'string' && typeof source['port'] === 'number') {
    const socket = dialChardev({ host: source['host'], port: source['port'] });
    socket.pause(); // not read until the guest adopts it: bytes wait in the kernel
    socket.on('error', () => undefined); // the source sees a closed socket and dials again
    return { kind: 'socket', socket };
  }
  if (type === 'unix' && typeof source['path'] === 'string') {
    const socket = dialChardev({ path: source['path'] });
    socket.pause();
    socket.on('error', () => undefined);
    return { kind: 'socket', socket };
  }
  if (type === 'pty' && typeof source['path'] === 'string') {
    try {
      const fd = openSync(source['path'], constants.O_RDWR | constants.O_NOCTTY | constants.O_NONBLOCK);
      const tty = new ReadStream(fd); // not read until adopted
      tty.setRawMode(true); // at once: cooked mode would echo the guest's output back to it
      tty.on('error', () => undefined);
      return { kind: 'tty', tty };
    } catch {
      return null; // the source opens it itself, with backoff
    }
  }
  return null; // listening sources bind with their socket file's mode; exec runs a program
}

/**
 * Connects the chardevs of `configPath`'s guests. Null for a config it cannot read;
 * the daemon then reports the problem and connects everything itself.
 */
export async function preDial(
  configPath: string | null,
): Promise<{ handles: InheritedHandles; report: PreDialReport } | null> {
  const config = configPath ? await readConfig(configPath) : {};
  if (!config) return null;
  const guests = new Map<string, InheritedChardev>();
  let skipped = 0;
  for (const [id, source] of guestSources(config)) {
    const handle = connect(source);
    if (handle) guests.set(id, { handle, continuation: 'new' });
    else skipped++;
  }
  const report = {
    doneAtMs: Math.round(process.uptime() * 1000),
    dialledAt: Date.now(),
    chardevs: guests.size,
    skipped,
  };
  return { handles: { guests, apiFd: null }, report };
}
