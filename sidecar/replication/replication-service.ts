/**
 * Replication wired into the daemon (when `redis:` is configured): one Replicator per
 * attached guest, the handoff route and notifications, the `replication` status
 * section, the metrics, the log views of `scope=cluster|auto`, and this host's entry in
 * the host registry (docs/design.md "Host registry").
 */
import { EventEmitter, once } from 'node:events';
import { mkdir, rename, stat } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { ConsoledError } from '../../common/errors.js';
import { assertGuestId } from '../../common/guest-id.js';
import { LocalLog } from '../../store/local-log.js';
import type { LogScope, ResolvedLogView } from '../../store/log-view.js';
import { HostRegistry } from '../../store/replication/host-registry.js';
import { InFlightBudget } from '../../store/replication/in-flight-budget.js';
import { MergedLogView } from '../../store/replication/merged-log-view.js';
import {
  type Knowledge,
  NO_KNOWLEDGE,
  OWNING_ROLES,
  type OwnershipRole,
} from '../../store/replication/ownership.js';
import { replicationCommands } from '../../store/replication/redis-commands.js';
import { guestKeys, skipsKey } from '../../store/replication/redis-keys.js';
import {
  initialState,
  type PersistedRole,
  type ReplicationState,
  ReplicationStateFile,
} from '../../store/replication/replication-state.js';
import { type HandoffNotice, Replicator } from '../../store/replication/replicator.js';
import { SegmentClock } from '../../store/replication/segment-clock.js';
import { SharedLog } from '../../store/replication/shared-log.js';
import { StreamLogView } from '../../store/replication/stream-log-view.js';
import { type Config, fileModeOf, type GuestSpec } from '../config.js';
import type { SeamEvents } from '../console/console-cluster.js';
import { type Guest, guestDir, localLogOptions } from '../guest.js';
import type { AttachOrigin, DetachReason, GuestRegistry } from '../guests/guest-registry.js';
import type { MetricsRegistry } from '../http/metrics.js';
import type { Router } from '../http/router.js';
import { GuestHandle } from './guest-control.js';
import { HostHeartbeat } from './host-heartbeat.js';
import { archiveLog } from './log-archive.js';
import { duplicateForBlocking, RedisConnection } from './redis-connection.js';
import { RedisMemoryWatch } from './redis-memory-watch.js';
import type { RedisConfig } from './replication-config.js';
import { replicationMetrics } from './replication-metrics.js';
import { StreamExpiry } from './stream-expiry.js';

/** A Redis look-up made while attaching a guest waits at most this long. */
const ATTACH_LOOKUP_TIMEOUT_MS = 1_000;

interface Entry {
  readonly guest: Guest;
  readonly replicator: Replicator;
  readonly handle: GuestHandle;
  readonly spool: LocalLog | null;
  readonly dispose: () => void;
}

/** What `beforeOpen` decided for a guest, taken by `onAttached` once its log is open. */
interface Preloaded {
  /** A state to carry on with, or null for a new one in `role`. */
  readonly state: ReplicationState | null;
  readonly role: PersistedRole;
  readonly known: Knowledge;
  readonly spool: LocalLog | null;
}

/** Where an incoming guest holds its output until it owns the stream. */
const SPOOL_DIR = 'spool';
/** A status report waits at most this long for Redis to confirm an owner. */
const STATUS_CONFIRM_TIMEOUT_MS = 300;

/** What replication needs from the daemon that hosts it. */
export interface ReplicationHost {
  readonly config: Readonly<Pick<Config, 'redis' | 'hostId' | 'stateDir' | 'handoff' | 'defaults' | 'store'>>;
  readonly logger: Logger;
  /** Its hooks and events: replication decides before a log opens and before a source stops. */
  readonly registry: GuestRegistry;
  /** Gets the handoff route. */
  readonly router: Router;
  readonly metrics: MetricsRegistry;
}

