import type { Logger } from 'pino';

/** Who a console connection is, as the audit log records it. */
export interface AuditSubject {
  readonly guest: string;
  readonly viewerId: string;
  /** The viewer token's id (`jti`), or `admin` for the admin token. */
  readonly tokenId: string;
  readonly name: string | undefined;
  readonly mode: 'ro' | 'rw';
  readonly remote: string;
}

function who(s: AuditSubject): Record<string, unknown> {
  return {
    guest: s.guest,
    viewerId: s.viewerId,
    jti: s.tokenId,
    name: s.name,
    mode: s.mode,
    remote: s.remote,
  };
}

/**
 * The console's audit trail: one structured line per attach, detach, refusal, lock
 * change, and writer tenure (with the bytes the writer sent), each with the token id.
 * Lines go to the daemon's logger with `component: "audit"`, so journald keeps them
 * with everything else and `journalctl -u consoled | grep '"component":"audit"'`
 * (or a log shipper's filter) finds them.
 */
export class AuditLog {
  private readonly logger: Logger;

  constructor(logger: Logger) {
    this.logger = logger.child({ component: 'audit' });
  }

  attach(
    s: AuditSubject,
    details: { from: number | null; offset: number; clamped: boolean; origin: string | undefined },
  ): void {
    this.logger.info({ event: 'console.attach', ...who(s), ...details }, 'console viewer attached');
  }

  detach(
    s: AuditSubject,
    details: {
      code: number;
      reason: string;
      durationMs: number;
      bytesSent: number;
      skippedBytes: number;
      keystrokeBytes: number;
    },
  ): void {
    this.logger.info({ event: 'console.detach', ...who(s), ...details }, 'console viewer detached');
  }

  refused(details: {
    guest: string | null;
    code: string;
    jti?: string | undefined;
    remote: string;
    origin: string | undefined;
  }): void {
    this.logger.warn({ event: 'console.refused', ...details }, 'console connection refused');
  }

  lock(guest: string, from: AuditSubject | null, to: AuditSubject | null, cause: string): void {
    this.logger.info(
      {
        event: 'console.lock',
        guest,
        cause,
        from: from ? { viewerId: from.viewerId, jti: from.tokenId, name: from.name } : null,
        to: to ? { viewerId: to.viewerId, jti: to.tokenId, name: to.name } : null,
      },
      'console writer lock changed',
    );
  }

  /** One writer's tenure ended: what it sent toward the guest. */
  writerBytes(s: AuditSubject, details: { bytes: number; frames: number; durationMs: number }): void {
    this.logger.info({ event: 'console.write', ...who(s), ...details }, 'console writer sent keystrokes');
  }

  tokenIssued(details: {
    guest: string;
    jti: string;
    mode: string;
    ttlMs: number;
    singleUse: boolean;
    name: string | undefined;
    by: string;
  }): void {
    this.logger.info({ event: 'console.token', ...details }, 'viewer token issued');
  }
}
