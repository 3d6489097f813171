/**
 * The daemon as a service (docs/design.md "Service lifecycle"): `READY=1` once the API
 * listens and every declared guest has been tried, `STATUS=` with the guests' counts,
 * `RELOADING=1` then `READY=1` around each reload, `STOPPING=1` at shutdown, and the
 * watchdog pings. Also serves `POST /v1/reload`, which SIGHUP runs too.
 */
import type { Logger } from 'pino';
import { ConsoledError } from '../../common/errors.js';
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
  /** STOPPING=1 was sent: no READY=1 may follow it. */
  private stopped = false;
  /** Resolves once READY=1 went out (or never will): a reload waits for it, lest its READY=1 come first. */
  private readonly announced: Promise<void>;
  private markAnnounced: () => void = () => undefined;

  private constructor(private readonly options: ServiceLifecycleOptions) {
    this.notifier = new ServiceNotifier(options.logger, options.env);
    this.reloader = new Reloader(options.daemon, options.loadConfig);
    this.announced = new Promise((resolve) => {
      this.markAnnounced = resolve;
    });
  }

  /**
   * Call once `Daemon.start` returned (the API listens): serves `POST /v1/reload` and
   * starts the watchdog pings. `announceReady` then sends READY=1.
   */
  static create(options: ServiceLifecycleOptions): ServiceLifecycle {
    const lifecycle = new ServiceLifecycle(options);
    options.daemon.router.add(
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
    options.logger.info(
      { notify: lifecycle.notifier.socketPath, watchdogUsec: usec },
      'service manager notifications',
    );
    return lifecycle;
  }

  /** Waits until every declared guest was tried, then READY=1 and the status updates (not once stopping). */
  async announceReady(): Promise<void> {
    const { daemon, logger } = this.options;
    const untried = await firstAttempts(
      daemon.registry.list().filter((g) => g.declared),
      FIRST_ATTEMPT_WAIT_MS,
    );
    if (this.stopped) return this.markAnnounced();
    if (untried.length > 0)
      logger.warn({ guests: untried }, 'ready while some declared guests are still on their first attempt');
    this.notifier.ready(statusLine(daemon.registry.list()));
    this.markAnnounced();
    if (this.notifier.enabled)
      this.stopStatus = reportStatus(daemon.registry, (line) => this.notifier.status(line));
    logger.info('consoled ready');
  }

  /** Re-reads the configuration file: RELOADING=1, the reload, READY=1 (also after a refusal). */
  async reload(trigger: 'api' | 'SIGHUP'): Promise<ReloadOutcome> {
    const { logger, daemon } = this.options;
    await this.announced;
    if (this.stopped) throw new ConsoledError('SHUTTING_DOWN', 'the daemon is stopping; nothing to reload');
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
      if (!this.stopped) this.notifier.ready(statusLine(daemon.registry.list()));
    }
  }

  /** Shutdown starts: STOPPING=1 (the watchdog pings on until the process exits). */
  stopping(): void {
    if (this.stopped) return;
    this.stopped = true;
    this.notifier.stopping();
    this.stopStatus?.();
    this.stopStatus = null;
  }
}
