import { EventEmitter } from 'node:events';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { eachLimited } from '../../common/each-limited.js';
import { ConsoledError } from '../../common/errors.js';
import { assertGuestId } from '../../common/guest-id.js';
import { JsonStateFile } from '../../store/json-state-file.js';
import type { RateLimitState } from '../capture/rate-limiter.js';
import { TokenBucket } from '../capture/token-bucket.js';
import { type Config, type GuestSpec, guestSpecSchema } from '../config.js';
import { Guest } from '../guest.js';
import { type ChardevHandle, dropHandle, type InheritedChardev } from '../sources/chardev-handle.js';

interface PersistedAttachments {
  version: typeof ATTACHMENTS_VERSION;
  guests: Record<string, GuestSpec>;
}

/** Guests attached at once at start (declared, then the persisted ones). */
const START_CONCURRENCY = 16;
/** The daemon's runtime attachments (guests attached through the API), in the state directory. */
const ATTACHMENTS_FILE = 'attachments.json';
/** The version of `attachments.json` this build writes and reads (docs/design.md "State files"). */
const ATTACHMENTS_VERSION = 1;

/**
 * Why a guest is detached: a DELETE, a PUT with another spec, the daemon stopping, or
 * an upgrade handing it to the successor (docs/design.md "Upgrade").
 */
export type DetachReason = 'detach' | 'replace' | 'shutdown' | 'upgrade';

/** A guest let go of at an upgrade or a shutdown: its spec and its live chardev. */
export interface HandedGuest {
  readonly id: string;
  readonly spec: GuestSpec;
  readonly declared: boolean;
  /** Null when the source could not be handed over (`exec`: its program was stopped). */
  readonly chardev: ChardevHandle | null;
  /** The rate limiter's bucket and running episode once the last bytes were read. */
  readonly rateLimit: RateLimitState;
}

/**
 * How a guest came to be attached: through the API (a PUT), declared in the config
 * file, or brought back from the persisted attachments at a restart. Replication
 * claims a stream only after an explicit attach (docs/design.md "Ownership").
 */
export type AttachOrigin = 'api' | 'config' | 'restart';

export interface RegistryEvents {
  attached: [Guest];
  /** Emitted before the guest's source stops, so subsystems can drain and detach first. */
  detaching: [Guest, DetachReason];
  detached: [Guest, DetachReason];
}

function sameSpec(a: GuestSpec, b: GuestSpec): boolean {
  return JSON.stringify(a) === JSON.stringify(b);
}

function hostBucketFor(config: Readonly<Config>): TokenBucket | null {
  const host = config.hostRateLimit;
  return host.bytesPerSec > 0 ? new TokenBucket(host.bytesPerSec, host.burstBytes) : null;
}

function withoutRateLimit(spec: GuestSpec): GuestSpec {
  const { rateLimit: _, ...rest } = spec;
  return rest;
}

/**
 * The guests attached on this host: declared in the config file, or attached at run
 * time through the API (persisted, so they come back after a restart).
 */
export class GuestRegistry extends EventEmitter<RegistryEvents> {
  private readonly guests = new Map<string, Guest>();
  private readonly runtime: Record<string, GuestSpec> = {};
  private readonly attachmentsFile: JsonStateFile<PersistedAttachments>;
  private hostBucket: TokenBucket | null;
  /** Serialises attach and detach per guest id. */
  private readonly locks = new Map<string, Promise<unknown>>();
  private closing = false;
  /** Set while an upgrade hands the guests over: attach and detach are refused with UPGRADING. */
  private upgrading = false;
  /** Chardevs let go of at shutdown, closed last (`dropChardevs`). */
  private held: ChardevHandle[] = [];
  /**
   * Run before a guest's log is opened, in order (replication moves aside a log left
   * by an earlier stay of the guest on this host).
   */
  readonly beforeOpen: Array<(id: string, spec: GuestSpec, origin: AttachOrigin) => Promise<void>> = [];
  /**
   * Run before a detaching guest's source stops, in order (replication releases the
   * stream, or finishes a pending handoff, on a DELETE).
   */
  readonly beforeClose: Array<(guest: Guest, reason: DetachReason) => Promise<void>> = [];

