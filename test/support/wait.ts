/**
 * Polling waits for black-box tests. `waitFor` and its kin wait for a condition, never
 * for a duration: a timeout only turns a hang into a failure that says what it waited for.
 *
 * `sleep` is the exception, for a check that nothing happened where there is no
 * positive signal to wait for. Its window must be long enough to catch a regression
 * (at least 300 ms); where a signal exists, wait for the signal instead.
 */
import { setTimeout as sleep } from 'node:timers/promises';

export { sleep };

export interface WaitOptions {
  /** Give up after this long. @default 15000 */
  timeoutMs?: number;
  /** Poll this often. @default 20 */
  intervalMs?: number;
}

/**
 * Calls `probe` until it returns something other than `undefined`/`false` and
 * returns that value. A probe that throws counts as "not yet"; the last error
 * is reported if the wait times out.
 */
export async function waitFor<T>(
  what: string,
  probe: () => T | undefined | false | Promise<T | undefined | false>,
  options: WaitOptions = {},
): Promise<T> {
  const timeoutMs = options.timeoutMs ?? 15_000;
  const intervalMs = options.intervalMs ?? 20;
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown = null;
  let lastValue: unknown;
  for (;;) {
    try {
      const value = await probe();
      if (value !== undefined && value !== false) return value;
      lastValue = value;
      lastError = null;
    } catch (err) {
      lastError = err;
    }
    if (Date.now() >= deadline) {
      const why = lastError
        ? `; last error: ${lastError instanceof Error ? lastError.message : String(lastError)}`
        : `; last value: ${String(lastValue)}`;
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${why}`);
    }
    await sleep(intervalMs);
  }
}
