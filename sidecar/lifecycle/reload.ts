/**
 * A configuration reload (SIGHUP, `POST /v1/reload`, `consolectl reload`): the file is
 * read again and compared with the configuration in force (docs/design.md "Service
 * lifecycle"). Only the fields of {@link RELOADABLE_FIELDS} may differ; anything else is
 * refused naming the fields, and an invalid file is refused naming the field, with the
 * configuration in force kept. Guests whose declaration did not change are not touched.
 */
import { ConsoledError } from '../../common/errors.js';
import type { Config, GuestSpec } from '../config.js';
import type { GuestRegistry } from '../guests/guest-registry.js';

/**
 * What a reload can change (README "Reload"). A path names the field and everything
 * under it. `guests`: declared guests added, removed or changed; `hostRateLimit` and
 * `defaults.rateLimit`: applied to the running guests; `limits.maxGuests`: checked by
 * the next attach; `listen.tls.cert` and `.key`: the TLS listener's certificate (read
 * again at every reload, changed paths or not).
 */
export const RELOADABLE_FIELDS = [
  'guests',
  'hostRateLimit',
  'defaults.rateLimit',
  'limits.maxGuests',
  'listen.tls.cert',
  'listen.tls.key',
] as const;

function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/**
 * The dotted paths where `a` and `b` differ: objects are compared key by key, anything
 * else (arrays, scalars, an object against nothing) as a whole.
 */
export function changedFields(a: unknown, b: unknown, prefix = ''): string[] {
  if (isPlainObject(a) && isPlainObject(b)) {
    const keys = [...new Set([...Object.keys(a), ...Object.keys(b)])].sort();
    return keys.flatMap((k) => changedFields(a[k], b[k], prefix ? `${prefix}.${k}` : k));
  }
  return JSON.stringify(a) === JSON.stringify(b) ? [] : [prefix || '(top level)'];
}

function reloadable(field: string): boolean {
  return RELOADABLE_FIELDS.some((r) => field === r || field.startsWith(`${r}.`));
}

/** What a reload from `current` to `next` does, before anything is done. */
export interface ReloadPlan {
  /** Changed fields a reload cannot change: the reload is refused when any. */
  readonly refused: string[];
  /** Changed fields the reload applies (guests included as `guests`). */
  readonly applied: string[];
  /** Declared guests new in `next`. */
  readonly added: string[];
  /** Declared guests `next` no longer declares. */
  readonly removed: string[];
  /** Declared guests whose spec changed. */
  readonly changed: string[];
}

function specsById(config: Readonly<Config>): Map<string, GuestSpec> {
  return new Map(config.guests.map(({ id, ...spec }) => [id, spec]));
}

/** Compares two valid configurations (a pure function; the reload's unit tests drive it). */
export function planReload(current: Readonly<Config>, next: Readonly<Config>): ReloadPlan {
  const fields = changedFields(current, next);
  const before = specsById(current);
  const after = specsById(next);
  return {
    refused: fields.filter((f) => !reloadable(f)),
    applied: fields.filter(reloadable),
    added: [...after.keys()].filter((id) => !before.has(id)),
    removed: [...before.keys()].filter((id) => !after.has(id)),
    changed: [...after.keys()].filter(
      (id) => before.has(id) && JSON.stringify(before.get(id)) !== JSON.stringify(after.get(id)),
    ),
  };
}

/** What `POST /v1/reload` answers (docs/openapi.yaml ReloadOutcome). */
export interface ReloadOutcome {
  result: 'reloaded' | 'unchanged';
  /** The changed fields that were applied. */
  fields: string[];
  attached: string[];
  detached: string[];
  /** Declared guests whose spec changed in more than `rateLimit`: detached and attached again. */
  replaced: string[];
  /** Declared guests whose `rateLimit` alone changed: applied in place. */
  retuned: string[];
  /** Guests the reload could not attach or detach; the rest of the reload stands. */
  failed: Array<{ id: string; code: string; message: string }>;
  /** With `listen.tls`: the certificate the TLS listener serves from now on. */
  tls?: { fingerprint256: string; subject: string; validTo: string };
}

/** What a reload acts on: the daemon's configuration in force and its registry. */
export interface ReloadTarget {
  readonly config: Readonly<Config>;
  readonly registry: GuestRegistry;
  adoptConfig(next: Readonly<Config>): void;
  /** Reads the TLS certificate and key of `next` again (throws BAD_CONFIG when they do not load). */
  reloadTls?(next: Readonly<Config>): Promise<ReloadOutcome['tls'] | null>;
}

/** Runs reloads one at a time; a reload asked for during another waits for it. */
export class Reloader {
  private queue: Promise<unknown> = Promise.resolve();

  constructor(
    private readonly target: ReloadTarget,
    /** Reads and validates the file (throws BAD_CONFIG naming the field); null: started without one. */
    private readonly load: (() => Promise<Readonly<Config>>) | null,
  ) {}

  reload(): Promise<ReloadOutcome> {
    const run = this.queue.catch(() => undefined).then(() => this.reloadNow());
    this.queue = run;
    return run;
  }

  private async reloadNow(): Promise<ReloadOutcome> {
    if (!this.load)
      throw new ConsoledError('RELOAD_REFUSED', 'the daemon was started without a configuration file');
    const next = await this.load();
    const { target } = this;
    const plan = planReload(target.config, next);
    if (plan.refused.length > 0) {
      throw new ConsoledError(
        'RELOAD_REFUSED',
        `a reload cannot change ${plan.refused.join(', ')}; restart the daemon to change ${plan.refused.length === 1 ? 'it' : 'them'}`,
        { fields: plan.refused },
      );
    }
    // The certificate first: one that does not load refuses the whole reload.
    const tls = (await target.reloadTls?.(next)) ?? null;
    const outcome: ReloadOutcome = {
      result: plan.applied.length > 0 ? 'reloaded' : 'unchanged',
      fields: plan.applied,
      attached: [],
      detached: [],
      replaced: [],
      retuned: [],
      failed: [],
      ...(tls ? { tls } : {}),
    };
    if (plan.applied.length === 0) return outcome;
    const { registry } = target;
    const attempt = async (id: string, work: () => Promise<void>) => {
      try {
        await work();
      } catch (err) {
        const e = err instanceof ConsoledError ? err : null;
        outcome.failed.push({
          id,
          code: e?.code ?? 'INTERNAL',
          message: (err as Error).message ?? String(err),
        });
      }
    };
    registry.reconfigure(next);
    target.adoptConfig(next);
    await Promise.all(
      plan.removed.map((id) =>
        attempt(id, async () => {
          await registry.detachDeclared(id);
          outcome.detached.push(id);
        }),
      ),
    );
    const specs = specsById(next);
    await Promise.all(
      [...plan.added, ...plan.changed].map((id) =>
        attempt(id, async () => {
          const done = await registry.attachDeclared(id, specs.get(id) as GuestSpec);
          if (done === 'attached') outcome.attached.push(id);
          else if (done === 'replaced') outcome.replaced.push(id);
          else if (done === 'retuned') outcome.retuned.push(id);
        }),
      ),
    );
    for (const list of [outcome.attached, outcome.detached, outcome.replaced, outcome.retuned]) list.sort();
    return outcome;
  }
}
