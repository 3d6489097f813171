import type { ApiTarget } from './api-client.js';
import { consoleCommand } from './console-command.js';
import { purgeCommand } from './purge-command.js';
import { reloadCommand } from './reload-command.js';
import { tokenCommand } from './token-command.js';

/** consolectl subcommands contributed by subsystems (the console, replication). */
export interface ExtraCommand {
  readonly usage: string;
  run(target: ApiTarget, args: string[]): Promise<void>;
}

export const extraCommands: Record<string, ExtraCommand> = {
  token: {
    usage: 'token ID [--mode ro|rw] [--ttl 10m] [--single-use] [--name N] [--json]   print a viewer token',
    run: tokenCommand,
  },
  console: {
    usage: 'console ID [--mode ro|rw] [--token T] [--escape ^]] [--from O] [--force]   interactive console',
    run: consoleCommand,
  },
  purge: {
    usage:
      "purge ID [--local | --cluster] [--json]   delete a detached guest's history (both with neither flag)",
    run: purgeCommand,
  },
  reload: {
    usage:
      "reload [--config FILE]   re-read the daemon's configuration file; returns when done (systemd ExecReload=)",
    run: reloadCommand,
  },
};
