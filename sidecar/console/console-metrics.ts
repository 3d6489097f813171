import type { MetricFamily, MetricsCollector } from '../http/metrics.js';
import type { ConsoleServer } from './console-server.js';
import type { ConsoleHub, HubCounters } from './hub.js';

const PER_GUEST: ReadonlyArray<{ key: keyof HubCounters; name: string; help: string }> = [
  {
    key: 'framesSent',
    name: 'consoled_console_frames_sent_total',
    help: 'Binary frames of output sent to console viewers.',
  },
  {
    key: 'bytesSent',
    name: 'consoled_console_bytes_sent_total',
    help: 'Output bytes sent to console viewers.',
  },
  {
    key: 'skippedBytes',
    name: 'consoled_console_skipped_bytes_total',
    help: 'Output bytes slow console viewers skipped.',
  },
  {
    key: 'skipEpisodes',
    name: 'consoled_console_skips_total',
    help: 'Times a slow console viewer skipped ahead.',
  },
  {
    key: 'slowDisconnects',
    name: 'consoled_console_slow_disconnects_total',
    help: 'Console viewers closed because they stayed behind (4429 VIEWER_TOO_SLOW).',
  },
  {
    key: 'keystrokeBytes',
    name: 'consoled_console_keystroke_bytes_total',
    help: 'Keystroke bytes the writer sent to the guest.',
  },
  {
    key: 'writerGuestPauses',
    name: 'consoled_console_writer_guest_pauses_total',
    help: 'Times the writer was not read because the guest side had its bound of keystrokes waiting.',
  },
  {
    key: 'writerRatePauses',
    name: 'consoled_console_writer_rate_pauses_total',
    help: 'Times the writer was not read because it went over the keystroke rate limit.',
  },
  {
    key: 'droppedKeystrokeBytes',
    name: 'consoled_console_dropped_keystroke_bytes_total',
    help: 'Keystroke bytes from viewers that do not hold the writer lock (dropped).',
  },
];

/** The console's metrics, read from the hubs and the server when scraped. */
export function consoleMetrics(
  hubs: () => Iterable<ConsoleHub>,
  server: () => ConsoleServer | null,
): MetricsCollector {
  return () => {
    const list = [...hubs()];
    const families: MetricFamily[] = [
      {
        name: 'consoled_console_viewers',
        help: 'Console viewers connected, per guest.',
        type: 'gauge',
        samples: list.map((h) => ({ labels: { guest: h.id }, value: h.viewerCount })),
      },
      ...PER_GUEST.map(
        (m): MetricFamily => ({
          name: m.name,
          help: m.help,
          type: 'counter',
          samples: list.map((h) => ({ labels: { guest: h.id }, value: h.counters[m.key] })),
        }),
      ),
    ];
    const s = server();
    if (s) {
      families.push(
        {
          name: 'consoled_console_connections',
          help: 'Console WebSocket connections open (authenticated or not).',
          type: 'gauge',
          samples: [{ value: s.connectionCount }],
        },
        {
          name: 'consoled_console_pending_connections',
          help: 'Console WebSocket connections waiting for their auth frame.',
          type: 'gauge',
          samples: [{ value: s.pendingCount }],
        },
        {
          name: 'consoled_console_accepted_total',
          help: 'Console connections admitted.',
          type: 'counter',
          samples: [{ value: s.counters.accepted }],
        },
        {
          name: 'consoled_console_refused_total',
          help: 'Console connections refused, by error code.',
          type: 'counter',
          samples: [...s.counters.refused].map(([code, value]) => ({ labels: { code }, value })),
        },
        {
          name: 'consoled_console_keepalive_timeouts_total',
          help: 'Console connections dropped for not answering a ping.',
          type: 'counter',
          samples: [{ value: s.counters.keepaliveTimeouts }],
        },
        {
          name: 'consoled_console_idle_timeouts_total',
          help: 'Console connections closed by the idle timeout.',
          type: 'counter',
          samples: [{ value: s.counters.idleTimeouts }],
        },
        {
          name: 'consoled_console_oversized_frames_total',
          help: 'Console connections closed for a frame over the size limit.',
          type: 'counter',
          samples: [{ value: s.counters.oversizedFrames }],
        },
        {
          name: 'consoled_console_proxied_total',
          help: 'Console connections this host proxied to the host that runs the guest.',
          type: 'counter',
          samples: [{ value: s.counters.proxy.opened }],
        },
        {
          name: 'consoled_console_proxy_follows_total',
          help: 'Times a proxied console connection followed its guest to a new owner (a migration, an upgrade).',
          type: 'counter',
          samples: [{ value: s.counters.proxy.follows }],
        },
        {
          name: 'consoled_console_proxy_failures_total',
          help: 'Proxied console connections closed because no owner could be reached in time.',
          type: 'counter',
          samples: [{ value: s.counters.proxy.failures }],
        },
        {
          name: 'consoled_console_proxied_in_total',
          help: 'Console connections another host proxied here, with a valid host credential.',
          type: 'counter',
          samples: [{ value: s.counters.proxiedIn }],
        },
        {
          name: 'consoled_console_token_closes_total',
          help: 'Console sessions ended by their token (TOKEN_EXPIRED, TOKEN_REVOKED), by error code.',
          type: 'counter',
          samples: [...s.sessions.counters.closes].map(([code, value]) => ({ labels: { code }, value })),
        },
        {
          name: 'consoled_console_token_renewals_total',
          help: 'Viewer tokens renewed in band by their console session.',
          type: 'counter',
          samples: [{ value: s.sessions.counters.renewals }],
        },
      );
    }
    return families;
  };
}
