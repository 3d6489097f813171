#!/usr/bin/env node
/**
 * consoled: the per-host console-log sidecar (commands in bin/commands.ts).
 *
 * `consoled run` connects the guests' chardevs before it loads anything else
 * (docs/design.md "Restarts"): this module imports only what that takes, and the
 * rest of the daemon is imported afterwards.
 */
import { existsSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { DEFAULT_CONFIG_PATH } from '../../common/default-paths.js';
import { HANDOVER_ENV } from '../lifecycle/handover-manifest.js';
import { preDial } from '../lifecycle/pre-dial.js';

/** The config file `consoled run` would read, or undefined for any other command (or bad arguments). */
function runConfigPath(argv: string[]): string | null | undefined {
  try {
    const { values, positionals } = parseArgs({
      args: argv,
      allowPositionals: true,
      strict: false,
      options: { config: { type: 'string', short: 'c' }, help: { type: 'boolean', short: 'h' } },
    });
    if (values.help || (positionals[0] ?? 'run') !== 'run') return undefined;
    if (typeof values.config === 'string') return values.config;
    return existsSync(DEFAULT_CONFIG_PATH) ? DEFAULT_CONFIG_PATH : null;
  } catch {
    return undefined; // the commands report it
  }
}

const argv = process.argv.slice(2);
const path = runConfigPath(argv);
// A successor inherits its chardevs from the process it replaces (docs/design.md "Upgrade").
const early = path !== undefined && process.env[HANDOVER_ENV] !== '1' ? await preDial(path) : null;
const { run } = await import('./commands.js');
run(argv, early);
