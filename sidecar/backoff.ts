/** Capped exponential backoff with full jitter (the shape of ioredis' retryStrategy). */
export interface BackoffOptions {
  readonly initialDelayMs: number;
  readonly maxDelayMs: number;
}

export class Backoff {
  private attempt = 0;

  constructor(private readonly options: BackoffOptions) {}

  /** The delay before the next attempt: a random point in [base/2, base], base doubling to the cap. */
  next(): number {
    const base = Math.min(
      this.options.maxDelayMs,
      this.options.initialDelayMs * 2 ** Math.min(this.attempt, 30),
    );
    this.attempt++;
    return Math.round(base / 2 + Math.random() * (base / 2));
  }

  reset(): void {
    this.attempt = 0;
  }

  get attempts(): number {
    return this.attempt;
  }
}
