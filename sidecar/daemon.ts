import { EventEmitter } from 'node:events';
import type { Logger } from 'pino';
import { ConsoledError } from '../common/errors.js';
import { consoledVersion } from '../common/version.js';
import { LocalLog } from '../store/local-log.js';
import type { LogViewResolver } from '../store/log-view.js';
import type { HostAnnouncement } from '../store/replication/host-registry.js';
import { assertStateDir } from '../store/safe-files.js';
import { type Config, configWarnings } from './config.js';
import { ConsoleService } from './console/console-service.js';
import type { LockReservation } from './console/writer-lock.js';
import { guestDir, localLogOptions } from './guest.js';
import { DetachedDirExpiry } from './guests/detached-dir-expiry.js';
import { guestMetrics } from './guests/guest-metrics.js';
import { GuestRegistry } from './guests/guest-registry.js';
import { loadAdminToken } from './http/admin-token.js';
import { advertisedUrls } from './http/advertise-config.js';
import { ApiServer } from './http/api-server.js';
import { TrustedProxies } from './http/forwarded.js';
import { addGuestRoutes } from './http/guest-routes.js';
import { historyRoute } from './http/history-route.js';
import { addHostsRoute, localHostDirectory } from './http/hosts-route.js';
import { logRoute } from './http/log-route.js';
import { markersRoute } from './http/marker-route.js';
import { type MetricFamily, MetricsRegistry } from './http/metrics.js';
import { Router } from './http/router.js';
import { loadTlsMaterial, type TlsMaterial } from './http/tls-files.js';
import { AttachSpool } from './libvirt/attach-spool.js';
import { handOver, type UpgradeResult } from './lifecycle/handover.js';
import { ConsoleDirectory } from './replication/console-directory.js';
import { ReplicationService } from './replication/replication-service.js';
import type { InheritedHandles } from './sources/chardev-handle.js';

/** The V8 heap and the memory outside it (Buffers), sampled at each scrape (README "Metrics"). */
function heapMetrics(): MetricFamily[] {
  const { heapUsed, external } = process.memoryUsage();
  return [
    {
      name: 'consoled_process_heap_used_bytes',
      help: 'V8 heap in use.',
      type: 'gauge',
      samples: [{ value: heapUsed }],
    },
    {
      name: 'consoled_process_external_memory_bytes',
      help: 'Memory held outside the V8 heap (Buffers).',
      type: 'gauge',
      samples: [{ value: external }],
    },
  ];
}

/** What a daemon adopts at start (docs/design.md "Upgrade", "Restarts"). */
export type Inherited = InheritedHandles & {
  /** Writer locks kept by the process before an upgrade, by guest. */
  readonly writerReservations?: Readonly<Record<string, LockReservation>>;
};

export interface DaemonEvents {
  /**
   * This process became the main process of the service: a successor after its
   * parent let go at an upgrade (docs/design.md "Upgrade"). The place for `MAINPID=`.
   */
  'became-main': [pid: number];
  /** An upgrade handed everything to the successor: this process should stop and exit 0. */
  upgraded: [UpgradeResult];
}

/** The whole sidecar: guests, the HTTP API, one orderly shutdown, and the upgrade. */
export class Daemon extends EventEmitter<DaemonEvents> {
  readonly router = new Router();
  readonly metrics = new MetricsRegistry();
  readonly registry: GuestRegistry;
  readonly shutdownController = new AbortController();
  /** `trustedProxies`: whose forwarded headers name the client. */
  readonly proxies: TrustedProxies;
  private api: ApiServer | null = null;
  /** Replication to the shared Redis stream; null when no `redis` is configured. */
  replication: ReplicationService | null = null;
  private stopping: Promise<void> | null = null;
  /** Retention of detached guests' directories (docs/design.md "Retention"). */
  private detachedExpiry: DetachedDirExpiry | null = null;
  private upgrading: Promise<UpgradeResult> | null = null;
  private console: ConsoleService | null = null;
  private readonly startedAt = Date.now();

  /** The configuration in force: the one started with, or the last reload's (lifecycle/reload.ts). */
  private current: Readonly<Config>;

