import type { ApiTarget } from './api-client.js';

/** consolectl subcommands contributed by subsystems (the console, replication). */
export interface ExtraCommand {
  readonly usage: string;
  run(target: ApiTarget, args: string[]): Promise<void>;
}

export const extraCommands: Record<string, ExtraCommand> = {};
