/**
 * Capped exponential backoff with equal jitter: each delay is half fixed and half
 * random, so it is never near zero (unlike full jitter) while peers that failed
 * together still spread out. The shape of ioredis' retryStrategy. Shared by the
 * sources, the Redis connection (sidecar/) and the replicator (store/).
 */
import { z } from 'zod';

/** A random point in `[ms/2, ms]`, rounded to whole milliseconds. */
export function jitter(ms: number): number {
  return Math.round(ms / 2 + Math.random() * (ms / 2));
}

export interface BackoffOptions {
  readonly initialDelayMs: number;
  readonly maxDelayMs: number;
}

/**
 * The config schema of a backoff (`defaults.reconnect`, `redis.reconnect`), every field
 * defaulted from `defaults`. `initialDelayMs` above `maxDelayMs` is accepted (every
 * delay is then the cap); `backoffWarning` says so, for the daemon to log.
 */
export function backoffConfigSchema(defaults: BackoffOptions) {
  return z
    .object({
      initialDelayMs: z.number().int().min(1).default(defaults.initialDelayMs),
      maxDelayMs: z.number().int().min(1).default(defaults.maxDelayMs),
    })
    .strict();
}

/** A warning when `initialDelayMs` exceeds `maxDelayMs` (`field` names the section), or null. */
export function backoffWarning(field: string, options: BackoffOptions): string | null {
  if (options.initialDelayMs <= options.maxDelayMs) return null;
  return `${field}.initialDelayMs (${options.initialDelayMs}) is above ${field}.maxDelayMs (${options.maxDelayMs}): every delay is the cap`;
}

export class Backoff {
  private attempt = 0;

  constructor(private readonly options: BackoffOptions) {}

  /** The delay before the next attempt: `jitter(base)`, base doubling from `initialDelayMs` to the cap. */
  next(): number {
    const base = Math.min(
      this.options.maxDelayMs,
      this.options.initialDelayMs * 2 ** Math.min(this.attempt, 30),
    );
    this.attempt++;
    return jitter(base);
  }

  reset(): void {
    this.attempt = 0;
  }

  get attempts(): number {
    return this.attempt;
  }
}
