/**
 * The one line the service manager shows for the daemon (`STATUS=`, docs/design.md
 * "Service lifecycle"): guests attached and how their sources stand, sent when a
 * guest comes, goes or changes state, at most once per {@link STATUS_MIN_INTERVAL_MS}.
 */
import type { Guest } from '../guest.js';
import type { GuestRegistry } from '../guests/guest-registry.js';

/** A host with hundreds of guests reconnecting sends one status a second, not one per change. */
export const STATUS_MIN_INTERVAL_MS = 1000;

/** "N guests attached: C connected, L listening, D down". */
export function statusLine(guests: Iterable<Guest>): string {
  let attached = 0;
  let connected = 0;
  let listening = 0;
  for (const guest of guests) {
    attached++;
    if (guest.source.state === 'connected') connected++;
    else if (guest.source.state === 'listening') listening++;
  }
  const down = attached - connected - listening;
  return `${attached} guest${attached === 1 ? '' : 's'} attached: ${connected} connected, ${listening} listening, ${down} down`;
}

/** Sends `statusLine` through `send` on changes, rate limited; returns its stop. */
export function reportStatus(registry: GuestRegistry, send: (line: string) => void): () => void {
  let lastSentMs = 0;
  let timer: NodeJS.Timeout | null = null;
  let last = '';
  const flush = () => {
    timer = null;
    const line = statusLine(registry.list());
    if (line === last) return;
    last = line;
    lastSentMs = Date.now();
    send(line);
  };
  const changed = () => {
    if (timer) return;
    timer = setTimeout(flush, Math.max(0, lastSentMs + STATUS_MIN_INTERVAL_MS - Date.now()));
    timer.unref();
  };
  const watched = new Map<Guest, () => void>();
  const watch = (guest: Guest) => {
    guest.source.on('state', changed);
    watched.set(guest, () => guest.source.off('state', changed));
    changed();
  };
  const unwatch = (guest: Guest) => {
    watched.get(guest)?.();
    watched.delete(guest);
    changed();
  };
  for (const guest of registry.list()) watch(guest);
  registry.on('attached', watch);
  registry.on('detached', unwatch);
  flush();
  return () => {
    if (timer) clearTimeout(timer);
    registry.off('attached', watch);
    registry.off('detached', unwatch);
    for (const off of watched.values()) off();
    watched.clear();
  };
}
