/**
 * The old side of an upgrade (docs/design.md "Upgrade"): let every guest go without
 * closing its chardev, start the successor with the live descriptors, and either
 * hand over for good once it is ready, or take everything back when it is not.
 */
import { type ChildProcess, type StdioOptions, spawn } from 'node:child_process';
import type { Server } from 'node:net';
import type { Logger } from 'pino';
import { ConsoledError } from '../../common/errors.js';
import { consoledVersion } from '../../common/version.js';
import type { LockReservation } from '../console/writer-lock.js';
import type { GuestRegistry, HandedGuest } from '../guests/guest-registry.js';
import { type ChardevHandle, dropHandle, fdOf } from '../sources/chardev-handle.js';
import {
  FIRST_INHERITED_FD,
  HANDOVER_ENV,
  type HandoverManifest,
  type ManifestChardev,
  type ParentMessage,
  SUCCESSOR_COMMAND_ENV,
  type SuccessorMessage,
} from './handover-manifest.js';

/** How long the successor may take to confirm it took over after `commit`. */
const MAIN_ACK_TIMEOUT_MS = 5_000;

export interface UpgradeResult {
  readonly fromPid: number;
  readonly toPid: number;
  readonly fromVersion: string;
  readonly toVersion: string;
  /** From the call to the successor's confirmation. */
  readonly wallMs: number;
  /** Guests handed over (an `exec` guest's program restarts in the successor). */
  readonly guests: number;
}

export interface HandoverHost {
  readonly registry: GuestRegistry;
  /** Waits until replication of the handed guests stopped and saved its state; null without Redis. */
  readonly replicationSettled: (() => Promise<void>) | null;
  /** The HTTP API's listening socket, handed over as well. */
  readonly apiServer: Server | null;
  /** The TLS listener's socket (`listen.tls`), handed over as well; null without one. */
  readonly apiTlsServer: Server | null;
  readonly readyTimeoutMs: number;
  /** The writer locks kept for the consoles the handover closed (read once the guests are let go). */
  readonly writerReservations: () => Readonly<Record<string, LockReservation>>;
  readonly logger: Logger;
}

/** The successor's command: this node and entry script as installed, with the same arguments. */
export function successorCommand(): string[] {
  const override = process.env[SUCCESSOR_COMMAND_ENV];
  if (override) {
    const parsed = JSON.parse(override) as unknown;
    if (!Array.isArray(parsed) || parsed.length === 0 || !parsed.every((a) => typeof a === 'string'))
      throw new ConsoledError('BAD_CONFIG', `${SUCCESSOR_COMMAND_ENV} must be a JSON array of strings`);
    return parsed as string[];
  }
  const entry = process.argv[1];
  if (!entry) throw new ConsoledError('UPGRADE_FAILED', 'no entry script to start the successor with');
  return [process.execPath, ...process.execArgv, entry, ...process.argv.slice(2)];
}

/** The descriptors to pass and the manifest that names them. */
function plan(
  handed: readonly HandedGuest[],
  apiServer: Server | null,
  apiTlsServer: Server | null,
  writerReservations: Readonly<Record<string, LockReservation>>,
): { fds: number[]; manifest: HandoverManifest } {
  const fds: number[] = [];
  const pass = (fd: number | null): number | null => {
    if (fd === null) return null;
    fds.push(fd);
    return FIRST_INHERITED_FD + fds.length - 1;
  };
  const chardevOf = (handle: ChardevHandle | null): ManifestChardev => {
    if (!handle) return { kind: 'restart' };
    switch (handle.kind) {
      case 'socket': {
        const fd = pass(fdOf(handle.socket));
        return fd === null ? { kind: 'restart' } : { kind: 'socket', fd };
      }
      case 'listen': {
        const serverFd = pass(fdOf(handle.server));
        if (serverFd === null) return { kind: 'restart' };
        return { kind: 'listen', serverFd, socketFd: handle.socket ? pass(fdOf(handle.socket)) : null };
      }
      case 'tty': {
        const fd = pass(fdOf(handle.tty));
        return fd === null ? { kind: 'restart' } : { kind: 'tty', fd };
      }
    }
  };
  const guests = handed.map((g) => ({ id: g.id, chardev: chardevOf(g.chardev), rateLimit: g.rateLimit }));
  const apiFd = apiServer ? pass(fdOf(apiServer)) : null;
  const apiTlsFd = apiTlsServer ? pass(fdOf(apiTlsServer)) : null;
  return {
    fds,
    manifest: {
      version: 1,
      fromPid: process.pid,
      fromVersion: consoledVersion(),
      apiFd,
      apiTlsFd,
      guests,
      writerReservations,
    },
  };
}

/**
 * Stops this process accepting on a listening socket the successor now serves: both
 * hold it, and a connection the kernel gave to this process would be cut when it exits.
 * TCP only: closing a unix socket's listener here would unlink the path the successor
 * listens on, so there the old process accepts until it exits (a client retries).
 */
function stopAccepting(server: Server | null): void {
  const address = server?.address();
  if (server && address && typeof address === 'object') server.close();
}

