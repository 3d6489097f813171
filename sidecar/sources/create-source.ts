import type { Logger } from 'pino';
import type { SourceSpec } from '../config.js';
import { ExecSource } from './exec-source.js';
import { PtySource } from './pty-source.js';
import { SocketConnectSource } from './socket-connect-source.js';
import { DEFAULT_SOCKET_MODE, SocketListenSource } from './socket-listen-source.js';
import type { ReconnectOptions, Source } from './source.js';

/** Builds the source a validated spec describes. */
export function createSource(
  spec: SourceSpec,
  logger: Logger,
  reconnect: ReconnectOptions,
  terminal: { cols: number; rows: number },
): Source {
  switch (spec.type) {
    case 'tcp':
      return new SocketConnectSource({ host: spec.host, port: spec.port }, logger, reconnect);
    case 'unix':
      return new SocketConnectSource({ path: spec.path }, logger, reconnect);
    case 'tcp-listen':
      return new SocketListenSource({ host: spec.host, port: spec.port }, logger, reconnect);
    case 'unix-listen':
      return new SocketListenSource(
        {
          path: spec.path,
          mode: Number.parseInt(spec.socketMode ?? DEFAULT_SOCKET_MODE, 8),
          ...(spec.socketGroup !== undefined ? { group: spec.socketGroup } : {}),
        },
        logger,
        reconnect,
      );
    case 'pty':
      return new PtySource(spec.path, logger, reconnect);
    case 'exec':
      return new ExecSource(
        {
          command: spec.command,
          ...(spec.cwd ? { cwd: spec.cwd } : {}),
          ...(spec.env ? { env: spec.env } : {}),
          cols: terminal.cols,
          rows: terminal.rows,
        },
        logger,
        reconnect,
      );
  }
}
