/** A token bucket counted in bytes: `ratePerSec` refill, `burst` capacity. */
export class TokenBucket {
  private tokens: number;
  private lastMs: number;

  constructor(
    private rate: number,
    private capacity: number,
    private readonly now: () => number = () => performance.now(),
  ) {
    this.tokens = capacity;
    this.lastMs = now();
  }

  get ratePerSec(): number {
    return this.rate;
  }

  get burst(): number {
    return this.capacity;
  }

  /**
   * New rate and burst from now on (a reload): what accrued at the old rate is kept,
   * up to the new burst, so a change neither grants nor takes a burst.
   */
  reconfigure(ratePerSec: number, burst: number): void {
    this.available();
    this.rate = ratePerSec;
    this.capacity = burst;
    this.tokens = Math.min(this.tokens, burst);
  }

  /** Tokens available now (whole bytes). */
  available(): number {
    const t = this.now();
    const elapsed = t - this.lastMs;
    if (elapsed > 0) {
      this.tokens = Math.min(this.capacity, this.tokens + (elapsed * this.rate) / 1000);
      this.lastMs = t;
    }
    return Math.floor(this.tokens);
  }

  consume(n: number): void {
    this.tokens -= n;
  }
}
