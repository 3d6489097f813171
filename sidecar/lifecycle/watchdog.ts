/**
 * The service manager's watchdog (docs/design.md "Service lifecycle"): `WATCHDOG=1` at
 * half the interval the manager asked for (`WATCHDOG_USEC`), from a timer on the event
 * loop itself. A loop blocked for longer than the interval sends nothing, and the
 * manager restarts the daemon; a ping from a thread of its own would hide that.
 */
import type { ServiceNotifier } from './sd-notify.js';

/** Starts the pings (the first one now); returns their stop. */
export function startWatchdog(notifier: ServiceNotifier, usec: number): () => void {
  const intervalMs = Math.max(1, Math.floor(usec / 2000));
  notifier.watchdog();
  const timer = setInterval(() => notifier.watchdog(), intervalMs);
  // The pings alone must not keep a daemon that finished its shutdown alive.
  timer.unref();
  return () => clearInterval(timer);
}
