/**
 * Replays what the libvirt hook spooled while this daemon was down or did not answer
 * (README "libvirt", docs/design.md "libvirt"). Per guest the latest request wins (a
 * domain that started and stopped while the daemon was away is not attached at all),
 * requests are applied in the order their latest ones were made, and each guest's
 * entries are removed once applied. A request the daemon refuses (a bad spec, a
 * declared guest) is logged and moved to `failed/` beside them, never lost silently.
 */
import { mkdir, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { ConsoledError } from '../../common/errors.js';
import { type Config, guestSpecSchema } from '../config.js';
import type { Guest } from '../guest.js';
import type { GuestRegistry } from '../guests/guest-registry.js';
import { libvirtSpoolDir } from './libvirt-config.js';
import { ensureSpoolDir, listSpoolEntries, type SpooledFile } from './spool-entry.js';

/** Roles in which a host has not yet decided whether it owns the stream (docs/design.md "Roles"). */
const UNSETTLED_ROLES = new Set(['unverified', 'claiming']);
/** How long a spooled detach waits for the guest's ownership to settle, so that it can release. */
const SETTLE_TIMEOUT_MS = 5000;

export class AttachSpool {
  private readonly dir: string;
  private running: Promise<void> = Promise.resolve();

  constructor(
    config: Readonly<Config>,
    private readonly registry: GuestRegistry,
    private readonly logger: Logger,
  ) {
    this.dir = libvirtSpoolDir(config);
  }

  /** Applies every spooled request; runs after any replay still under way. */
  replay(): Promise<void> {
    this.running = this.running.then(() =>
      this.replayNow().catch((err: unknown) =>
        this.logger.error({ err: String(err), dir: this.dir }, 'libvirt spool: replay failed'),
      ),
    );
    return this.running;
  }

  private async replayNow(): Promise<void> {
    await ensureSpoolDir(this.dir, null);
    const files = await listSpoolEntries(this.dir);
    if (files.length === 0) return;
    const byGuest = new Map<string, SpooledFile[]>();
    for (const file of files) {
      if (!file.entry) {
        await this.putAside(file, 'unreadable or not a spool entry');
        continue;
      }
      const list = byGuest.get(file.entry.guest) ?? [];
      list.push(file);
      byGuest.set(file.entry.guest, list);
    }
    // Map order is first insertion; apply in the order of each guest's latest request.
    const latest = [...byGuest.values()].sort((a, b) => (a.at(-1)!.name < b.at(-1)!.name ? -1 : 1));
    let applied = 0;
    for (const list of latest) {
      const file = list.at(-1)!;
      const entry = file.entry!;
      try {
        await this.apply(entry.guest, entry.event, entry.spec);
        applied++;
      } catch (err) {
        if (err instanceof ConsoledError && err.code === 'SHUTTING_DOWN') return;
        await this.putAside(file, err instanceof Error ? err.message : String(err));
        list.pop();
      }
      await Promise.all(list.map((f) => rm(f.path, { force: true })));
    }
    this.logger.info({ applied, files: files.length, dir: this.dir }, 'libvirt spool replayed');
  }

  private async apply(id: string, event: 'attach' | 'detach', rawSpec: unknown): Promise<void> {
    if (event === 'attach') {
      const parsed = guestSpecSchema.safeParse(rawSpec);
      if (!parsed.success)
        throw new ConsoledError('BAD_SOURCE', `spooled spec of ${id}: ${parsed.error.message}`);
      const { created } = await this.registry.attach(id, parsed.data);
      this.logger.info({ guest: id, created }, 'libvirt spool: attached');
      return;
    }
    const guest = this.registry.get(id);
    if (!guest) return;
    // Just after a start the host has not confirmed it owns the stream, and a detach
    // then would not release it (docs/design.md "Giving ownership up").
    await settled(guest, SETTLE_TIMEOUT_MS);
    await this.registry.detach(id);
    this.logger.info({ guest: id }, 'libvirt spool: detached');
  }

  private async putAside(file: SpooledFile, why: string): Promise<void> {
    const failed = join(this.dir, 'failed');
    await mkdir(failed, { recursive: true, mode: 0o700 });
    await rename(file.path, join(failed, file.name));
    this.logger.error({ file: file.name, why, kept: failed }, 'libvirt spool: request not applied');
  }
}

/** Waits (bounded) until the guest's replication role is decided; at once without replication. */
async function settled(guest: Guest, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const replication = (await guest.checkedStatus())['replication'] as { role?: string } | undefined;
    if (!replication?.role || !UNSETTLED_ROLES.has(replication.role) || Date.now() >= deadline) return;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}
