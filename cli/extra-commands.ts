import type { ApiTarget } from './api-client.js';
import { consoleCommand } from './console-command.js';
import { purgeCommand } from './purge-command.js';
import { reloadCommand } from './reload-command.js';
import { revokeCommand, tokenCommand } from './token-command.js';

/** consolectl subcommands contributed by subsystems (the console, replication). */
export interface ExtraCommand {
  readonly usage: string;
  run(target: ApiTarget, args: string[]): Promise<void>;
}

export const extraCommands: Record<string, ExtraCommand> = {
  token: {
    usage:
      'token ID [--mode ro|rw] [--ttl 10m] [--single-use] [--name N] [--renewable-for 12h] [--json]   print a viewer token',
    run: tokenCommand,
  },
  revoke: {
    usage: 'revoke JTI [--json]   revoke a viewer token, or a whole renewal chain by its first token id',
    run: revokeCommand,
  },
  console: {
    usage:
      'console ID [--mode ro|rw] [--token T] [--ttl 5m] [--renewable-for 12h] [--escape ^]] [--from O] [--force]   interactive console',
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
