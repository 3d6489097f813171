/**
 * The host registry through `GET /v1/hosts` (docs/design.md "Host registry"): three
 * built daemons on one Redis each list all three, with their advertised URLs (given,
 * or derived from the listen address) and `self` right. A SIGKILLed host drops out once
 * its TTL ran out, a SIGTERMed one at once, a restarted one comes back, an upgraded one
 * stays listed with its successor's pid, and a Redis restarted empty gets every entry
 * back. Admin auth; without Redis the answer is this host alone (`registry: "local"`),
 * with Redis away 503 REPLICATION_UNAVAILABLE. Invalid `advertise` URLs and a TTL not
 * above the heartbeat are refused as BAD_CONFIG.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ConsoledError } from '../../common/errors.js';
import { validateConfig } from '../../sidecar/config.js';
import { type DaemonHandle, runConsolectl, startDaemon, stopAllDaemons } from '../support/daemon.js';
import { type RedisHandle, startRedis, stopAllRedis } from '../support/redis-server.js';
import { replicationConfig } from '../support/replication.js';
import { removeTmpDirs } from '../support/tmp.js';
import { waitFor } from '../support/wait.js';

/**
 * Short, so that a dead host drops out within the test; the TTL ten beats long, so that a
 * live host whose beats are late on a loaded machine (CI runs the suite two files at a
 * time on two cores) does not drop out.
 */
const HOSTS = { heartbeatMs: 400, ttlMs: 4_000 };

interface ListedHost {
  hostId: string;
  apiUrl: string;
  consoleUrl: string;
  version: string;
  pid: number;
  startedAt: string;
  lastSeen: string;
  lastSeenAgoMs: number;
  self: boolean;
}

interface HostsAnswer {
  registry: 'redis' | 'local';
  hosts: ListedHost[];
}

let redis: RedisHandle;
let a: DaemonHandle;
let b: DaemonHandle;
let c: DaemonHandle;

function hostConfig(hostId: string, advertise?: Record<string, string>): Record<string, unknown> {
  return replicationConfig(hostId, { url: redis.url, hosts: HOSTS }, advertise ? { advertise } : {});
}

/** Starts any of the three that an earlier case left stopped (a failed case must not fail the next). */
async function allRunning(): Promise<void> {
  for (const d of [a, b, c]) if (!d.running) await d.start();
  await waitFor('all three hosts listed', async () => (await ids(a)).length === 3);
}

function hosts(d: DaemonHandle): Promise<HostsAnswer> {
  return d.json<HostsAnswer>('GET', '/v1/hosts');
}

async function ids(d: DaemonHandle): Promise<string[]> {
  return (await hosts(d)).hosts.map((h) => h.hostId);
}

/** What each host should be listed with. */
function expected(): Record<string, Pick<ListedHost, 'apiUrl' | 'consoleUrl'>> {
  return {
    // Given, with the trailing slash taken off.
    'host-a': { apiUrl: 'https://a.example/consoled', consoleUrl: 'https://consoles.example/a' },
    // Derived from the address it listens on.
    'host-b': { apiUrl: b.url, consoleUrl: b.url },
    // Only the API URL given: the consoles are under it too.
    'host-c': { apiUrl: 'http://c.example:7070', consoleUrl: 'http://c.example:7070' },
  };
}

beforeAll(async () => {
  redis = await startRedis();
  [a, b, c] = await Promise.all([
    startDaemon({
      config: hostConfig('host-a', {
        apiUrl: 'https://a.example/consoled/',
        consoleUrl: 'https://consoles.example/a',
      }),
    }),
    startDaemon({ config: hostConfig('host-b') }),
    startDaemon({ config: hostConfig('host-c', { apiUrl: 'http://c.example:7070' }) }),
  ]);
}, 60_000);

afterAll(async () => {
  await stopAllDaemons();
  await stopAllRedis();
  await removeTmpDirs();
});