export class ReplicationService {
  readonly connection: RedisConnection;
  /** Seams of this host's guests (the console tells its viewers). */
  readonly seams = new EventEmitter<SeamEvents>();
  readonly shared: SharedLog;
  /** The segments' age bound, one clock for every guest (their appends leave together). */
  private readonly clock: SegmentClock;
  /** The bytes of all guests' appends in flight, bounded (`redis.maxInFlightBytes`). */
  readonly inFlightBudget: InFlightBudget;
  private readonly entries = new Map<string, Entry>();
  /** States loaded by the before-open hook, taken by `attached`. */
  private readonly preloaded = new Map<string, Preloaded>();
  /** Replicators of detached guests still publishing their last bytes. */
  private readonly finishing = new Map<string, Promise<void>>();
  /** Handoff totals of replicators that are gone (metrics are counters). */
  readonly retired = { handoffsCompleted: 0, handoffsForced: 0, handoffsAborted: 0, handoffsCancelled: 0 };
  private readonly logger: Logger;
  /** Operators' calls that can move a stream (the audit log: README "Audit file"). */
  private readonly audit: Logger;
  private readonly config: RedisConfig;
  /** Retention (docs/design.md "Retention"): streams of gone guests expire; Redis memory is watched. */
  readonly expiry: StreamExpiry;
  readonly memory: RedisMemoryWatch;
  /** This host in the host registry; it starts publishing once the API listens (`announce`). */
  readonly hosts: HostHeartbeat;

  private constructor(private readonly host: ReplicationHost) {
    const config = host.config.redis;
    if (!config) throw new Error('replication needs a redis section');
    this.config = config;
    this.logger = host.logger.child({ component: 'replication' });
    this.audit = host.logger.child({ component: 'audit' });
    this.connection = new RedisConnection(config, host.config.hostId, host.logger);
    this.clock = new SegmentClock(config.segmentMaxAgeMs);
    this.inFlightBudget = new InFlightBudget(config.maxInFlightBytes);
    this.shared = new SharedLog(this.connection.client, {
      prefix: config.keyPrefix,
      followBlockMs: config.followBlockMs,
    });
    const { registry, router } = host;
    registry.beforeOpen.push((id, spec, origin) => this.beforeOpen(id, spec, origin));
    registry.beforeClose.push((guest, reason) => this.beforeClose(guest, reason));
    registry.on('attached', (guest) => this.onAttached(guest));
    registry.on('detached', (guest, reason) => this.onDetached(guest, reason));
    this.connection.on('notice', (notice) => this.onNotice(notice));
    this.connection.on('resubscribed', () => {
      for (const entry of this.entries.values()) entry.replicator.poke();
    });
    router.add(
      'POST',
      '/v1/guests/:id/handoff',
      (ctx) => {
        const id = assertGuestId(ctx.params['id']);
        const entry = this.entries.get(id);
        if (!entry) throw new ConsoledError('GUEST_NOT_FOUND', `guest ${id} is not attached here`);
        const force = ['1', 'true'].includes(ctx.url.searchParams.get('force') ?? '');
        // An operator's call that can take a stream from its owner: in the audit log
        // (and so the audit file), with who asked and what the stream said then.
        const before = entry.replicator.status();
        this.audit.info(
          {
            event: force ? 'handoff.force' : 'handoff.request',
            guest: id,
            remote: ctx.req.socket.remoteAddress ?? null,
            role: before.role,
            owner: before.owner,
            ownerEpoch: before.ownerEpoch,
          },
          force ? 'an operator forces the handoff' : 'an operator asks for the handoff',
        );
        entry.replicator.requestOwnership('api', force);
        return { status: 202, body: { id, replication: entry.replicator.status() } };
      },
      { auth: 'admin' },
    );
    host.metrics.add(replicationMetrics(this));
    this.expiry = new StreamExpiry(this.connection, config, this.logger);
    this.memory = new RedisMemoryWatch(this.connection, config.memory, host.logger);
    const hostRegistry = new HostRegistry(this.connection.client, config.keyPrefix);
    this.hosts = new HostHeartbeat(this.connection, hostRegistry, config.hosts, host.logger);
    host.metrics.add(() => [
      ...this.memory.metrics(),
      {
        name: 'consoled_redis_streams_expired_total',
        help: 'Streams of gone guests this host deleted (redis.retention.goneAfterMs).',
        type: 'counter',
        samples: [{ value: this.expiry.counters.expiredStreams }],
      },
    ]);
  }

