import { type MetricFamily, perGuestFamily } from '../http/metrics.js';
import type { GuestRegistry } from './guest-registry.js';

/** The capture and local-store metrics of every attached guest. */
export function guestMetrics(registry: GuestRegistry): () => MetricFamily[] {
  return () => {
    const guests = registry.list();
    const per = perGuestFamily(guests);
    return [
      {
        name: 'consoled_guests',
        help: 'Guests attached on this host.',
        type: 'gauge',
        samples: [{ value: guests.length }],
      },
      per('consoled_guest_connected', '1 when the guest chardev is connected.', 'gauge', (g) =>
        g.source.state === 'connected' ? 1 : 0,
      ),
      per(
        'consoled_guest_connects_total',
        'Connections made to the guest chardev.',
        'counter',
        (g) => g.source.counters.connects,
      ),
      per(
        'consoled_guest_reconnect_storm',
        '1 while the guest chardev keeps closing before it is established (reconnects back off, no boots).',
        'gauge',
        (g) => (g.source.storm ? 1 : 0),
      ),
      per(
        'consoled_guest_quick_closes_total',
        'Guest chardev connections that closed before they were established.',
        'counter',
        (g) => g.source.counters.quickCloses,
      ),
      per(
        'consoled_guest_refused_connections_total',
        'Connections to a listening chardev refused because the guest connection was up.',
        'counter',
        (g) => g.source.counters.refusedConnections,
      ),
      per(
        'consoled_guest_coalesced_windows_total',
        'Windows in which reading the guest paused to gather small reads of bulk output into one (defaults.readCoalescing).',
        'counter',
        (g) => g.source.counters.coalescedWindows,
      ),
      per(
        'consoled_guest_bytes_received_total',
        'Bytes read from the guest chardev.',
        'counter',
        (g) => g.source.counters.bytesIn,
      ),
      per(
        'consoled_guest_bytes_captured_total',
        'Guest bytes written to the log.',
        'counter',
        (g) => g.capture.counters.capturedBytes,
      ),
      per(
        'consoled_guest_bytes_suppressed_total',
        'Guest bytes dropped by the rate limit.',
        'counter',
        (g) => g.status().drops.suppressedBytes,
      ),
      per(
        'consoled_guest_bytes_lost_total',
        'Guest bytes dropped because the disk queue was full.',
        'counter',
        (g) => g.capture.counters.lostBytes,
      ),
      per(
        'consoled_guest_keystroke_bytes_total',
        'Bytes written toward the guest.',
        'counter',
        (g) => g.source.counters.bytesOut,
      ),
      per(
        'consoled_guest_log_offset',
        'Offset of the next byte of the guest log.',
        'gauge',
        (g) => g.log.end,
      ),
      per('consoled_guest_log_queue_bytes', 'Bytes waiting for the disk.', 'gauge', (g) => g.log.queuedBytes),
      per(
        'consoled_guest_disk_errors_total',
        'Failed writes to the local log.',
        'counter',
        (g) => g.log.counters.diskErrors,
      ),
      per(
        'consoled_guest_rotations_total',
        'Log file rotations.',
        'counter',
        (g) => g.log.counters.rotations,
      ),
      per('consoled_guest_boot', 'Current boot number.', 'gauge', (g) => g.log.currentBoot),
    ];
  };
}
