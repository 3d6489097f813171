/**
 * The daemon as a service (docs/design.md "Service lifecycle"): `READY=1` once the API
 * listens and every declared guest has been tried, `STATUS=` with the guests' counts,
 * `RELOADING=1` then `READY=1` around each reload, `STOPPING=1` at shutdown, and the
 * watchdog pings. Also serves `POST /v1/reload`, which SIGHUP runs too.
 */
import type { Logger } from 'pino';
import type { Config } from '../config.js';
import type { Daemon } from '../daemon.js';
import { FIRST_ATTEMPT_WAIT_MS, firstAttempts } from './first-attempts.js';
import { Reloader, type ReloadOutcome } from './reload.js';
import { ServiceNotifier, watchdogUsec } from './sd-notify.js';
import { reportStatus, statusLine } from './service-status.js';
import { startWatchdog } from './watchdog.js';

export interface ServiceLifecycleOptions {
  daemon: Daemon;
  logger: Logger;
  /** Reads and validates the configuration file again; null when the daemon runs without one. */
  loadConfig: (() => Promise<Readonly<Config>>) | null;
  /** Where NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID are read (the process's environment). */
  env?: NodeJS.ProcessEnv;
}

export class ServiceLifecycle {
  readonly notifier: ServiceNotifier;
  private readonly reloader: Reloader;
  private stopStatus: (() => void) | null = null;

  private constructor(private readonly options: ServiceLifecycleOptions) {
    this.notifier = new ServiceNotifier(options.logger, options.env);
    this.reloader = new Reloader(options.daemon, options.loadConfig);
  }

  /** Call once `Daemon.start` returned (the API listens): waits for first attempts, then READY=1. */
  static async start(options: ServiceLifecycleOptions): Promise<ServiceLifecycle> {
    const lifecycle = new ServiceLifecycle(options);
    const { daemon, logger } = options;
    daemon.router.add(
      'POST',
      '/v1/reload',
      async () => ({ status: 200, body: await lifecycle.reload('api') }),
      {
        auth: 'admin',
      },
    );
    const usec = watchdogUsec(options.env);
    // Not stopped at shutdown: a shutdown that hangs past the interval is a hang too.
    if (usec !== null && lifecycle.notifier.enabled) startWatchdog(lifecycle.notifier, usec);
    const untried = await firstAttempts(
      daemon.registry.list().filter((g) => g.declared),
      FIRST_ATTEMPT_WAIT_MS,
    );
    if (untried.length > 0)
      logger.warn({ guests: untried }, 'ready while some declared guests are still on their first attempt');
    lifecycle.notifier.ready(statusLine(daemon.registry.list()));
    if (lifecycle.notifier.enabled)
      lifecycle.stopStatus = reportStatus(daemon.registry, (line) => lifecycle.notifier.status(line));
    logger.info({ notify: lifecycle.notifier.socketPath, watchdogUsec: usec }, 'consoled ready');
    return lifecycle;
  }

  /** Re-reads the configuration file: RELOADING=1, the reload, READY=1 (also after a refusal). */
  async reload(trigger: 'api' | 'SIGHUP'): Promise<ReloadOutcome> {
    const { logger, daemon } = this.options;
    this.notifier.reloading();
    logger.info({ trigger }, 'reloading the configuration');
    try {
      const outcome = await this.reloader.reload();
      logger.info({ trigger, ...outcome }, 'configuration reloaded');
      return outcome;
    } catch (err) {
      logger.error({ trigger, err: String(err) }, 'reload refused; the configuration in force is kept');
      throw err;
    } finally {
      this.notifier.ready(statusLine(daemon.registry.list()));
    }
  }

  /** Shutdown starts: STOPPING=1 (the watchdog pings on until the process exits). */
  stopping(): void {
    this.notifier.stopping();
    this.stopStatus?.();
    this.stopStatus = null;
  }
}