  static async create(host: ReplicationHost): Promise<ReplicationService> {
    return new ReplicationService(host);
  }

  get hostId(): string {
    return this.host.config.hostId;
  }

  /** Every live replicator, with its guest id. */
  replicators(): Array<[string, Replicator]> {
    return [...this.entries].map(([id, e]) => [id, e.replicator]);
  }

  /**
   * Publishes what is left (with the configured deadline) and closes the connection.
   * A shutdown takes this host out of the host registry at once; after an upgrade the
   * entry stays for the successor, which has the same host id.
   */
  async stop(reason: 'shutdown' | 'upgrade' = 'shutdown'): Promise<void> {
    const leaving = this.hosts.stop({ remove: reason === 'shutdown' });
    await Promise.all([...this.entries.values()].map((e) => this.retire(e, 'shutdown')));
    await Promise.all(this.finishing.values());
    await leaving;
    this.clock.stop();
    this.expiry.stop();
    this.memory.stop();
    await this.connection.close();
  }

  /**
   * Deletes the guest's stream and its keys unless a host owns the stream
   * (`STREAM_OWNED`; docs/design.md "Retention"). The caller holds the guest detached
   * here; a replicator still publishing its last bytes finishes first.
   */
  async purgeStream(id: string): Promise<{ deletedKeys: number; epoch: number }> {
    if (this.entries.has(id)) throw new ConsoledError('GUEST_ATTACHED', `guest ${id} is attached here`);
    await this.finishing.get(id);
    if (!this.connection.ready)
      throw new ConsoledError('REPLICATION_UNAVAILABLE', 'Redis is not reachable from this host');
    const prefix = this.config.keyPrefix;
    return replicationCommands(this.connection.client).purge(guestKeys(prefix, id), skipsKey(prefix, id));
  }

  /**
   * Resolves once every detached guest's replicator finished (published what it could
   * and saved its state, keeping ownership): what an upgrade waits for before the
   * successor loads those states (docs/design.md "Upgrade").
   */
  async settled(): Promise<void> {
    await Promise.all(this.finishing.values());
  }

  // Log views ------------------------------------------------------------------

  /**
   * `scope=cluster`: the stream. `auto`: this host's log extended with the stream's
   * older history while this host writes the guest; the stream when it does not
   * (incoming, handed off, fenced, not attached); the local files when Redis is away.
   */
  async resolve(
    guestId: string,
    scope: LogScope,
    local: () => Promise<ResolvedLogView>,
  ): Promise<ResolvedLogView> {
    if (scope === 'local') return local();
    const entry = this.entries.get(guestId);
    if (scope === 'cluster') {
      if (!this.connection.ready)
        throw new ConsoledError('REPLICATION_UNAVAILABLE', 'Redis is not reachable from this host');
      const view = this.streamView(guestId);
      if (!(await view.exists()))
        throw new ConsoledError('GUEST_NOT_FOUND', `no stream for guest ${guestId}`);
      return { view, scope: 'cluster' };
    }
    if (entry) {
      const r = entry.replicator;
      if (r.role === 'owner') {
        const view = new MergedLogView(entry.guest.log, this.streamView(guestId), {
          local: () => this.entries.get(guestId) === entry && r.writing && entry.guest.log.state !== 'closed',
          localLimit: () => r.sealLimit,
          localEnded: (signal) =>
            once(r, 'change', { signal }).then(
              () => undefined,
              () => undefined,
            ),
        });
        return { view, scope: 'local' };
      }
      if (this.connection.ready) return { view: this.streamView(guestId), scope: 'cluster' };
      if (r.role === 'incoming' || r.role === 'adopting') {
        throw new ConsoledError(
          'REPLICATION_UNAVAILABLE',
          'the guest is still arriving here and Redis is not reachable',
        );
      }
      return local();
    }
    if (this.connection.ready) {
      const view = this.streamView(guestId);
      try {
        if (await view.exists()) return { view, scope: 'cluster' };
      } catch {
        // Redis went away meanwhile: what this host kept will do
      }
    }
    return local();
  }

