import type { Server } from 'node:http';
import type { Daemon } from '../daemon.js';
import type { Guest } from '../guest.js';
import { logRoute } from '../http/log-route.js';
import { AuditLog } from './audit-log.js';
import { ConsoleAuth } from './console-auth.js';
import { guestConsoleLimits } from './console-config.js';
import { consoleMetrics } from './console-metrics.js';
import { addConsoleRoutes } from './console-routes.js';
import { loadConsoleSecret } from './console-secret.js';
import { ConsoleServer } from './console-server.js';
import { ConsoleHub } from './hub.js';
import { SharedUsedTokens } from './shared-used-tokens.js';
import { UsedTokenJournal } from './used-token-journal.js';

/** Lifetime of the token in the demo banner's URL. */
const DEMO_TOKEN_TTL_MS = 12 * 3600_000;

/**
 * The WebSocket console wired into the daemon: one hub per attached guest (made on
 * `attached`, closed on `detached`, after the guest's source stopped and its log
 * flushed, so viewers get the last bytes), the upgrade endpoint, the HTTP routes,
 * metrics, the status section, and the demo banner's URL.
 */
export class ConsoleService {
  private readonly hubs = new Map<string, ConsoleHub>();
  private server: ConsoleServer | null = null;
  readonly audit: AuditLog;

  private constructor(
    private readonly daemon: Daemon,
    readonly auth: ConsoleAuth,
  ) {
    const { logger, registry } = daemon;
    this.audit = new AuditLog(logger, { episodeMs: daemon.config.console.refusalEpisodeMs });
    for (const guest of registry.list()) this.onAttached(guest);
    registry.on('attached', (guest) => this.onAttached(guest));
    registry.on('detached', (guest) => this.onDetached(guest));
    addConsoleRoutes(daemon.router, {
      auth: this.auth,
      audit: this.audit,
      logHandler: logRoute(daemon.resolveLog),
      proxies: daemon.proxies,
      allowedHosts: daemon.config.console.allowedHosts,
    });
    daemon.metrics.add(
      consoleMetrics(
        () => this.hubs.values(),
        () => this.server,
      ),
    );
    daemon.demoHintProviders.push(() => this.demoHints());
  }

  /** Loads (or generates) the token secret and wires the console into `daemon`; call before guests attach. */
  static async create(daemon: Daemon): Promise<ConsoleService> {
    const c = daemon.config.console;
    const secret = await loadConsoleSecret(daemon.config.stateDir, c.tokenSecret);
    const journal = UsedTokenJournal.open(daemon.config.stateDir, c.maxUsedTokens, daemon.logger);
    daemon.shutdownController.signal.addEventListener('abort', () => journal.close(), { once: true });
    const auth = new ConsoleAuth(secret, daemon.adminToken, {
      maxUsedTokens: c.maxUsedTokens,
      maxTokenTtlMs: c.maxTokenTtlMs,
      requireAuth: c.requireAuth,
      usedTokens: journal.registry,
    });
    return new ConsoleService(daemon, auth);
  }

  /** Spent single-use ids go to Redis as well (call once replication is up). */
  shareUsedTokens(client: ConstructorParameters<typeof SharedUsedTokens>[0], keyPrefix: string): void {
    this.auth.sharedUsedTokens = new SharedUsedTokens(client, keyPrefix);
  }

  /** Serves WebSocket upgrades on the API server. */
  listen(server: Server): void {
    this.server = new ConsoleServer({
      config: this.daemon.config.console,
      auth: this.auth,
      audit: this.audit,
      logger: this.daemon.logger,
      hubOf: (id) => this.hubs.get(id),
      shutdown: this.daemon.shutdownController.signal,
      proxies: this.daemon.proxies,
    });
    this.server.listen(server);
  }

  hub(guestId: string): ConsoleHub | undefined {
    return this.hubs.get(guestId);
  }

  private onAttached(guest: Guest): void {
    const config = this.daemon.config.console;
    this.hubs.get(guest.id)?.close('GUEST_DETACHED', 'the guest was attached again');
    this.hubs.set(
      guest.id,
      new ConsoleHub(guest, config, guestConsoleLimits(config, guest.id), this.audit, this.daemon.logger),
    );
  }

  private onDetached(guest: Guest): void {
    const hub = this.hubs.get(guest.id);
    if (!hub || hub.guest !== guest) return;
    this.hubs.delete(guest.id);
    if (this.daemon.shutdownController.signal.aborted)
      hub.close('SHUTTING_DOWN', 'consoled is shutting down');
    else hub.close('GUEST_DETACHED', `guest ${guest.id} was detached`);
  }

  private demoHints(): string[] {
    const lines: string[] = [];
    for (const id of this.hubs.keys()) {
      const { token } = this.auth.issue(
        { guest: id, mode: 'rw', ttlMs: DEMO_TOKEN_TTL_MS, name: 'demo' },
        true,
      );
      lines.push(
        '',
        `  console in a browser (a rw token valid 12 h):`,
        `    ${this.daemon.url}/console/${id}#token=${token}`,
      );
    }
    return lines;
  }
}