  constructor(
    private config: Readonly<Config>,
    private readonly logger: Logger,
  ) {
    super();
    this.attachmentsFile = new JsonStateFile(join(config.stateDir, ATTACHMENTS_FILE), 0o600);
    this.hostBucket = hostBucketFor(config);
  }

  /**
   * Attaches the declared guests and the runtime attachments persisted by an earlier
   * run. A guest in `inherited` adopts that chardev instead of connecting; one left
   * over (a guest no longer configured) is closed.
   */
  async start(inherited: ReadonlyMap<string, InheritedChardev> = new Map()): Promise<void> {
    const take = (id: string): InheritedChardev | undefined => {
      const found = inherited.get(id);
      if (found) (inherited as Map<string, InheritedChardev>).delete(id);
      return found;
    };
    const persisted = await this.attachmentsFile.load();
    // A newer build's file is refused at start rather than rewritten by this one
    // (docs/design.md "State files"): its attachments would be lost at the next save.
    if (persisted && persisted.version !== ATTACHMENTS_VERSION)
      throw new ConsoledError(
        'STATE_VERSION',
        `${join(this.config.stateDir, ATTACHMENTS_FILE)}: version ${JSON.stringify(persisted.version)}; this build reads ${ATTACHMENTS_VERSION}`,
      );
    // Several at a time: an attach mostly waits on files (and Redis), so a host with a
    // thousand guests is ready in a fraction of the time one by one would take.
    await eachLimited(this.config.guests, START_CONCURRENCY, async ({ id, ...spec }) => {
      await this.attachNow(id, spec, true, 'config', take(id));
    });
    const returning = Object.entries(persisted?.guests ?? {}).filter(([id]) => !this.guests.has(id));
    await eachLimited(returning, START_CONCURRENCY, async ([id, raw]) => {
      const parsed = guestSpecSchema.safeParse(raw);
      if (!parsed.success) return;
      try {
        assertGuestId(id);
        this.runtime[id] = parsed.data;
        await this.attachNow(id, parsed.data, false, 'restart', take(id));
      } catch (err) {
        this.logger.error({ guest: id, err: String(err) }, 'cannot reattach a persisted guest');
      }
    });
    for (const [id, left] of inherited) {
      if (left.handle) dropHandle(left.handle);
      this.logger.warn({ guest: id }, 'an inherited chardev belongs to no configured guest; closed');
    }
  }

  get(id: string): Guest | undefined {
    return this.guests.get(id);
  }

  list(): Guest[] {
    return [...this.guests.values()];
  }

  get size(): number {
    return this.guests.size;
  }

  /** Attaches `id` (idempotent: the same spec again is a no-op; another spec replaces the source). */
  attach(id: string, spec: GuestSpec): Promise<{ guest: Guest; created: boolean }> {
    return this.serialised(id, async () => {
      this.assertOpenForChanges();
      const existing = this.guests.get(id);
      if (existing?.declared) {
        if (sameSpec(existing.spec, spec)) return { guest: existing, created: false };
        throw new ConsoledError('GUEST_DECLARED', `guest ${id} is declared in the configuration file`);
      }
      if (existing && sameSpec(existing.spec, spec)) return { guest: existing, created: false };
      if (!existing && this.guests.size >= this.config.limits.maxGuests) {
        throw new ConsoledError('TOO_MANY_GUESTS', `at most ${this.config.limits.maxGuests} guests per host`);
      }
      if (existing) await this.detachNow(existing, 'replace');
      this.runtime[id] = spec;
      await this.saveAttachments();
      try {
        const guest = await this.attachNow(id, spec, false, 'api');
        return { guest, created: !existing };
      } catch (err) {
        // Not attached (a refused state dir path, say): not to be reattached at the next start either.
        delete this.runtime[id];
        await this.saveAttachments().catch(() => undefined);
        throw err;
      }
    });
  }