describe('GET /v1/hosts with Redis', () => {
  it('lists every host from every host, sorted, with its advertised URLs and self right', async () => {
    const daemons: Record<string, DaemonHandle> = { 'host-a': a, 'host-b': b, 'host-c': c };
    for (const [selfId, d] of Object.entries(daemons)) {
      await waitFor(`${selfId} to list all three hosts`, async () => (await ids(d)).length === 3);
      const answer = await hosts(d);
      expect(answer.registry).toBe('redis');
      expect(answer.hosts.map((h) => h.hostId)).toEqual(['host-a', 'host-b', 'host-c']);
      for (const host of answer.hosts) {
        expect(host).toMatchObject(expected()[host.hostId]!);
        expect(host.self, `${host.hostId} as seen from ${selfId}`).toBe(host.hostId === selfId);
        expect(host.pid).toBe(daemons[host.hostId]!.pid);
        expect(host.version).toMatch(/^\d+\.\d+\.\d+/);
        expect(host.lastSeenAgoMs).toBeGreaterThanOrEqual(0);
        expect(host.lastSeenAgoMs).toBeLessThan(HOSTS.ttlMs);
        expect(Date.parse(host.lastSeen)).toBeGreaterThan(Date.now() - 60_000);
        expect(Date.parse(host.startedAt)).toBeLessThanOrEqual(Date.now());
      }
    }
    const metrics = await (await a.api('GET', '/metrics')).text();
    expect(metrics).toMatch(/^consoled_hosts_known 3$/m);
    // consolectl hosts prints the same answer.
    const cli = await runConsolectl(b, ['hosts']);
    expect(cli.code).toBe(0);
    const printed = JSON.parse(cli.stdout.toString()) as HostsAnswer;
    expect(printed.hosts.map((h) => [h.hostId, h.self])).toEqual([
      ['host-a', false],
      ['host-b', true],
      ['host-c', false],
    ]);
  });

  it('needs the admin token', async () => {
    const anonymous = await fetch(`${a.url}/v1/hosts`);
    expect(anonymous.status).toBe(401);
    expect(anonymous.headers.get('www-authenticate')).toBe('Bearer realm="consoled"');
    const { token } = await a.json<{ token: string }>('POST', '/v1/guests/g1/tokens', {
      mode: 'ro',
      ttl: '1h',
    });
    const viewer = await fetch(`${a.url}/v1/hosts`, { headers: { authorization: `Bearer ${token}` } });
    expect(viewer.status).toBe(403);
    expect(((await viewer.json()) as { error: { code: string } }).error.code).toBe('FORBIDDEN');
  });

  it('drops a SIGKILLed host once its TTL ran out, and lists it again once it is back', async () => {
    await allRunning();
    const age = (await hosts(a)).hosts.find((h) => h.hostId === 'host-c')!.lastSeenAgoMs;
    await c.kill();
    const killedAt = Date.now();
    await waitFor('host-c to drop out', async () => !(await ids(a)).includes('host-c'), {
      timeoutMs: 10_000,
    });
    // Its entry, `age` old just before the kill (or fresher, had a beat come in between),
    // lived on for the rest of its TTL: not a moment's absence, an expiry.
    expect(Date.now() - killedAt).toBeGreaterThanOrEqual(HOSTS.ttlMs - age - 300);
    await waitFor('host-b to list host-a and itself only', async () => {
      const listed = await ids(b);
      return listed.length === 2 && listed[0] === 'host-a' && listed[1] === 'host-b';
    });

    await c.start();
    await waitFor('host-c to be listed again', async () => (await ids(a)).includes('host-c'));
    const listed = (await hosts(a)).hosts.find((h) => h.hostId === 'host-c')!;
    expect(listed.pid).toBe(c.pid);
    expect(listed.self).toBe(false);
  });

  it('drops a SIGTERMed host at once', async () => {
    await allRunning();
    await b.stop();
    // No wait: a clean shutdown took the entry out before the process exited.
    expect(await ids(a)).toEqual(['host-a', 'host-c']);
    await b.start();
    await waitFor('host-b to be listed again', async () => (await ids(a)).includes('host-b'));
    const listed = (await hosts(c)).hosts.find((h) => h.hostId === 'host-b')!;
    // The port changed with the restart (port 0), and the derived URL with it.
    expect(listed.apiUrl).toBe(b.url);
  });

  it('keeps an upgraded host listed, with the successor pid', async () => {
    await allRunning();
    const answer = await a.upgrade();
    expect(answer.toPid).not.toBe(answer.fromPid);
    const listed = await waitFor('host-a to be listed with the successor pid', async () => {
      const host = (await hosts(c)).hosts.find((h) => h.hostId === 'host-a');
      return host?.pid === answer.toPid && host;
    });
    expect(listed).toMatchObject(expected()['host-a']!);
    const fromSelf = (await hosts(a)).hosts.find((h) => h.hostId === 'host-a')!;
    expect(fromSelf).toMatchObject({ self: true, pid: answer.toPid });
    // The old process retired without taking the entry out, and the successor keeps it fresh.
    await waitFor('a fresh beat of the successor', async () => {
      const host = (await hosts(c)).hosts.find((h) => h.hostId === 'host-a');
      return host !== undefined && host.lastSeenAgoMs < HOSTS.heartbeatMs * 2;
    });
  });

  it('answers 503 REPLICATION_UNAVAILABLE while Redis is away, and every host publishes again when it is back empty', async () => {
    await allRunning();
    await redis.stop();
    const away = await waitFor('GET /v1/hosts to answer 503', async () => {
      const res = await a.api('GET', '/v1/hosts');
      return res.status === 503 && ((await res.json()) as { error: { code: string } });
    });
    expect(away.error.code).toBe('REPLICATION_UNAVAILABLE');
    await redis.start();
    await waitFor(
      'every host in the registry again',
      async () => (await ids(b).catch(() => [])).length === 3,
      {
        timeoutMs: 20_000,
      },
    );
  });
});

