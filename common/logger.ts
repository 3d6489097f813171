import { type Logger, pino } from 'pino';

export type { Logger };

/** Structured logs to stdout, for journald. */
export function createLogger(level: string = process.env['CONSOLED_LOG_LEVEL'] ?? 'info'): Logger {
  return pino({ level, base: { svc: 'consoled' } });
}

/** A logger that drops everything: for library use and tests that do not read logs. */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