  private constructor(
    config: Readonly<Config>,
    readonly logger: Logger,
    readonly adminToken: string,
    /**
     * Chardevs (and the API listener) to adopt: a successor's at an upgrade, or those
     * connected early at start (docs/design.md "Upgrade", "Restarts").
     */
    private readonly inheritance: Inherited | null,
  ) {
    super();
    this.current = config;
    this.registry = new GuestRegistry(config, logger);
    this.proxies = new TrustedProxies(config.trustedProxies);
  }

  /**
   * Starts the daemon. `inheritance`: the chardevs and API listener a successor adopts
   * at an upgrade, or connections made early at start (lifecycle/pre-dial.ts).
   */
  static async start(
    config: Readonly<Config>,
    logger: Logger,
    inheritance: Inherited | null = null,
  ): Promise<Daemon> {
    // Whoever can write in the state directory can plant links in it: refuse to run
    // unless only this user can (SECURITY.md, "Symbolic links").
    await assertStateDir(config.stateDir);
    for (const warning of configWarnings(config)) logger.warn(`config: ${warning}`);
    const daemon = new Daemon(config, logger, await loadAdminToken(config), inheritance);
    await daemon.run();
    return daemon;
  }

  get config(): Readonly<Config> {
    return this.current;
  }

  /** A reload's configuration becomes the one in force (only fields a reload may change differ). */
  adoptConfig(next: Readonly<Config>): void {
    this.current = next;
  }

  /**
   * Reads the TLS listener's certificate and key again (a reload): new connections get
   * them, connections already up keep theirs. Throws BAD_CONFIG, keeping the pair in
   * force, when they do not load.
   */
  async reloadTls(next: Readonly<Config>): Promise<TlsMaterial['summary'] | null> {
    if (!next.listen.tls || !this.api?.tlsServer) return null;
    const material = await loadTlsMaterial(next.listen.tls);
    this.api.setTlsMaterial(material);
    this.logger.info({ certificate: material.summary }, 'TLS certificate reloaded');
    return material.summary;
  }

  /** The URL of the HTTP API. */
  get url(): string {
    return this.api?.url ?? '';
  }

  get apiServer(): ApiServer {
    if (!this.api) throw new Error('daemon not started');
    return this.api;
  }

