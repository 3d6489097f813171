import type { Server } from 'node:http';
import type { Logger } from 'pino';
import { ConsoledError } from '../../common/errors.js';
import type { LogViewResolver } from '../../store/log-view.js';
import type { Config } from '../config.js';
import type { Guest } from '../guest.js';
import type { DetachReason, GuestRegistry } from '../guests/guest-registry.js';
import type { TrustedProxies } from '../http/forwarded.js';
import { logRoute } from '../http/log-route.js';
import type { MetricsRegistry } from '../http/metrics.js';
import type { Router } from '../http/router.js';
import { AuditLog } from './audit-log.js';
import { ConsoleAuth } from './console-auth.js';
import type { ConsoleCluster } from './console-cluster.js';
import { guestConsoleLimits } from './console-config.js';
import { consoleMetrics } from './console-metrics.js';
import { addConsoleRoutes, type RevocationAnswer } from './console-routes.js';
import { loadConsoleSecret } from './console-secret.js';
import { ConsoleServer } from './console-server.js';
import { HostCredential } from './host-credential.js';
import { ConsoleHub } from './hub.js';
import { type RevocationBus, type RevocationNotice, SharedRevocations } from './shared-revocations.js';
import { SharedUsedTokens } from './shared-used-tokens.js';
import { TokenRevocations } from './token-revocations.js';
import { UsedTokenJournal } from './used-token-journal.js';
import type { LockReservation } from './writer-lock.js';

/** Lifetime of the token in the demo banner's URL. */
const DEMO_TOKEN_TTL_MS = 12 * 3600_000;

/** What the console needs from the daemon that hosts it. */
export interface ConsoleHost {
  readonly config: Readonly<Pick<Config, 'console' | 'stateDir' | 'hostId'>>;
  readonly logger: Logger;
  readonly registry: GuestRegistry;
  readonly router: Router;
  readonly metrics: MetricsRegistry;
  /** `trustedProxies`: whose forwarded headers name the client. */
  readonly proxies: TrustedProxies;
  readonly adminToken: string;
  /** Aborted when the daemon shuts down. */
  readonly shutdown: AbortSignal;
  /** The log a console's `/log` read uses. */
  readonly resolveLog: LogViewResolver;
  /** The URL of the HTTP API (known once it listens). */
  url(): string;
  /** Writer locks kept by the process before an upgrade, by guest (docs/design.md "Upgrade"). */
  readonly writerReservations?: Readonly<Record<string, LockReservation>> | undefined;
}

/**
 * The WebSocket console wired into the daemon: one hub per attached guest (made on
 * `attached`, closed on `detached`, after the guest's source stopped and its log
 * flushed, so viewers get the last bytes), the upgrade endpoint, the HTTP routes,
 * metrics, the status section, and the demo banner's URL (`demoHints`).
 */
export class ConsoleService {
  private readonly hubs = new Map<string, ConsoleHub>();
  /** Writer locks kept across an upgrade, until the guest's hub exists again. */
  private readonly reservations = new Map<string, LockReservation>();
  private server: ConsoleServer | null = null;
  readonly audit: AuditLog;
  /** The cluster, once replication is up (`joinCluster`); null without Redis. */
  private cluster: ConsoleCluster | null = null;
  /** Guests adopted in a migration whose source's writer lock is still being read. */
  private readonly loadingWriter = new Set<string>();

  private constructor(
    private readonly host: ConsoleHost,
    readonly auth: ConsoleAuth,
    private readonly credential: HostCredential,
  ) {
    const { logger, registry } = host;
    for (const [id, r] of Object.entries(host.writerReservations ?? {})) this.reservations.set(id, r);
    this.audit = new AuditLog(logger, { episodeMs: host.config.console.refusalEpisodeMs });
    for (const guest of registry.list()) this.onAttached(guest);
    registry.on('attached', (guest) => this.onAttached(guest));
    registry.on('detached', (guest, reason) => this.onDetached(guest, reason));
    addConsoleRoutes(host.router, {
      auth: this.auth,
      audit: this.audit,
      logHandler: logRoute(host.resolveLog),
      proxies: host.proxies,
      allowedHosts: host.config.console.allowedHosts,
      revoke: (id) => this.revoke(id),
    });
    host.metrics.add(
      consoleMetrics(
        () => this.hubs.values(),
        () => this.server,
      ),
    );
  }

