import { open, readFile, rename, unlink } from 'node:fs/promises';

/**
 * A small JSON document replaced atomically (write a temporary file, rename), so a
 * SIGKILL at any instant leaves either the old or the new version, never a torn one.
 * With `durable`, each save is also fsynced (survives power loss, costs milliseconds).
 * Saves are serialised; a save requested while one runs is coalesced into the next.
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
    let text: string;
    try {
      text = await readFile(this.path, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw err;
    }
    try {
      return JSON.parse(text) as T;
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
    const handle = await open(tmp, 'w', this.mode);
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
