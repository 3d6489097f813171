/** A token bucket counted in bytes: `ratePerSec` refill, `burst` capacity. */
export class TokenBucket {
  private tokens: number;
  private lastMs: number;

  constructor(
    readonly ratePerSec: number,
    readonly burst: number,
    private readonly now: () => number = () => performance.now(),
  ) {
    this.tokens = burst;
    this.lastMs = now();
  }

  /** Tokens available now (whole bytes). */
  available(): number {
    const t = this.now();
    const elapsed = t - this.lastMs;
    if (elapsed > 0) {
      this.tokens = Math.min(this.burst, this.tokens + (elapsed * this.ratePerSec) / 1000);
      this.lastMs = t;
    }
    return Math.floor(this.tokens);
  }

  consume(n: number): void {
    this.tokens -= n;
  }

  /** Sets the tokens held now (a bucket carried over an upgrade), at most `burst`. */
  refillTo(tokens: number): void {
    this.tokens = Math.min(this.burst, tokens);
    this.lastMs = this.now();
  }
}