  streamView(guestId: string): StreamLogView {
    return new StreamLogView(this.shared, this.connection.client, guestId, {
      prefix: this.config.keyPrefix,
      blockMs: this.config.followBlockMs,
      duplicate: () => duplicateForBlocking(this.connection.client, this.config),
    });
  }

  // Guests --------------------------------------------------------------------

  /**
   * Before a guest's log opens: what this host is to the guest's stream, from its saved
   * state and how the guest was attached (docs/design.md "Ownership"):
   * - brought back at a restart: the saved role carries on (verified with Redis before
   *   anything is appended); a missing or unreadable state makes this host a follower;
   * - attached explicitly (API, or declared with no state yet): it claims the stream if
   *   nobody owns it; a log left by an earlier stay it did not own is moved aside;
   * - attached with `incoming: true`: the destination of a migration, holding output
   *   in a spool; a stale log is moved aside.
   * What this host knew of later owners is carried over in every case.
   */
  private async beforeOpen(id: string, spec: GuestSpec, origin: AttachOrigin): Promise<void> {
    const incoming = spec.incoming === true;
    await this.finishing.get(id);
    const dir = guestDir(this.host.config.stateDir, id);
    const stateFile = new ReplicationStateFile(dir, fileModeOf(this.host.config));
    const loaded = await stateFile.load();
    let state = loaded.kind === 'state' ? loaded.state : null;
    if (state && state.host !== this.hostId) {
      this.logger.warn(
        { guest: id, host: state.host },
        'replication state written by another host; not trusted',
      );
      state = null;
    }
    const known = state?.known ?? NO_KNOWLEDGE;
    const owning = state !== null && OWNING_ROLES.has(state.role);
    let role: PersistedRole;
    let keep: boolean;
    if (incoming) {
      keep =
        state !== null &&
        (state.role === 'incoming' ||
          state.role === 'adopting' ||
          (owning && !(await this.ownedElsewhere(id))));
      role = 'incoming';
    } else if (origin === 'restart' || (origin === 'config' && loaded.kind !== 'missing')) {
      keep = state !== null;
      role = 'follower';
      if (!keep) {
        this.logger.warn(
          { guest: id, state: loaded.kind, why: loaded.kind === 'unreadable' ? loaded.why : undefined },
          'replication state missing or unreadable: following until a handoff or an operator decides',
        );
      }
    } else {
      keep = owning;
      role = 'claiming';
    }
    const stale = !keep && (state !== null || incoming || (await this.ownedElsewhere(id)));
    if (stale && role !== 'follower') {
      const archived = await archiveLog(dir);
      if (archived) {
        await this.archiveSpool(dir, archived);
        this.logger.info({ guest: id, archived, role: state?.role ?? null }, 'moved a stale local log aside');
      }
    }
    const final = keep ? state : null;
    const spoolNeeded =
      final === null
        ? role === 'incoming'
        : final.role === 'incoming' || (final.role === 'adopting' && final.adopt?.kind === 'spool');
    // A spool no state needs (a copy finished just before a SIGKILL, or a stale stay) is moved aside.
    if (!spoolNeeded || final === null) await this.archiveSpool(dir, null);
    const spool = spoolNeeded ? await this.openSpool(id, spec) : null;
    this.preloaded.set(id, { state: final, role, known, spool });
  }

