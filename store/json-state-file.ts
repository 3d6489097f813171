import { rename, unlink } from 'node:fs/promises';
import { createExclusive, readFileNoFollow, refusingLinks } from './safe-files.js';
import { replaceFile } from './write-thread.js';

/**
 * A small JSON document replaced atomically (write a temporary file, rename), so a
 * SIGKILL at any instant leaves either the old or the new version, never a torn one.
 * With `durable`, each save is also fsynced (survives power loss, costs milliseconds);
 * without, a save is one trip to the write thread (store/write-thread.ts `replaceFile`)
 * instead of five through libuv's pool, which is what a log's rotation anchor needs
 * at hundreds of rotations a second.
 * Saves are serialised; a save requested while one runs is coalesced into the next.
 * Neither the file nor its temporary file is ever opened through a symbolic link
 * (store/safe-files.ts): a link in their place is refused on load and replaced on save.
 */
export class JsonStateFile<T> {
  private running: Promise<void> | null = null;
  private queued: T | null = null;
  private queuedWaiters: Array<{ resolve: () => void; reject: (e: unknown) => void }> = [];

  constructor(
    readonly path: string,
    private readonly mode = 0o640,
    private readonly durable = true,
  ) {}

  async load(): Promise<T | null> {
    const bytes = await readFileNoFollow(this.path);
    if (bytes === null) return null;
    try {
      return JSON.parse(bytes.toString('utf8')) as T;
    } catch {
      // A file that does not parse was not written by us (our writes are atomic):
      // treat it as absent rather than refusing to start.
      return null;
    }
  }

  /** Resolves once `value` (or a later value) is durably in place. */
  save(value: T): Promise<void> {
    this.queued = value;
    const done = new Promise<void>((resolve, reject) => this.queuedWaiters.push({ resolve, reject }));
    if (!this.running) this.running = this.drain();
    return done;
  }

  private async drain(): Promise<void> {
    while (this.queued !== null) {
      const value = this.queued;
      const waiters = this.queuedWaiters;
      this.queued = null;
      this.queuedWaiters = [];
      try {
        await this.writeNow(value);
        for (const w of waiters) w.resolve();
      } catch (err) {
        for (const w of waiters) w.reject(err);
      }
    }
    this.running = null;
  }

  private async writeNow(value: T): Promise<void> {
    const tmp = `${this.path}.tmp`;
    if (!this.durable) {
      const bytes = Buffer.from(JSON.stringify(value));
      await new Promise<void>((resolve, reject) =>
        replaceFile(this.path, tmp, bytes, this.mode, (err) => (err ? reject(err) : resolve())),
      ).catch(refusingLinks(tmp));
      return;
    }
    const handle = await createExclusive(tmp, this.mode);
    try {
      await handle.writeFile(JSON.stringify(value));
      if (this.durable) await handle.sync();
    } finally {
      await handle.close();
    }
    try {
      await rename(tmp, this.path);
    } catch (err) {
      await unlink(tmp).catch(() => undefined);
      throw err;
    }
  }
}