describe('GET /v1/hosts without Redis', () => {
  it('answers this host alone, as the local registry', async () => {
    const solo = await startDaemon({
      config: { hostId: 'solo', advertise: { consoleUrl: 'https://consoles.example/solo' } },
    });
    const answer = await hosts(solo);
    expect(answer.registry).toBe('local');
    expect(answer.hosts).toHaveLength(1);
    expect(answer.hosts[0]).toMatchObject({
      hostId: 'solo',
      apiUrl: solo.url,
      consoleUrl: 'https://consoles.example/solo',
      pid: solo.pid,
      lastSeenAgoMs: 0,
      self: true,
    });
    await solo.stop();
  });
});

describe('the advertise and redis.hosts configuration', () => {
  function refusal(raw: unknown): string {
    try {
      validateConfig(raw);
    } catch (err) {
      if (err instanceof ConsoledError && err.code === 'BAD_CONFIG') return err.message;
      throw err;
    }
    throw new Error('accepted');
  }

  it('refuses URLs that are not plain http(s) base URLs', () => {
    for (const bad of [
      'ftp://a.example',
      'a.example:7070',
      'https://user:pw@a.example',
      'https://a.example/?x=1',
    ]) {
      expect(refusal({ advertise: { apiUrl: bad } })).toMatch(/advertise\.apiUrl: must be an absolute http/);
    }
    expect(refusal({ advertise: { consoleUrl: 'javascript:alert(1)' } })).toMatch(/advertise\.consoleUrl/);
    expect(validateConfig({ advertise: { apiUrl: 'https://[::1]:8443/x/' } }).advertise.apiUrl).toBe(
      'https://[::1]:8443/x',
    );
  });

  it('refuses a TTL that is not longer than the heartbeat', () => {
    const redisSection = { url: 'redis://127.0.0.1:6379', hosts: { heartbeatMs: 1_000, ttlMs: 1_000 } };
    expect(refusal({ redis: redisSection })).toMatch(
      /redis\.hosts\.ttlMs: must be longer than hosts\.heartbeatMs/,
    );
    const defaults = validateConfig({ redis: { url: 'redis://127.0.0.1:6379' } }).redis!.hosts;
    expect(defaults).toEqual({ heartbeatMs: 5_000, ttlMs: 30_000 });
  });
});