  /** The spool: a log of the guest's own rotation size (docs/design.md "Migration handoff"). */
  private async openSpool(id: string, spec: GuestSpec): Promise<LocalLog> {
    const { config } = this.host;
    return LocalLog.open({
      dir: join(guestDir(config.stateDir, id), SPOOL_DIR),
      ...localLogOptions(config, spec.rotation ?? config.defaults.rotation),
      logger: this.logger.child({ guest: id, log: 'spool' }),
    });
  }

  /** Moves a spool left by an earlier incoming stay into `archive` (or an archive dir of its own). */
  private async archiveSpool(dir: string, archive: string | null): Promise<void> {
    const spoolDir = join(dir, SPOOL_DIR);
    if (!(await stat(spoolDir).catch(() => null))) return;
    const target = archive ?? join(dir, 'archive', new Date().toISOString().replace(/[:.]/g, '-'));
    await mkdir(target, { recursive: true, mode: 0o750 });
    await rename(spoolDir, join(target, SPOOL_DIR));
  }

  /** Whether Redis says another host writes this guest's stream (false when unsure). */
  private async ownedElsewhere(id: string): Promise<boolean> {
    if (!this.connection.ready) return false;
    try {
      const st = await Promise.race([
        this.shared.owner(id),
        new Promise<null>((r) => setTimeout(() => r(null), ATTACH_LOOKUP_TIMEOUT_MS)),
      ]);
      return (
        st !== null &&
        st.epoch > 0 &&
        st.host !== null &&
        st.host !== this.hostId &&
        (st.next ?? st.streamEnd) !== null
      );
    } catch {
      return false;
    }
  }

  /** This host's role for an attached guest; null when it is not attached here. */
  roleOf(guestId: string): OwnershipRole | null {
    return this.entries.get(guestId)?.replicator.role ?? null;
  }

  /** Turns the replicator's role changes into `seams` events. */
  private watchSeams(guestId: string, replicator: Replicator): void {
    let last = replicator.role;
    replicator.on('change', () => {
      const role = replicator.role;
      if (role === last) return;
      last = role;
      this.seams.emit('role', guestId, role);
      const status = replicator.status();
      const offset = status.handoff.sealedAt;
      // The seal's offset is in the state right after the role changed (source-handoff.ts).
      if (role === 'sealed')
        queueMicrotask(() => {
          const sealedAt = replicator.status().handoff.sealedAt;
          if (replicator.role === 'sealed' && sealedAt !== null)
            this.seams.emit('sealed', guestId, { target: status.handoff.target, offset: sealedAt });
        });
      if (role === 'handed-off' && offset !== null && status.owner !== null && status.owner !== this.hostId)
        this.seams.emit('moved', guestId, { host: status.owner, offset });
    });
  }

