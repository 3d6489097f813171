/**
 * The bytes of appends in flight on a host, across its replicators (docs/design.md
 * "Replication"). One guest's backlog goes faster with many appends in flight, since
 * the next leave while Redis works on the last; a Redis outage, though, ends with
 * every guest in backlog at once. So each guest may have up to `maxInFlightSegments`
 * appends in flight, and all guests together up to `maxInFlightBytes`. A guest with
 * none in flight may always send one: none is ever kept waiting on the others.
 */
export class InFlightBudget {
  private usedBytes = 0;

  constructor(readonly maxBytes: number) {}

  /** Bytes in flight now, for status and tests. */
  get used(): number {
    return this.usedBytes;
  }

  /** Whether a guest with `inFlight` appends under way may send one of `bytes` more. */
  allows(inFlight: number, bytes: number): boolean {
    return inFlight === 0 || this.usedBytes + bytes <= this.maxBytes;
  }

  take(bytes: number): void {
    this.usedBytes += bytes;
  }

  give(bytes: number): void {
    this.usedBytes = Math.max(0, this.usedBytes - bytes);
  }
}
