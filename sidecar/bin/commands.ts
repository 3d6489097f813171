/**
 * consoled's commands, loaded by bin/consoled.ts once the chardevs are connected:
 *   consoled [--config FILE]        run the daemon (default /etc/consoled/consoled.yaml when present)
 *   consoled check-config FILE      validate a configuration file and exit
 *   consoled demo [--port N]        run with a demo guest and no Redis (what `npm start` does)
 */
import { existsSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { DEFAULT_CONFIG_PATH } from '../../common/default-paths.js';
import { ConsoledError } from '../../common/errors.js';
import { createLogger } from '../../common/logger.js';
import { consoledVersion } from '../../common/version.js';
import { type Config, configWarnings, loadConfig, validateConfig } from '../config.js';
import { AuditFile } from '../console/audit-file.js';
import { Daemon } from '../daemon.js';
import { demoConfig, printDemoBanner } from '../demo/demo-config.js';
import type { PreDialReport } from '../lifecycle/pre-dial.js';
import { ServiceLifecycle } from '../lifecycle/service-lifecycle.js';
import {
  adopt,
  confirmMain,
  type Inheritance,
  isSuccessor,
  receiveManifest,
  reportFailure,
  reportReady,
} from '../lifecycle/successor.js';
import type { InheritedHandles } from '../sources/chardev-handle.js';

function fail(err: unknown): never {
  if (isSuccessor()) reportFailure(err);
  if (err instanceof ConsoledError) process.stderr.write(`consoled: ${err.code}: ${err.message}\n`);
  else process.stderr.write(`consoled: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  // 78 (EX_CONFIG): restarting will not help (the unit's RestartPreventExitStatus).
  const final = err instanceof ConsoledError && (err.code === 'BAD_CONFIG' || err.code === 'STATE_VERSION');
  process.exit(final ? 78 : 1);
}

/** Chardevs connected before anything else was loaded (lifecycle/pre-dial.ts). */
export interface EarlyStart {
  readonly handles: InheritedHandles;
  readonly report: PreDialReport;
}

async function runDaemon(
  config: Readonly<Config>,
  onStarted?: (d: Daemon) => void,
  level?: string,
  early: EarlyStart | null = null,
  configPath: string | null = null,
): Promise<void> {
  const auditFile = await AuditFile.open(config);
  const logger = createLogger(level, auditFile?.copy ?? null);
  // --- service lifecycle (docs/design.md "Service lifecycle"): SIGHUP reloads; one
  // arriving during start waits for it (Node's default for SIGHUP is to exit).
  let lifecycle: ServiceLifecycle | null = null;
  let hupDuringStart = false;
  const reloadOnHup = () => {
    if (!lifecycle) hupDuringStart = true;
    else lifecycle.reload('SIGHUP').catch(() => undefined); // logged by reload
  };
  process.on('SIGHUP', reloadOnHup);
  // --- end service lifecycle
  // A successor adopts what the process it replaces hands over (docs/design.md "Upgrade").
  let inheritance: Inheritance | null = null;
  if (isSuccessor()) inheritance = adopt(await receiveManifest());
  else if (early) logger.info(early.report, 'chardevs connected early');
  const daemon = await Daemon.start(config, logger, inheritance ?? early?.handles ?? null);
  onStarted?.(daemon);
  const service = ServiceLifecycle.create({
    daemon,
    logger,
    loadConfig: configPath ? () => loadConfig(configPath) : null,
  });
  // The successor of an upgrade is the service's main process from here (NotifyAccess=all).
  daemon.on('became-main', (pid) => service.notifier.mainPid(pid));
  const stop = (signal: string) => {
    service.stopping();
    void daemon
      .stop(signal)
      .then(() => auditFile?.close())
      .then(() => process.exit(0));
    setTimeout(() => process.exit(1), 30_000).unref();
  };
  process.once('SIGTERM', () => stop('SIGTERM'));
  process.once('SIGINT', () => stop('SIGINT'));
  // SIGUSR2 upgrades as `POST /v1/upgrade` does (SIGUSR1 is node's inspector).
  process.on('SIGUSR2', () => {
    daemon.upgrade().then(
      (result) => daemon.emit('upgraded', result),
      (err) => logger.error({ err: String(err) }, 'upgrade on SIGUSR2 failed'),
    );
  });
  daemon.once('upgraded', () => {
    void daemon
      .retire()
      .then(() => auditFile?.close())
      .finally(() => process.exit(0));
    setTimeout(() => process.exit(0), 10_000).unref();
  });
  if (inheritance) {
    await reportReady();
    daemon.becameMain();
    confirmMain();
    logger.info(
      {
        fromPid: inheritance.fromPid,
        pid: process.pid,
        fromVersion: inheritance.fromVersion,
        version: consoledVersion(),
      },
      'upgraded',
    );
  }
  process.on('uncaughtException', (err) => {
    logger.fatal({ err }, 'uncaught exception');
    stop('uncaughtException');
  });
  await service.announceReady();
  // A reload before READY=1 would announce readiness early: SIGHUPs wait until now.
  lifecycle = service;
  if (hupDuringStart) reloadOnHup();
}

async function main(argv: string[], early: EarlyStart | null): Promise<void> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      config: { type: 'string', short: 'c' },
      port: { type: 'string' },
      'state-dir': { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  const [command = 'run', ...rest] = positionals;
  if (values.help) {
    process.stdout.write(
      'usage: consoled [run] [--config FILE] | consoled check-config FILE | consoled demo [--port N] [--state-dir DIR]\n',
    );
    return;
  }
  switch (command) {
    case 'run': {
      const path = values.config ?? (existsSync(DEFAULT_CONFIG_PATH) ? DEFAULT_CONFIG_PATH : null);
      const config = path ? await loadConfig(path) : validateConfig({});
      await runDaemon(config, undefined, undefined, early, path);
      return;
    }
    case 'check-config': {
      const path = rest[0] ?? values.config;
      if (!path) throw new ConsoledError('BAD_CONFIG', 'check-config needs a FILE');
      const config = await loadConfig(path);
      for (const warning of configWarnings(config)) process.stderr.write(`${path}: warning: ${warning}\n`);
      process.stdout.write(
        `${path}: ok (${config.guests.length} declared guests, state in ${config.stateDir})\n`,
      );
      return;
    }
    case 'demo': {
      const config = await demoConfig({
        ...(values.port ? { port: Number(values.port) } : {}),
        ...(values['state-dir'] ? { stateDir: values['state-dir'] } : {}),
      });
      // The demo keeps the terminal for its banner: warnings and errors only, unless asked.
      await runDaemon(
        config,
        (daemon) => printDemoBanner(daemon),
        process.env['CONSOLED_LOG_LEVEL'] ?? 'warn',
      );
      return;
    }
    default:
      throw new ConsoledError('BAD_REQUEST', `unknown command ${command}`);
  }
}

/** Runs `argv`'s command; `early`: what bin/consoled.ts connected first. */
export function run(argv: string[], early: EarlyStart | null): void {
  main(argv, early).catch(fail);
}