  private onAttached(guest: Guest): void {
    const { config } = this.host;
    const redis = this.config;
    const pre = this.preloaded.get(guest.id) ?? {
      state: null,
      role: 'follower' as const,
      known: NO_KNOWLEDGE,
      spool: null,
    };
    this.preloaded.delete(guest.id);
    const state: ReplicationState = pre.state ?? {
      ...initialState(this.hostId, pre.role, guest.log.oldest, pre.known),
      ...(pre.role === 'claiming' ? { spoolStart: guest.log.oldest } : {}),
    };
    if (state.role === 'handed-off') void guest.source.stop(); // the guest runs elsewhere now
    // Until this host owns the stream, an incoming guest's output waits in the spool.
    if (pre.spool) guest.capture.holdInSpool(pre.spool);
    const handle = new GuestHandle(guest);
    const replicator = new Replicator({
      guestId: guest.id,
      host: this.hostId,
      log: guest.log,
      spool: pre.spool,
      shared: this.shared,
      client: this.connection.client,
      prefix: redis.keyPrefix,
      link: this.connection,
      stateFile: new ReplicationStateFile(guestDir(config.stateDir, guest.id), fileModeOf(config)),
      state,
      control: handle,
      notify: (host, notice) => this.connection.notify(host, notice),
      segmentMaxBytes: redis.segmentMaxBytes,
      clock: this.clock,
      recentBytesMax: redis.recentBytesPerGuest,
      maxInFlight: redis.maxInFlightSegments,
      inFlightBudget: this.inFlightBudget,
      retentionBytes: redis.retentionBytes,
      stateSaveIntervalMs: redis.stateSaveIntervalMs,
      handoff: config.handoff,
      logger: this.host.logger.child({ guest: guest.id }),
    });
    // The destination claims on the guest's first byte (markers do not count), at the
    // chardev's `handoff` stage, ahead of capture (guest.ts CHARDEV_STAGES), so the
    // handoff-from marker comes first.
    let stopFirstByte = (): void => undefined;
    if (state.role === 'incoming' && !state.handoff)
      stopFirstByte = guest.observeChardev('handoff', {
        data: () => {
          if (replicator.role === 'incoming' && replicator.phase === 'waiting')
            replicator.requestOwnership('first-byte');
          if (replicator.role !== 'incoming' || replicator.phase !== 'waiting') stopFirstByte();
        },
      });
    const confirm = (): Promise<void> => replicator.confirm(STATUS_CONFIRM_TIMEOUT_MS);
    const entry: Entry = {
      guest,
      replicator,
      handle,
      spool: pre.spool,
      dispose: () => {
        stopFirstByte();
        guest.statusChecks.delete(confirm);
        handle.dispose();
      },
    };
    this.entries.set(guest.id, entry);
    this.watchSeams(guest.id, replicator);
    guest.statusSections.set('replication', () => ({ ...replicator.status(), redis: this.connection.state }));
    guest.statusChecks.add(confirm);
    replicator.start();
  }

  /**
   * A DELETE gives the stream up (docs/design.md "Ownership"): the owner releases it
   * at its final offset, or finishes a live handoff already asked for; an incoming
   * guest cancels its migration. A PUT that replaces the source, or a shutdown, does not.
   */
  private async beforeClose(guest: Guest, reason: DetachReason): Promise<void> {
    const entry = this.entries.get(guest.id);
    if (!entry || entry.guest !== guest || reason !== 'detach') return;
    const { handoff } = this.host.config;
    await entry.replicator.giveUp(this.config.drainTimeoutMs, handoff.completionTimeoutMs);
  }

  private onDetached(guest: Guest, reason: DetachReason): void {
    const entry = this.entries.get(guest.id);
    if (!entry || entry.guest !== guest) return;
    void this.retire(entry, reason);
  }

  private retire(entry: Entry, reason: DetachReason): Promise<void> {
    const id = entry.guest.id;
    if (this.entries.get(id) === entry) this.entries.delete(id);
    const existing = this.finishing.get(id);
    if (existing) return existing;
    const work = (async () => {
      try {
        await entry.replicator.finish(this.config.drainTimeoutMs);
      } catch (err) {
        this.logger.warn({ guest: id, reason, err: String(err) }, 'replication did not finish cleanly');
      }
      const c = entry.replicator.counters;
      this.retired.handoffsCompleted += c.handoffsCompleted;
      this.retired.handoffsForced += c.handoffsForced;
      this.retired.handoffsAborted += c.handoffsAborted;
      this.retired.handoffsCancelled += c.handoffsCancelled;
      entry.dispose();
      if (entry.spool && entry.spool.state !== 'closed') await entry.spool.close();
      entry.guest.statusSections.delete('replication');
    })();
    this.finishing.set(id, work);
    void work.finally(() => {
      if (this.finishing.get(id) === work) this.finishing.delete(id);
    });
    return work;
  }

  private onNotice(notice: HandoffNotice): void {
    const entry = this.entries.get(notice.guest);
    if (!entry) return;
    this.logger.debug(
      { guest: notice.guest, event: notice.event, from: notice.from },
      'handoff notification',
    );
    entry.replicator.poke();
  }
}
