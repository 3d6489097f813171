import { ConsoledError } from './errors.js';

/** docs/design.md "Words": a guest id names files and Redis keys, so it is checked before any use. */
export const GUEST_ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;

export function isGuestId(value: unknown): value is string {
  return typeof value === 'string' && GUEST_ID_PATTERN.test(value);
}

export function assertGuestId(value: unknown): string {
  if (!isGuestId(value)) {
    const shown = typeof value === 'string' ? JSON.stringify(value.slice(0, 140)) : typeof value;
    throw new ConsoledError('BAD_GUEST_ID', `invalid guest id ${shown}`);
  }
  return value;
}