  /** Loads (or generates) the token secret and wires the console into `host`; call before guests attach. */
  static async create(host: ConsoleHost): Promise<ConsoleService> {
    const c = host.config.console;
    const secret = await loadConsoleSecret(host.config.stateDir, c.tokenSecret);
    const journal = UsedTokenJournal.open(host.config.stateDir, c.maxUsedTokens, host.logger);
    const revocations = TokenRevocations.open(host.config.stateDir, host.logger);
    host.shutdown.addEventListener(
      'abort',
      () => {
        journal.close();
        revocations.close();
      },
      { once: true },
    );
    const auth = new ConsoleAuth(secret, host.adminToken, {
      maxUsedTokens: c.maxUsedTokens,
      maxTokenTtlMs: c.maxTokenTtlMs,
      maxSessionTtlMs: c.maxSessionTtlMs,
      requireAuth: c.requireAuth,
      usedTokens: journal.registry,
      revocations,
    });
    return new ConsoleService(host, auth, new HostCredential(secret, host.config.hostId));
  }

  /**
   * Serves the consoles of the cluster's other hosts' guests too, by proxy, and
   * follows this host's guests across their migrations (docs/design.md "Console
   * across hosts"). Call once replication is up.
   */
  joinCluster(cluster: ConsoleCluster): void {
    this.cluster = cluster;
    const logger = this.host.logger.child({ component: 'console' });
    cluster.seams.on('sealed', (id, seam) => {
      // Viewers get nothing past the seal: the destination's log goes on from there.
      this.hubs.get(id)?.holdAt(seam.offset);
    });
    cluster.seams.on('moved', (id, seam) => this.hubs.get(id)?.announceMove(seam.host, seam.offset));
    cluster.seams.on('role', (id, role) => {
      if (role !== 'sealed' && role !== 'handed-off') this.hubs.get(id)?.holdAt(null);
      // The source keeps its writer's lock for the destination as it starts to drain:
      // the write goes to Redis ahead of the seal, on the same connection, so the
      // destination, which claims only a sealed stream, finds it.
      if (role === 'handing-off') {
        const kept = this.hubs
          .get(id)
          ?.lock.reservationForRestart(this.host.config.console.writerReservationMs);
        if (kept)
          cluster
            .keepWriter(id, kept)
            .catch((err: Error) =>
              logger.warn({ guest: id, err: err.message }, 'cannot keep the writer lock for the destination'),
            );
      }
      // The destination reads it as soon as it claimed; resumes wait for it (checkArrival).
      if (role !== 'adopting') return;
      this.loadingWriter.add(id);
      cluster
        .keptWriter(id)
        .then((kept) => {
          if (kept) this.hubs.get(id)?.lock.reserve(kept);
        })
        .catch((err: Error) =>
          logger.warn({ guest: id, err: err.message }, 'cannot read the writer lock kept by the source'),
        )
        .finally(() => this.loadingWriter.delete(id));
    });
  }

  /**
   * Throws GUEST_ARRIVING when a viewer resumes (`from`) on a guest still arriving in
   * a migration: until its log is in the stream's numbering (renumbered as it adopts
   * the stream) and the writer lock its source kept is loaded.
   */
  private checkArrival(guestId: string, from: number | null): void {
    if (from === null) return;
    const arriving = this.cluster?.place(guestId) === 'arriving' && !this.hubs.get(guestId)?.renumbered;
    if (arriving || this.loadingWriter.has(guestId))
      throw new ConsoledError(
        'GUEST_ARRIVING',
        `guest ${guestId} is still arriving on this host; retry in a moment`,
      );
  }

  /** Spent single-use ids go to Redis as well (call once replication is up). */
  shareUsedTokens(client: ConstructorParameters<typeof SharedUsedTokens>[0], keyPrefix: string): void {
    this.auth.sharedUsedTokens = new SharedUsedTokens(client, keyPrefix);
  }

  /**
   * Revocations go to Redis and come from it (call once replication is up): every new
   * connection's token is checked there, a notice from another host ends the matching
   * sessions here, and once the subscriber (re)connected the live sessions are checked
   * again (a notice may have been missed).
   */
  shareRevocations(bus: RevocationBus, keyPrefix: string): void {
    const shared = new SharedRevocations(bus, keyPrefix, this.host.config.hostId);
    this.auth.sharedRevocations = shared;
    // Sessions admitted before the subscription could miss a notice sent meanwhile.
    void shared
      .listen((notice) => this.onRemoteRevocation(notice))
      .then(() => this.recheckRevocations(shared));
    bus.onResubscribed(() => void this.recheckRevocations(shared));
  }

