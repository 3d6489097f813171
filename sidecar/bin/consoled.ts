#!/usr/bin/env node
/**
 * consoled: the per-host console-log sidecar.
 *   consoled [--config FILE]        run the daemon (default /etc/consoled/consoled.yaml when present)
 *   consoled check-config FILE      validate a configuration file and exit
 *   consoled demo [--port N]        run with a demo guest and no Redis (what `npm start` does)
 */
import { existsSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { ConsoledError } from '../../common/errors.js';
import { createLogger } from '../../common/logger.js';
import { type Config, configWarnings, loadConfig, validateConfig } from '../config.js';
import { Daemon } from '../daemon.js';
import { demoConfig, printDemoBanner } from '../demo/demo-config.js';
import { ServiceLifecycle } from '../lifecycle/service-lifecycle.js';

const DEFAULT_CONFIG = '/etc/consoled/consoled.yaml';

function fail(err: unknown): never {
  if (err instanceof ConsoledError) process.stderr.write(`consoled: ${err.code}: ${err.message}\n`);
  else process.stderr.write(`consoled: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exit(err instanceof ConsoledError && err.code === 'BAD_CONFIG' ? 78 : 1); // 78: EX_CONFIG
}

async function runDaemon(
  config: Readonly<Config>,
  onStarted?: (d: Daemon) => void,
  level?: string,
  configPath: string | null = null,
): Promise<void> {
  const logger = createLogger(level);
  // --- service lifecycle (docs/design.md "Service lifecycle"): SIGHUP reloads; one
  // arriving during start waits for it (Node's default for SIGHUP is to exit).
  let lifecycle: ServiceLifecycle | null = null;
  let hupDuringStart = false;
  const reloadOnHup = () => {
    if (!lifecycle) hupDuringStart = true;
    else lifecycle.reload('SIGHUP').catch(() => undefined); // logged by reload
  };
  process.on('SIGHUP', reloadOnHup);
  const daemon = await Daemon.start(config, logger);
  onStarted?.(daemon);
  const service = ServiceLifecycle.create({
    daemon,
    logger,
    loadConfig: configPath ? () => loadConfig(configPath) : null,
  });
  const stop = (signal: string) => {
    service.stopping();
    void daemon.stop(signal).then(() => process.exit(0));
    setTimeout(() => process.exit(1), 30_000).unref();
  };
  process.once('SIGTERM', () => stop('SIGTERM'));
  process.once('SIGINT', () => stop('SIGINT'));
  process.on('uncaughtException', (err) => {
    logger.fatal({ err }, 'uncaught exception');
    stop('uncaughtException');
  });
  await service.announceReady();
  // A reload before READY=1 would announce readiness early: SIGHUPs wait until now.
  lifecycle = service;
  if (hupDuringStart) reloadOnHup();
  // --- end service lifecycle
}

async function main(argv: string[]): Promise<void> {
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
      const path = values.config ?? (existsSync(DEFAULT_CONFIG) ? DEFAULT_CONFIG : null);
      const config = path ? await loadConfig(path) : validateConfig({});
      await runDaemon(config, undefined, undefined, path);
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

main(process.argv.slice(2)).catch(fail);
