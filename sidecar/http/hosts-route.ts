/**
 * `GET /v1/hosts` (README "HTTP API"; docs/design.md "Host registry"): the hosts of the
 * registry sorted by id, each with its advertised URLs, when it was last seen and
 * whether it is this host (`self`), and the `consoled_hosts_known` gauge. With Redis the
 * registry is Redis' (`registry: "redis"`; 503 REPLICATION_UNAVAILABLE while Redis does
 * not answer); without it, this host alone (`registry: "local"`), so a caller can tell
 * a one-host answer from a registry that knows one host.
 */
import type { HostAnnouncement, HostRecord } from '../../store/replication/host-registry.js';
import type { MetricsRegistry } from './metrics.js';
import type { Router } from './router.js';

/** Where the listing comes from: the Redis registry, or this host alone. */
export interface HostDirectory {
  readonly kind: 'redis' | 'local';
  list(): Promise<HostRecord[]>;
}

/** The registry of a host without Redis: itself, seen now. */
export function localHostDirectory(self: () => HostAnnouncement): HostDirectory {
  return {
    kind: 'local',
    list: async () => [{ ...self(), lastSeen: Date.now(), lastSeenAgoMs: 0 }],
  };
}

/** Registers `GET /v1/hosts` (admin) and its gauge; `directory` is asked at each call. */
export function addHostsRoute(
  router: Router,
  metrics: MetricsRegistry,
  selfId: string,
  directory: () => HostDirectory,
): void {
  /** Hosts the last listing found; null before the first. */
  let known: number | null = null;
  router.add(
    'GET',
    '/v1/hosts',
    async () => {
      const source = directory();
      const hosts = await source.list();
      known = hosts.length;
      return {
        status: 200,
        body: {
          registry: source.kind,
          hosts: hosts.map((h) => ({
            hostId: h.hostId,
            apiUrl: h.apiUrl,
            consoleUrl: h.consoleUrl,
            version: h.version,
            pid: h.pid,
            startedAt: new Date(h.startedAt).toISOString(),
            lastSeen: new Date(h.lastSeen).toISOString(),
            lastSeenAgoMs: Math.round(h.lastSeenAgoMs),
            self: h.hostId === selfId,
          })),
        },
      };
    },
    { auth: 'admin' },
  );
  metrics.add(() =>
    known === null
      ? []
      : [
          {
            name: 'consoled_hosts_known',
            help: 'Hosts in the host registry as GET /v1/hosts last listed them.',
            type: 'gauge',
            samples: [{ value: known }],
          },
        ],
  );
}
