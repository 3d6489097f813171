/**
 * When `READY=1` may go out (docs/design.md "Service lifecycle"): every declared guest's
 * source has been tried, meaning its first attempt has ended one way or the other. A
 * source in `idle` (not started) or `connecting` (dialling, opening, spawning) has not
 * ended it; `connected`, `listening`, `backoff` (the attempt failed; a retry is
 * scheduled) and `stopped` have.
 */
import type { Guest } from '../guest.js';

/** How long READY waits for first attempts that hang (a dial with no answer). */
export const FIRST_ATTEMPT_WAIT_MS = 5000;

function tried(guest: Guest): boolean {
  const state = guest.source.state;
  return state !== 'idle' && state !== 'connecting';
}

/**
 * Resolves once every guest of `guests` has been tried, or after `timeoutMs`; returns
 * the ids still untried then (empty when all were).
 */
export function firstAttempts(
  guests: readonly Guest[],
  timeoutMs = FIRST_ATTEMPT_WAIT_MS,
): Promise<string[]> {
  const pending = new Set(guests.filter((g) => !tried(g)));
  if (pending.size === 0) return Promise.resolve([]);
  return new Promise((resolve) => {
    const listeners = new Map<Guest, () => void>();
    const finish = () => {
      clearTimeout(timer);
      for (const [guest, listener] of listeners) guest.source.off('state', listener);
      resolve([...pending].map((g) => g.id));
    };
    const timer = setTimeout(finish, timeoutMs);
    for (const guest of pending) {
      const listener = () => {
        if (!tried(guest)) return;
        pending.delete(guest);
        if (pending.size === 0) finish();
      };
      listeners.set(guest, listener);
      guest.source.on('state', listener);
    }
  });
}