  private async run(): Promise<void> {
    const { config, router, registry } = this;
    router.add(
      'GET',
      '/healthz',
      () => {
        const ready = !this.shutdownController.signal.aborted;
        // Open to anyone, so it names nothing: no host, no guests.
        return { status: ready ? 200 : 503, body: { status: ready ? 'ok' : 'shutting-down' } };
      },
      { auth: 'none' },
    );
    router.add(
      'GET',
      '/metrics',
      (ctx) => {
        ctx.res.writeHead(200, { 'content-type': 'text/plain; version=0.0.4' });
        ctx.res.end(this.metrics.render());
        return undefined;
      },
      // The metrics name every guest and the host: admin only unless the operator opts out.
      { auth: config.metrics.requireAuth ? 'admin' : 'none' },
    );
    addGuestRoutes(router, registry);
    router.add(
      'POST',
      '/v1/upgrade',
      async (ctx) => {
        const result = await this.upgrade();
        ctx.res.shouldKeepAlive = false; // the next request goes to the successor
        // This process exits once the answer is out (consoled.ts listens for `upgraded`).
        ctx.res.once('close', () => this.emit('upgraded', result));
        return { status: 200, body: result };
      },
      { auth: 'admin' },
    );
    router.add('GET', '/v1/guests/:id/log', logRoute(this.resolveLog), { auth: 'admin' });
    router.add('GET', '/v1/guests/:id/markers', markersRoute(this.resolveLog), { auth: 'admin' });
    // Retention (docs/design.md "Retention"): purge a detached guest's history.
    const history = {
      registry,
      stateDir: config.stateDir,
      streams: () => this.replication,
      logger: this.logger,
    };
    router.add('DELETE', '/v1/guests/:id/history', historyRoute(history), { auth: 'admin' });
    // The host registry (docs/design.md "Host registry"): Redis', or this host alone.
    const local = localHostDirectory(() => this.announcement());
    addHostsRoute(router, this.metrics, config.hostId, () => this.replication?.hosts ?? local);
    this.metrics.add(guestMetrics(registry));
    this.metrics.add(() => [
      {
        name: 'consoled_process_resident_memory_bytes',
        help: 'Resident set size.',
        type: 'gauge',
        samples: [{ value: process.memoryUsage.rss() }],
      },
      ...heapMetrics(),
      {
        name: 'consoled_process_uptime_seconds',
        help: 'Seconds since start.',
        type: 'gauge',
        samples: [{ value: (Date.now() - this.startedAt) / 1000 }],
      },
    ]);

    const { logger, metrics, proxies, adminToken, resolveLog } = this;
    const consoleService = await ConsoleService.create({
      config,
      logger,
      registry,
      router,
      metrics,
      proxies,
      adminToken,
      shutdown: this.shutdownController.signal,
      resolveLog,
      url: () => this.url,
      writerReservations: this.inheritance?.writerReservations,
    });
    this.console = consoleService;
    this.demoHintProviders.push(() => consoleService.demoHints());
    if (config.redis) {
      this.replication = await ReplicationService.create({ config, logger, registry, router, metrics });
      const redis = this.replication.connection;
      consoleService.shareUsedTokens(redis.client, config.redis.keyPrefix);
      consoleService.shareRevocations(
        {
          client: redis.client,
          subscribe: (channel, listener) => redis.subscribe(channel, listener),
          onResubscribed: (listener) => redis.on('resubscribed', listener),
        },
        config.redis.keyPrefix,
      );
      consoleService.joinCluster(new ConsoleDirectory(this.replication, config.redis.keyPrefix));
    }
    await registry.start(this.inheritance?.guests);
    this.detachedExpiry = new DetachedDirExpiry(config, registry, logger);
    // libvirt: what the hook could not deliver while this daemon was down (README "libvirt").
    const attachSpool = new AttachSpool(config, registry, this.logger);
    await attachSpool.replay();
    this.api = new ApiServer({
      router,
      adminToken: this.adminToken,
      checkViewerToken: (token) => consoleService.auth.checkViewerToken(token),
      maxBodyBytes: config.limits.maxBodyBytes,
      http: config.http,
      logger: this.logger,
      shutdown: this.shutdownController.signal,
      upgrading: () => registry.isUpgrading,
      tls: config.listen.tls ? await loadTlsMaterial(config.listen.tls) : undefined,
    });
    consoleService.listen(this.api.server, ...(this.api.tlsServer ? [this.api.tlsServer] : []));
    const guard = this.api.guard;
    this.metrics.add(() => [
      {
        name: 'consoled_http_connections',
        help: 'Open HTTP connections by class (general, reserved, follower, upgraded).',
        type: 'gauge',
        samples: Object.entries(guard.snapshot()).map(([cls, value]) => ({ labels: { class: cls }, value })),
      },
      {
        name: 'consoled_http_refused_total',
        help: 'HTTP connections or requests refused by the connection limits, and answered connections cut short to make room, by reason.',
        type: 'counter',
        samples: Object.entries(guard.counters).map(([reason, value]) => ({ labels: { reason }, value })),
      },
    ]);
    const listen = config.listen.socketPath
      ? { path: config.listen.socketPath }
      : { host: config.listen.host, port: config.listen.port };
    const apiFd = this.inheritance?.apiFd ?? null;
    await this.api.listen(apiFd !== null ? { fd: apiFd } : listen);
    const tls = config.listen.tls;
    if (tls) {
      const tlsFd = this.inheritance?.apiTlsFd ?? null;
      await this.api.listenTls(
        tlsFd !== null ? { fd: tlsFd } : { host: tls.host ?? config.listen.host, port: tls.port },
      );
    }
    // Now that its URLs are known, this host joins the host registry.
    this.replication?.hosts.start(this.announcement());
    // Again, once the API answers: a hook that failed between the replay and now spooled too.
    void attachSpool.replay();
    this.logger.info(
      { url: this.api.url, tlsUrl: this.api.tlsUrl, guests: registry.size, hostId: config.hostId },
      'consoled listening',
    );
  }

  /** What this host publishes in the host registry (docs/design.md "Host registry"). */
  private announcement(): HostAnnouncement {
    const config = this.current;
    return {
      hostId: config.hostId,
      ...advertisedUrls(config.advertise, this.url, this.api?.tlsUrl ?? null),
      version: consoledVersion(),
      pid: process.pid,
      startedAt: this.startedAt,
    };
  }

  /** Extra lines for the demo banner, from subsystems (the console page URL). */
  readonly demoHintProviders: Array<() => string[]> = [];

