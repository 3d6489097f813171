/**
 * The retention of detached guests' directories (docs/design.md "Retention"): every
 * `store.retention.sweepIntervalMs`, each directory under `<stateDir>/guests/` whose
 * guest is neither attached nor declared, and in which nothing was written for
 * `store.retention.detachedAfterMs`, is removed (store/guest-dir-removal.ts), under
 * the guest's attach lock, so an attach waits for it or runs first and is never cut
 * short. What a crash left renamed aside for removal goes too.
 */
import { lstat, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { ConsoledError } from '../../common/errors.js';
import { isGuestId } from '../../common/guest-id.js';
import { REMOVAL_PREFIX, removeAside, removeGuestDir } from '../../store/guest-dir-removal.js';
import type { Config } from '../config.js';
import type { GuestRegistry } from './guest-registry.js';

/** The newest modification time under `dir` (the directory's own included), never following a link. */
async function lastWriteMs(dir: string): Promise<number> {
  let newest = (await lstat(dir)).mtimeMs;
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    const inner = entry.isDirectory() ? await lastWriteMs(path) : (await lstat(path)).mtimeMs;
    newest = Math.max(newest, inner);
  }
  return newest;
}

export class DetachedDirExpiry {
  /** Directories removed since start. */
  removed = 0;
  private readonly timer: NodeJS.Timeout | null;
  private running = false;
  private readonly guestsDir: string;
  private readonly declared: ReadonlySet<string>;

  constructor(
    private readonly config: Readonly<Pick<Config, 'stateDir' | 'store' | 'guests'>>,
    private readonly registry: GuestRegistry,
    private readonly logger: Logger,
  ) {
    this.guestsDir = join(config.stateDir, 'guests');
    this.declared = new Set(config.guests.map((g) => g.id));
    const { detachedAfterMs, sweepIntervalMs } = config.store.retention;
    this.timer = detachedAfterMs > 0 ? setInterval(() => void this.sweep(), sweepIntervalMs) : null;
    this.timer?.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
  }

  /** One look over the guests' directories. */
  async sweep(): Promise<void> {
    if (this.running) return;
    this.running = true;
    try {
      for (const entry of await readdir(this.guestsDir, { withFileTypes: true })) {
        const dir = join(this.guestsDir, entry.name);
        if (entry.name.startsWith(REMOVAL_PREFIX) && entry.isDirectory()) {
          await removeAside(dir);
          continue;
        }
        if (!entry.isDirectory() || !isGuestId(entry.name)) continue;
        await this.consider(entry.name, dir).catch((err: unknown) =>
          this.logger.warn({ guest: entry.name, err: String(err) }, 'detached guest directory not removed'),
        );
      }
    } catch (err) {
      this.logger.warn({ err: String(err) }, 'detached guest directories not looked over');
    } finally {
      this.running = false;
    }
  }

  private async consider(id: string, dir: string): Promise<void> {
    if (this.declared.has(id) || this.registry.get(id)) return;
    const { detachedAfterMs } = this.config.store.retention;
    if (Date.now() - (await lastWriteMs(dir)) < detachedAfterMs) return;
    const removed = await this.registry
      .whileDetached(id, async () => {
        // Looked at again under the lock: an attach may have run meanwhile.
        const idleMs = Date.now() - (await lastWriteMs(dir));
        return idleMs >= detachedAfterMs ? removeGuestDir(dir) : null;
      })
      .catch((err: unknown) => {
        // Attached meanwhile, or shutting down: nothing to do.
        if (err instanceof ConsoledError && (err.code === 'GUEST_ATTACHED' || err.code === 'SHUTTING_DOWN'))
          return null;
        throw err;
      });
    if (removed?.removed) {
      this.removed++;
      this.logger.info(
        { guest: id, files: removed.files, bytes: removed.bytes, detachedAfterMs },
        'detached guest directory expired',
      );
    }
  }
}