  /**
   * `DELETE /v1/tokens/{id}`: holds `id` as revoked here (persisted), ends the live
   * sessions whose token or chain it is, and with Redis records it there and tells
   * the other hosts. It is held as long as a token it matches could verify: the
   * longest a token can be issued for (`maxTokenTtlMs`) or a session renewed for
   * (`maxSessionTtlMs`), or longer when a live session shows a later end.
   */
  async revoke(id: string): Promise<RevocationAnswer> {
    const now = Date.now();
    const c = this.host.config.console;
    const latest = Math.max(
      now + Math.max(c.maxTokenTtlMs, c.maxSessionTtlMs),
      this.server?.sessions.latestEnd(id) ?? 0,
    );
    const untilMs = this.auth.revocations.revoke(id, latest, now);
    const endedSessions = this.server?.sessions.endRevoked(id) ?? 0;
    let shared = false;
    const redis = this.auth.sharedRevocations;
    if (redis) {
      try {
        await redis.publish(id, untilMs);
        shared = true;
      } catch (err) {
        this.host.logger.warn(
          { id, err: String(err) },
          'token revoked on this host only: Redis did not answer (other hosts still admit it)',
        );
      }
    }
    const until = new Date(untilMs).toISOString();
    this.audit.tokenRevoked({ id, until, endedSessions, shared, by: 'admin' });
    return { revoked: id, until, endedSessions, shared };
  }

  private onRemoteRevocation(notice: RevocationNotice): void {
    const untilMs = this.auth.revocations.revoke(notice.id, notice.untilMs);
    const endedSessions = this.server?.sessions.endRevoked(notice.id) ?? 0;
    const until = new Date(untilMs).toISOString();
    this.audit.tokenRevoked({ id: notice.id, until, endedSessions, shared: true, by: notice.host });
  }

  private async recheckRevocations(shared: SharedRevocations): Promise<void> {
    const ids = this.server?.sessions.liveTokenIds() ?? [];
    try {
      for (const found of await shared.find(ids)) this.onRemoteRevocation({ ...found, host: 'redis' });
    } catch (err) {
      this.host.logger.warn(
        { err: String(err) },
        'live console sessions not checked against Redis revocations',
      );
    }
  }

  /** Serves WebSocket upgrades on the API server. */
  listen(...servers: Server[]): void {
    this.server = new ConsoleServer({
      config: this.host.config.console,
      auth: this.auth,
      audit: this.audit,
      logger: this.host.logger,
      hubOf: (id) => this.hubs.get(id),
      shutdown: this.host.shutdown,
      upgrading: () => this.host.registry.isUpgrading,
      proxies: this.host.proxies,
      cluster: () => this.cluster,
      credential: this.credential,
      checkArrival: (id, from) => this.checkArrival(id, from),
    });
    this.server.listen(...servers);
  }

  /** Ends the connections this host proxies to other hosts with UPGRADING (an upgrade handed over). */
  closeProxied(): void {
    this.server?.closeProxied(new ConsoledError('UPGRADING', 'consoled is handing over to its successor'));
  }

  hub(guestId: string): ConsoleHub | undefined {
    return this.hubs.get(guestId);
  }

  private onAttached(guest: Guest): void {
    const config = this.host.config.console;
    this.hubs.get(guest.id)?.close('GUEST_DETACHED', 'the guest was attached again');
    const hub = new ConsoleHub(
      guest,
      config,
      guestConsoleLimits(config, guest.id),
      this.audit,
      this.host.logger,
    );
    const kept = this.reservations.get(guest.id);
    if (kept) hub.lock.reserve(kept);
    this.reservations.delete(guest.id);
    this.hubs.set(guest.id, hub);
  }

  /** The writer locks kept for the guests an upgrade is handing over, for the successor. */
  writerReservations(): Record<string, LockReservation> {
    return Object.fromEntries(this.reservations);
  }

  private onDetached(guest: Guest, reason: DetachReason): void {
    const hub = this.hubs.get(guest.id);
    if (!hub || hub.guest !== guest) return;
    this.hubs.delete(guest.id);
    // 1012 (Service Restart): the page and `consolectl console` reconnect and resume by
    // offset, and the writer gets its lock back within console.writerReservationMs.
    if (reason === 'upgrade') {
      const kept = hub.lock.reservationForRestart(this.host.config.console.writerReservationMs);
      if (kept) this.reservations.set(guest.id, kept);
      hub.close('UPGRADING', 'consoled is handing over to its successor');
    } else if (this.host.shutdown.aborted) hub.close('SHUTTING_DOWN', 'consoled is shutting down');
    else hub.close('GUEST_DETACHED', `guest ${guest.id} was detached`);
  }

  /** Lines for the demo banner: each guest's console URL with a token. */
  demoHints(): string[] {
    const lines: string[] = [];
    for (const id of this.hubs.keys()) {
      const { token } = this.auth.issue(
        { guest: id, mode: 'rw', ttlMs: DEMO_TOKEN_TTL_MS, name: 'demo' },
        true,
      );
      lines.push(
        '',
        `  console in a browser (a rw token valid 12 h):`,
        `    ${this.host.url()}/console/${id}#token=${token}`,
      );
    }
    return lines;
  }
}