  /** Detaches `id`: flushes and keeps the logs. */
  detach(id: string): Promise<void> {
    return this.serialised(id, async () => {
      this.assertOpenForChanges();
      const guest = this.guests.get(id);
      if (!guest) throw new ConsoledError('GUEST_NOT_FOUND', `guest ${id} is not attached`);
      if (guest.declared)
        throw new ConsoledError('GUEST_DECLARED', `guest ${id} is declared in the configuration file`);
      delete this.runtime[id];
      await this.saveAttachments();
      await this.detachNow(guest, 'detach');
    });
  }

  /**
   * Runs `work` while `id` is not attached here, holding off an attach until it is done
   * (a history purge, docs/design.md "Retention"); refuses with `GUEST_ATTACHED`.
   */
  whileDetached<T>(id: string, work: () => Promise<T>): Promise<T> {
    return this.serialised(id, async () => {
      this.assertOpenForChanges();
      // A persisted attachment that failed to come back at start is still meant to be attached.
      if (this.guests.has(id) || id in this.runtime) {
        throw new ConsoledError('GUEST_ATTACHED', `guest ${id} is attached here; detach it first`);
      }
      return work();
    });
  }

  /**
   * A reload's limits (sidecar/lifecycle/reload.ts): `next` is the configuration later
   * attaches use; a changed `hostRateLimit` gets a new host bucket, and every guest
   * without a limit of its own takes the new `defaults.rateLimit` (a guest whose limit
   * and bucket are unchanged is not affected). Sources are not touched.
   */
  reconfigure(next: Readonly<Config>): void {
    const hostChanged = JSON.stringify(next.hostRateLimit) !== JSON.stringify(this.config.hostRateLimit);
    this.config = next;
    if (hostChanged) this.hostBucket = hostBucketFor(next);
    for (const guest of this.guests.values()) this.retuneNow(guest, guest.spec);
  }

  /**
   * A guest the reloaded configuration declares: attached when new; when attached with
   * a spec that differs only in `rateLimit`, retuned in place; otherwise replaced (a
   * guest attached through the API under that id gives way to the declared one).
   */
  attachDeclared(id: string, spec: GuestSpec): Promise<'attached' | 'retuned' | 'replaced' | 'unchanged'> {
    return this.serialised(id, async () => {
      this.assertOpenForChanges();
      const existing = this.guests.get(id);
      if (existing?.declared && sameSpec(existing.spec, spec)) return 'unchanged';
      if (existing?.declared && sameSpec(withoutRateLimit(existing.spec), withoutRateLimit(spec))) {
        this.retuneNow(existing, spec);
        return 'retuned';
      }
      if (existing) await this.detachNow(existing, 'replace');
      if (id in this.runtime) {
        delete this.runtime[id];
        await this.saveAttachments();
      }
      await this.attachNow(id, spec, true, 'config');
      return existing ? 'replaced' : 'attached';
    });
  }

  /** A declared guest the reloaded configuration no longer declares: detached as a DELETE would. */
  detachDeclared(id: string): Promise<void> {
    return this.serialised(id, async () => {
      const guest = this.guests.get(id);
      if (guest?.declared) await this.detachNow(guest, 'detach');
    });
  }

  private retuneNow(guest: Guest, spec: GuestSpec): void {
    guest.retune(spec, spec.rateLimit ?? this.config.defaults.rateLimit, this.hostBucket);
  }

  /** Whether an upgrade is handing the guests over (docs/design.md "Upgrade"). */
  get isUpgrading(): boolean {
    return this.upgrading;
  }

  private assertOpenForChanges(): void {
    if (this.upgrading) throw new ConsoledError('UPGRADING');
    if (this.closing) throw new ConsoledError('SHUTTING_DOWN');
  }

  /**
   * Detaches every guest (shutdown); persisted attachments stay for the next start.
   * The chardevs are not closed: reading stops, and they stay connected until
   * `dropChardevs`, right before the process exits (docs/design.md "Restarts").
   */
  async closeAll(): Promise<void> {
    this.closing = true;
    const handed = await this.letGoAll('shutdown');
    for (const guest of handed) if (guest.chardev) this.held.push(guest.chardev);
  }

