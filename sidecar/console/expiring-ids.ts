import { ConsoledError } from '../../common/errors.js';

export interface ExpiringIdsStats {
  size: number;
  maxEntries: number;
  /** Ids dropped before their expiry because the set was full. */
  evictions: number;
  /** Ids forgotten because their expiry passed. */
  expired: number;
}

interface HeapItem {
  readonly exp: number;
  readonly id: string;
}

/**
 * A bounded set of ids, each held until its expiry (ms since the epoch): the spent
 * single-use token ids (viewer-token.ts UsedTokenRegistry) and the revoked ones
 * (token-revocations.ts). When full, the id that expires soonest is evicted and
 * counted. Expiry and eviction cost O(log n) through a min-heap on expiry; an id
 * whose expiry was moved later leaves a stale heap item behind, skipped when it
 * comes up and dropped when the heap is rebuilt.
 */
export class ExpiringIds {
  readonly maxEntries: number;
  #expiry = new Map<string, number>();
  #heap: HeapItem[] = [];
  #evictions = 0;
  #expired = 0;

  /** Throws BAD_CONFIG unless `maxEntries` is a positive integer. */
  constructor(maxEntries: number) {
    if (!Number.isSafeInteger(maxEntries) || maxEntries < 1) {
      throw new ConsoledError('BAD_CONFIG', 'maxEntries must be a positive integer');
    }
    this.maxEntries = maxEntries;
  }

  /** The expiry of `id` when it is held and has not expired at `nowMs`. */
  get(id: string, nowMs: number = Date.now()): number | undefined {
    const exp = this.#expiry.get(id);
    return exp !== undefined && exp > nowMs ? exp : undefined;
  }

  has(id: string, nowMs: number = Date.now()): boolean {
    return this.get(id, nowMs) !== undefined;
  }

  /**
   * Holds `id` until `expiresAtMs`, or later if it is held until later already.
   * Returns true when the id was added or its expiry moved; false when the set
   * already held it as long, or `expiresAtMs` is not after `nowMs` (nothing to hold).
   */
  set(id: string, expiresAtMs: number, nowMs: number = Date.now()): boolean {
    this.forgetExpired(nowMs);
    const held = this.#expiry.get(id);
    if (expiresAtMs <= nowMs || (held !== undefined && held >= expiresAtMs)) return false;
    if (held === undefined) {
      while (this.#expiry.size >= this.maxEntries) {
        const oldest = this.#pop();
        if (oldest !== undefined && this.#current(oldest) && this.#expiry.delete(oldest.id))
          this.#evictions++;
      }
    }
    this.#expiry.set(id, expiresAtMs);
    this.#push({ exp: expiresAtMs, id });
    if (this.#heap.length > 2 * this.#expiry.size + 64) this.#rebuild();
    return true;
  }

  /** Forgets the ids whose expiry is not after `nowMs`. */
  forgetExpired(nowMs: number = Date.now()): void {
    for (let top = this.#heap[0]; top !== undefined && top.exp <= nowMs; top = this.#heap[0]) {
      this.#pop();
      if (this.#current(top) && this.#expiry.delete(top.id)) this.#expired++;
    }
  }

  get size(): number {
    return this.#expiry.size;
  }

  /** The ids held and not yet expired, with their expiry. */
  *entries(nowMs: number = Date.now()): IterableIterator<[string, number]> {
    for (const [id, exp] of this.#expiry) if (exp > nowMs) yield [id, exp];
  }

  get evictions(): number {
    return this.#evictions;
  }

  stats(): ExpiringIdsStats {
    return {
      size: this.size,
      maxEntries: this.maxEntries,
      evictions: this.#evictions,
      expired: this.#expired,
    };
  }

  /** Whether a heap item is the id's expiry now (not left behind by a later `set`). */
  #current(item: HeapItem): boolean {
    return this.#expiry.get(item.id) === item.exp;
  }

  #rebuild(): void {
    this.#heap = [];
    for (const [id, exp] of this.#expiry) this.#push({ exp, id });
  }

  #push(item: HeapItem): void {
    const heap = this.#heap;
    heap.push(item);
    let i = heap.length - 1;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      const p = heap[parent]!;
      if (p.exp <= item.exp) break;
      heap[i] = p;
      i = parent;
    }
    heap[i] = item;
  }

  #pop(): HeapItem | undefined {
    const heap = this.#heap;
    const top = heap[0];
    const last = heap.pop();
    if (top === undefined || last === undefined || heap.length === 0) return top;
    let i = 0;
    for (;;) {
      const left = 2 * i + 1;
      if (left >= heap.length) break;
      const right = left + 1;
      const child = right < heap.length && heap[right]!.exp < heap[left]!.exp ? right : left;
      if (heap[child]!.exp >= last.exp) break;
      heap[i] = heap[child]!;
      i = child;
    }
    heap[i] = last;
    return top;
  }
}