/** The successor's first answer: ready, failed, exited, or silent past the bound. */
function awaitReady(
  child: ChildProcess,
  timeoutMs: number,
): Promise<{ ok: true; pid: number; version: string } | { ok: false; why: string }> {
  return new Promise((resolve) => {
    const done = (result: { ok: true; pid: number; version: string } | { ok: false; why: string }): void => {
      clearTimeout(timer);
      child.off('message', onMessage);
      child.off('exit', onExit);
      child.off('error', onError);
      resolve(result);
    };
    const onMessage = (message: SuccessorMessage) => {
      if (message.type === 'ready') done({ ok: true, pid: message.pid, version: message.version });
      else if (message.type === 'failed') done({ ok: false, why: `the successor failed: ${message.error}` });
    };
    const onExit = (code: number | null, signal: NodeJS.Signals | null) =>
      done({
        ok: false,
        why: `the successor exited before it was ready (${signal ? `signal ${signal}` : `exit code ${code}`})`,
      });
    const onError = (err: Error) => done({ ok: false, why: `the successor could not start: ${err.message}` });
    const timer = setTimeout(
      () => done({ ok: false, why: `the successor was not ready within ${timeoutMs} ms` }),
      timeoutMs,
    );
    child.on('message', onMessage);
    child.once('exit', onExit);
    child.once('error', onError);
  });
}

function awaitMain(child: ChildProcess): Promise<boolean> {
  return new Promise((resolve) => {
    const timer = setTimeout(() => finish(false), MAIN_ACK_TIMEOUT_MS);
    const onMessage = (message: SuccessorMessage) => {
      if (message.type === 'main') finish(true);
    };
    const finish = (ok: boolean) => {
      clearTimeout(timer);
      child.off('message', onMessage);
      child.off('disconnect', onGone);
      resolve(ok);
    };
    const onGone = () => finish(false);
    child.on('message', onMessage);
    child.once('disconnect', onGone);
  });
}

function killChild(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null || child.pid === undefined)
    return Promise.resolve();
  return new Promise((resolve) => {
    child.once('exit', () => resolve());
    child.kill('SIGKILL');
  });
}

/**
 * Hands every guest and the API listener to a successor process. Resolves once the
 * successor is the daemon (this process only has to answer and exit); throws
 * UPGRADE_FAILED after taking everything back when the successor did not make it.
 */
export async function handOver(host: HandoverHost): Promise<UpgradeResult> {
  const { registry, logger } = host;
  const startedMs = performance.now();
  let handed: HandedGuest[];
  try {
    handed = await registry.handOver();
    await host.replicationSettled?.();
  } catch (err) {
    await registry.takeBack([]); // accept attaches again; what was let go is logged
    throw new ConsoledError('UPGRADE_FAILED', `letting the guests go failed: ${String(err)}`);
  }
  let child: ChildProcess | null = null;
  let why: string;
  try {
    const { fds, manifest } = plan(handed, host.apiServer, host.apiTlsServer, host.writerReservations());
    const [file, ...args] = successorCommand();
    const stdio: StdioOptions = ['ignore', 'inherit', 'inherit', 'ipc', ...fds];
    logger.info(
      { command: [file, ...args], guests: handed.length, fds: fds.length },
      'starting the successor',
    );
    // The successor becomes the main process and pings the watchdog itself: the
    // WATCHDOG_PID systemd gave this process would switch its pings off.
    const { WATCHDOG_PID: _mainPid, ...env } = process.env;
    child = spawn(file!, args, { stdio, env: { ...env, [HANDOVER_ENV]: '1' } });
    child.on('error', () => undefined);
    const ready = awaitReady(child, host.readyTimeoutMs);
    const message: ParentMessage = { type: 'manifest', manifest };
    child.send(message, (err) => {
      if (err) logger.warn({ err: err.message }, 'cannot send the manifest to the successor');
    });
    const answer = await ready;
    if (answer.ok) {
      const main = awaitMain(child);
      const commit: ParentMessage = { type: 'commit' };
      child.send(commit);
      if (!(await main)) logger.warn('the successor did not confirm it took over; exiting anyway');
      // Our copies only: the successor holds its own, so no peer sees a hang-up.
      for (const guest of handed) if (guest.chardev) dropHandle(guest.chardev);
      stopAccepting(host.apiServer);
      stopAccepting(host.apiTlsServer);
      child.disconnect();
      child.unref();
      const result: UpgradeResult = {
        fromPid: process.pid,
        toPid: answer.pid,
        fromVersion: manifest.fromVersion,
        toVersion: answer.version,
        wallMs: Math.round(performance.now() - startedMs),
        guests: handed.length,
      };
      logger.info(result, 'upgraded');
      return result;
    }
    why = answer.why;
  } catch (err) {
    why = err instanceof Error ? err.message : String(err);
  }
  if (child) await killChild(child);
  logger.error({ why }, 'upgrade failed; taking the guests back');
  await registry.takeBack(handed);
  throw new ConsoledError('UPGRADE_FAILED', `${why}; this process goes on serving`);
}