  /** Closes the chardevs `closeAll` kept connected. */
  dropChardevs(): void {
    const count = this.held.length;
    for (const handle of this.held) dropHandle(handle);
    this.held = [];
    if (count > 0) this.logger.info({ count }, 'chardevs closed');
  }

  /**
   * Lets every guest go for an upgrade (docs/design.md "Upgrade"): reading stops, each
   * log is flushed and closed, replication stops as at a shutdown, and the live
   * chardevs are returned. Attach and detach are refused with UPGRADING until
   * `takeBack` (a failed upgrade) or the exit.
   */
  handOver(): Promise<HandedGuest[]> {
    this.upgrading = true;
    return this.letGoAll('upgrade');
  }

  /** A failed upgrade: attaches the guests again on the chardevs they were handed over with. */
  async takeBack(handed: readonly HandedGuest[]): Promise<void> {
    for (const guest of handed) {
      const inherited: InheritedChardev = {
        handle: guest.chardev,
        continuation: guest.chardev ? 'continued' : 'restarted',
        rateLimit: guest.rateLimit,
      };
      try {
        await this.attachNow(
          guest.id,
          guest.spec,
          guest.declared,
          guest.declared ? 'config' : 'restart',
          inherited,
        );
      } catch (err) {
        if (guest.chardev) dropHandle(guest.chardev);
        this.logger.error(
          { guest: guest.id, err: String(err) },
          'cannot take a guest back after a failed upgrade',
        );
      }
    }
    this.upgrading = false;
  }

  private letGoAll(reason: 'shutdown' | 'upgrade'): Promise<HandedGuest[]> {
    return Promise.all(
      this.list().map((g) =>
        this.serialised(g.id, async (): Promise<HandedGuest> => {
          const chardev = await this.detachNow(g, reason);
          return { id: g.id, spec: g.spec, declared: g.declared, chardev, rateLimit: g.rateLimitState };
        }),
      ),
    );
  }

  private async attachNow(
    id: string,
    spec: GuestSpec,
    declared: boolean,
    origin: AttachOrigin,
    inherited?: InheritedChardev,
  ): Promise<Guest> {
    for (const hook of this.beforeOpen) await hook(id, spec, origin);
    const guest = await Guest.open({
      id,
      spec,
      declared,
      config: this.config,
      hostBucket: this.hostBucket,
      logger: this.logger,
      inherited,
    });
    this.guests.set(id, guest);
    this.emit('attached', guest);
    guest.start();
    this.logger.info({ guest: id, source: spec.source.type, declared }, 'guest attached');
    return guest;
  }

  /** Detaches `guest`; at a shutdown or an upgrade the chardev is let go of, not closed, and returned. */
  private async detachNow(guest: Guest, reason: DetachReason): Promise<ChardevHandle | null> {
    this.emit('detaching', guest, reason);
    for (const hook of this.beforeClose) {
      try {
        await hook(guest, reason);
      } catch (err) {
        this.logger.warn({ guest: guest.id, err: String(err) }, 'a detach step failed; detaching anyway');
      }
    }
    let chardev: ChardevHandle | null = null;
    if (reason === 'shutdown' || reason === 'upgrade')
      chardev = await guest.handOver(this.config.store.closeTimeoutMs);
    else await guest.close(this.config.store.closeTimeoutMs);
    this.guests.delete(guest.id);
    this.emit('detached', guest, reason);
    this.logger.info({ guest: guest.id, reason }, 'guest detached');
    return chardev;
  }

  private saveAttachments(): Promise<void> {
    return this.attachmentsFile.save({ version: ATTACHMENTS_VERSION, guests: { ...this.runtime } });
  }

  private serialised<T>(id: string, work: () => Promise<T>): Promise<T> {
    const previous = this.locks.get(id) ?? Promise.resolve();
    const next = previous.catch(() => undefined).then(work);
    this.locks.set(id, next);
    void next
      .finally(() => {
        if (this.locks.get(id) === next) this.locks.delete(id);
      })
      .catch(() => undefined);
    return next;
  }
}
