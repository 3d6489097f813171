import { type DestinationStream, type Logger, pino } from 'pino';

export type { Logger };

/** Lines a logger writes besides stdout: those of one component (the audit lines). */
export interface ComponentCopy {
  /** The `component` field whose lines are copied. */
  readonly component: string;
  readonly stream: { write(line: string): unknown };
}

/**
 * Structured logs to stdout, for journald; with `copy`, the lines of one component go
 * to its stream as well (the audit file, sidecar/console/audit-file.ts).
 */
export function createLogger(
  level: string = process.env['CONSOLED_LOG_LEVEL'] ?? 'info',
  copy: ComponentCopy | null = null,
): Logger {
  const options = { level, base: { svc: 'consoled' } };
  if (!copy) return pino(options);
  const stdout = pino.destination({ dest: 1, sync: true });
  const marker = `"component":${JSON.stringify(copy.component)}`;
  const tee: DestinationStream = {
    write(line: string) {
      stdout.write(line);
      if (line.includes(marker)) copy.stream.write(line);
    },
  };
  return pino(options, tee);
}

/** A logger that drops everything: for library use and tests that do not read logs. */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