  demoHints(): string[] {
    return this.demoHintProviders.flatMap((f) => f());
  }

  /** The log a read uses: local here; cluster and auto through replication when configured. */
  readonly resolveLog: LogViewResolver = async (guestId, scope) => {
    if (this.replication) {
      return this.replication.resolve(guestId, scope, () => this.resolveLocalLog(guestId));
    }
    if (scope === 'cluster')
      throw new ConsoledError('REPLICATION_UNAVAILABLE', 'no Redis is configured on this host');
    return this.resolveLocalLog(guestId);
  };

  /** Local scope: the attached guest's log, or the files a detached guest left here. */
  private readonly resolveLocalLog = async (guestId: string): Promise<{ view: LocalLog; scope: 'local' }> => {
    const guest = this.registry.get(guestId);
    if (guest) return { view: guest.log, scope: 'local' };
    const kept = await LocalLog.inspect(
      guestDir(this.config.stateDir, guestId),
      localLogOptions(this.config),
    );
    if (!kept) throw new ConsoledError('GUEST_NOT_FOUND', `no log for guest ${guestId} on this host`);
    return { view: kept, scope: 'local' };
  };

  /**
   * Hands everything to a successor process (docs/design.md "Upgrade"): resolves with
   * what happened once the successor is the daemon (emit `upgraded` when the caller
   * has answered); throws UPGRADE_FAILED, with this process serving as before, when
   * the successor did not make it. One upgrade at a time.
   */
  upgrade(): Promise<UpgradeResult> {
    if (this.stopping) return Promise.reject(new ConsoledError('SHUTTING_DOWN'));
    if (this.upgrading) return this.upgrading;
    const replication = this.replication;
    // Keep-alive connections to this process end here: a client must not send its next
    // request on a connection the process closes when it exits (the answers during the
    // handover say `Connection: close`, api-server.ts).
    this.api?.closeIdleConnections();
    // The successor publishes this host's entry from its start; until the handover failed, this process does not.
    replication?.hosts.pause();
    const attempt = handOver({
      registry: this.registry,
      replicationSettled: replication ? () => replication.settled() : null,
      apiServer: this.api?.server ?? null,
      apiTlsServer: this.api?.tlsServer ?? null,
      readyTimeoutMs: this.config.upgrade.readyTimeoutMs,
      writerReservations: () => this.console?.writerReservations() ?? {},
      logger: this.logger,
    });
    this.upgrading = attempt;
    // Consoles this process proxied to other hosts: 1012, and they resume on the successor.
    attempt.then(
      () => this.console?.closeProxied(),
      () => undefined,
    );
    // A failed upgrade may be tried again; a done one leaves this process to exit.
    attempt.catch(() => {
      if (this.upgrading === attempt) this.upgrading = null;
      replication?.hosts.resume();
    });
    return attempt;
  }

  /**
   * After an upgrade handed everything over: closes what is left of this process (its
   * Redis connection, open HTTP connections) before it exits. The API's listening
   * socket is left to the exit: closing a unix socket would unlink the path the
   * successor listens on.
   */
  async retire(): Promise<void> {
    this.shutdownController.abort();
    this.detachedExpiry?.stop();
    await this.replication?.stop('upgrade');
    this.api?.closeAllConnections();
  }

  /**
   * A successor took over: from now on this process is the daemon. Emits
   * `became-main` (where the service manager is told the new main pid).
   */
  becameMain(): void {
    this.emit('became-main', process.pid);
  }

  /**
   * Abort the root controller, then in order: stop accepting, stop reading the
   * sources and flush every local log, drain replication, and only then close the
   * chardevs, so they are disconnected for as short a time as possible
   * (docs/design.md "Restarts").
   */
  stop(reason = 'shutdown'): Promise<void> {
    if (!this.stopping) {
      this.stopping = (async () => {
        this.logger.info({ reason }, 'shutting down');
        this.shutdownController.abort();
        this.detachedExpiry?.stop();
        // This host leaves the host registry first: it is going away (replication.stop awaits it).
        void this.replication?.hosts.stop({ remove: true });
        const closing = this.api?.close();
        await this.registry.closeAll();
        await this.replication?.stop('shutdown');
        this.api?.closeAllConnections();
        await closing;
        this.registry.dropChardevs();
        this.logger.info('stopped');
      })();
    }
    return this.stopping;
  }
}
