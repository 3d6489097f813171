/**
 * One generated history of the ownership fault test (docs/design.md "Ownership"):
 * three real daemons (hosts a, b, c), a real Redis primary with a replica, and a few
 * guests printing numbered lines. A seeded generator picks operations: restarts
 * (SIGTERM or SIGKILL), live handoffs through `incoming: true` ending with the source
 * chardev closing, detach and re-attach (of the live chardev, or of a stale one on a
 * host the guest left), cold migrations through a release, Redis faults (restart
 * empty, crash and AOF recovery, SIGSTOP, failover to a replica that missed writes),
 * upgrades (docs/design.md "Upgrade": alone, during or right after a migration, during
 * a Redis fault, or failing) and reloads with a changed rate limit (SIGHUP or
 * `POST /v1/reload`). Around an upgrade or a reload on its own, the host's guests keep
 * their owner record (host and epoch) and their log gets no marker: the old process
 * and its successor share one host id and epoch, and nothing is claimed or reattached.
 * While it runs, hosts are asked who owns each guest; at the end the checker
 * (ownership-checker.ts) reads the stream and every host's local log.
 * The same seed gives the same draws; an operation that depends on the hosts' answers
 * (who is up, who owns a guest) can branch otherwise on a machine with other timings.
 *
 * One file of about 750 lines on purpose: the generator, the operations and the
 * hosts' bookkeeping they share (who holds which guest, which handoff is pending) are
 * one history's state; the checker is its own module (ownership-checker.ts).
 */
import { mkdir, rm, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { pathToFileURL } from 'node:url';
import type { Redis } from 'ioredis';
import { MARKER_REGEX } from '../../common/marker.js';
import { decodeMarker, type MarkerRecord } from '../../store/marker-index.js';
import { guestKeys, skipsKey } from '../../store/replication/redis-keys.js';
import { CONSOLED_BIN, DaemonCallError, type DaemonHandle, readLog, startDaemon } from '../support/daemon.js';
import { prng } from '../support/prng.js';
import { NO_RATE_LIMIT, replicationConfig } from '../support/replication.js';
import { tmpDir } from '../support/tmp.js';
import { waitFor } from '../support/wait.js';
import { FaultGuest } from './fault-guest.js';
import { FaultRedis } from './fault-redis.js';
import {
  type Admission,
  type CheckedEntry,
  type CompletedHandoff,
  checkGuest,
  type Handover,
  type LocalCopy,
} from './ownership-checker.js';

export interface HistoryOptions {
  readonly seed: number;
  /** Operations to run. @default 10 */
  readonly ops?: number;
  /** Guests. @default 2 */
  readonly guests?: number;
  /** Lines each guest prints at once every 40 ticks (0: none). @default 0 */
  readonly burstLines?: number;
  /** How often a live migration also upgrades its source or destination. @default 0.15 */
  readonly upgradeRate?: number;
  /** Progress lines (each operation as it starts). */
  readonly log?: (line: string) => void;
}

export interface HistoryResult {
  readonly seed: number;
  /** The operations, in order, as run (`skipped` when a precondition did not hold). */
  readonly ops: string[];
  readonly violations: string[];
  /** Status polls made, and the highest epoch each guest reached. */
  readonly polls: number;
  readonly epochs: Record<string, number>;
}

const HOSTS = ['a', 'b', 'c'] as const;
type Host = (typeof HOSTS)[number];
/**
 * The host whose upgrades may be made to fail: its successor is started through
 * `CONSOLED_SUCCESSOR_COMMAND` (read at the daemon's start), a wrapper that runs the
 * installed entry with its parent's config, or exits 3 while a flag file sits next to
 * that config. The
 * other hosts start their successor as in production (the variable unset).
 */
const FAILABLE: Host = 'c';
const FAIL_FLAG = 'fail-next-upgrade';
const CONFIG_ENV = 'FAULT_SUCCESSOR_CONFIG';
/** A rate limit no guest here reaches (a reload switches between it and none). */
const ROOMY_RATE_LIMIT = { bytesPerSec: 1024 * 1024, burstBytes: 4 * 1024 * 1024 };

/** The wrapper that FAILABLE's successors run (see there); returns its path. */
async function writeFailableSuccessor(): Promise<string> {
  const path = join(tmpDir('fault-successor'), 'successor.mjs');
  await writeFile(
    path,
    [
      "import { existsSync, readFileSync } from 'node:fs';",
      "import { dirname, join } from 'node:path';",
      '// The config of the first daemon (its command line), passed on to the entry and',
      '// to later successors (which inherit this environment, not the command line).',
      "const parent = readFileSync('/proc/' + process.ppid + '/cmdline', 'utf8').split('\\0');",
      `const config = process.env[${JSON.stringify(CONFIG_ENV)}] ?? parent[parent.indexOf('--config') + 1];`,
      `process.env[${JSON.stringify(CONFIG_ENV)}] = config;`,
      "process.argv.push('--config', config);",
      `if (existsSync(join(dirname(config), ${JSON.stringify(FAIL_FLAG)}))) {`,
      "  process.stderr.write('this successor was told to fail\\n');",
      '  process.exit(3);',
      '}',
      `await import(${JSON.stringify(pathToFileURL(CONSOLED_BIN).href)});`,
      '',
    ].join('\n'),
  );
  return path;
}

const TRANSITIONAL = new Set(['unverified', 'claiming', 'handing-off', 'sealed', 'releasing', 'adopting']);

interface Status {
  state: string;
  role: string;
  epoch: number;
  handoffPhase: string;
  offset: number;
  flushedOffset: number;
  cursor: number;
}

export async function runOwnershipHistory(options: HistoryOptions): Promise<HistoryResult> {
  const rand = prng(options.seed);
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rand() * xs.length)]!;
  const between = (lo: number, hi: number): number => Math.round(lo + rand() * (hi - lo));
  const ops: string[] = [];
  const violations: string[] = [];
  const handoffs = new Map<string, CompletedHandoff[]>();
  const admissions = new Map<string, Admission[]>();
  const handovers = new Map<string, Handover[]>();
  const log = options.log ?? (() => undefined);
  const note = (op: string): void => {
    ops.push(op);
    log(`[seed ${options.seed}] ${op}`);
  };

  const redis = await FaultRedis.start();
  const failableSuccessor = await writeFailableSuccessor();
  const daemons = new Map<Host, DaemonHandle>();
  const guests: FaultGuest[] = [];
  let client: Redis = redis.client();
  let polls = 0;
  let polling = true;
  let poller: Promise<void> = Promise.resolve();
  try {
    await Promise.all(
      HOSTS.map(async (h) => {
        daemons.set(
          h,
          await startDaemon({
            config: replicationConfig(
              `host-${h}`,
              { url: redis.url, commandTimeoutMs: 1_000, drainTimeoutMs: 1_500 },
              {
                handoff: {
                  completionTimeoutMs: 1_500,
                  timeoutAction: 'force_complete',
                  pollIntervalMs: 400,
                  drainTimeoutMs: 500,
                },
              },
            ),
            ...(h === FAILABLE
              ? {
                  env: {
                    CONSOLED_SUCCESSOR_COMMAND: JSON.stringify([process.execPath, failableSuccessor]),
                  },
                }
              : {}),
          }),
        );
      }),
    );
    const d = (h: Host): DaemonHandle => daemons.get(h)!;
    // Starts and stops of one host never overlap; some run while later operations go on.
    const lifecycles = new Map<Host, Promise<void>>();
    const background: Promise<void>[] = [];
    const lifecycle = (h: Host, work: () => Promise<void>): Promise<void> => {
      const next = (lifecycles.get(h) ?? Promise.resolve()).then(work, work);
      lifecycles.set(
        h,
        next.catch(() => undefined),
      );
      return next;
    };
    const admit = (guest: string, host: Host): void => {
      const list = admissions.get(guest) ?? [];
      list.push({ host: `host-${host}`, atMs: Date.now() });
      admissions.set(guest, list);
    };
    /** The PUT's HTTP status, or 0 when it got no answer (the daemon down or restarting). */
    const put = async (h: Host, guest: string, port: number, incoming = false): Promise<number> => {
      const res = await d(h)
        .api('PUT', `/v1/guests/${guest}`, {
          source: { type: 'tcp', host: '127.0.0.1', port },
          ...(incoming ? { incoming: true } : {}),
        })
        .catch(() => null);
      if (res) await res.arrayBuffer();
      return res?.status ?? 0;
    };
    const status = async (h: Host, guest: string): Promise<Status | null> => {
      if (!d(h).running) return null;
      try {
        const res = await d(h).api('GET', `/v1/guests/${guest}`, undefined, {
          signal: AbortSignal.timeout(3_000),
        });
        if (res.status !== 200) {
          await res.arrayBuffer();
          return null;
        }
        const s = (await res.json()) as {
          state: string;
          offset: number;
          flushedOffset: number;
          replication?: { role: string; epoch: number; cursor: number; handoff: { phase: string } };
        };
        if (!s.replication) return null;
        return {
          state: s.state,
          role: s.replication.role,
          epoch: s.replication.epoch,
          handoffPhase: s.replication.handoff.phase,
          offset: s.offset,
          flushedOffset: s.flushedOffset,
          cursor: s.replication.cursor,
        };
      } catch {
        return null;
      }
    };
    const ownerHost = async (guest: string): Promise<string | null> => {
      try {
        return (await client.hget(guestKeys('consoled:', guest).owner, 'host')) ?? null;
      } catch {
        return null;
      }
    };

    const ownerRecord = async (guest: string): Promise<{ host: string; epoch: number } | null> => {
      try {
        const r = await client.hgetall(guestKeys('consoled:', guest).owner);
        return r['host'] ? { host: r['host'], epoch: Number(r['epoch']) } : null;
      } catch {
        return null;
      }
    };
    /** The markers of a guest's local log on `h` (null when it cannot be read). */
    const localMarkers = async (h: Host, guest: string): Promise<string[] | null> => {
      const read = await readLog(d(h), guest, { scope: 'local', start: 0, limit: 64 * 1024 * 1024 }).catch(
        () => null,
      );
      return read ? [...read.bytes.toString('latin1').matchAll(MARKER_REGEX)].map((m) => m[0].trim()) : null;
    };

    // An upgrade or a reload on its own changes nothing a guest's owner or log shows.
    interface Watched {
      readonly guest: string;
      readonly epoch: number;
      readonly markers: number;
    }
    /** The guests `h` owns and captures with nothing else under way: what must stay as it is. */
    const watch = async (h: Host): Promise<Watched[]> => {
      const out: Watched[] = [];
      for (const g of guests) {
        if (g.host !== h) continue;
        const s = await status(h, g.id);
        const record = await ownerRecord(g.id);
        if (s?.role !== 'owner' || s.state !== 'connected') continue;
        if (record?.host !== `host-${h}` || record.epoch !== s.epoch) continue;
        const others = await Promise.all(HOSTS.filter((x) => x !== h).map((x) => status(x, g.id)));
        if (others.some((o) => o && (TRANSITIONAL.has(o.role) || o.role === 'incoming'))) continue;
        const markers = await localMarkers(h, g.id);
        if (markers) out.push({ guest: g.id, epoch: s.epoch, markers: markers.length });
      }
      return out;
    };
    const checkWatched = async (
      h: Host,
      what: string,
      fromMs: number,
      watched: readonly Watched[],
    ): Promise<void> => {
      for (const w of watched) {
        const record = await ownerRecord(w.guest);
        if (record?.host !== `host-${h}` || record.epoch !== w.epoch)
          violations.push(
            `${w.guest}: across ${what} the owner record went from host-${h}@${w.epoch} to ${record ? `${record.host}@${record.epoch}` : 'none'}`,
          );
        const s = await waitFor(
          `${h} to confirm ${w.guest}`,
          async () => {
            const now = await status(h, w.guest);
            return now && now.role !== 'unverified' ? now : false;
          },
          { timeoutMs: 5_000 },
        ).catch(() => null);
        if (s?.role !== 'owner' || s.epoch !== w.epoch)
          violations.push(
            `${w.guest}: after ${what}, ${h} says ${s ? `${s.role}@${s.epoch}` : 'nothing'} (was owner@${w.epoch})`,
          );
        const list = handovers.get(w.guest) ?? [];
        list.push({
          host: `host-${h}`,
          epoch: w.epoch,
          fromMs,
          toMs: Date.now(),
          what,
          markersBefore: w.markers,
        });
        handovers.set(w.guest, list);
        const markers = await localMarkers(h, w.guest);
        if (markers && markers.length > w.markers)
          violations.push(
            `${w.guest}: ${what} wrote ${markers
              .slice(w.markers)
              .map((m) => JSON.stringify(m))
              .join(', ')} in its log on ${h}`,
          );
      }
    };
    /**
     * Upgrades `h` (its lifecycle must be held). A successor told to fail must leave
     * the old process serving; any other failure is a violation. With `check`, the
     * guests `h` owns keep their record, role and epoch, and their logs get no marker.
     */
    const upgrade = async (h: Host, options: { fail?: boolean; check?: boolean } = {}): Promise<void> => {
      if (!d(h).running) {
        note(`  upgrade ${h}: skipped (down)`);
        return;
      }
      const watched = options.check ? await watch(h) : [];
      if (options.check)
        note(`  watching ${watched.map((w) => `${w.guest}@${w.epoch}`).join(', ') || 'no guest'} on ${h}`);
      const flag = join(dirname(d(h).configPath), FAIL_FLAG);
      if (options.fail) await writeFile(flag, '');
      const pidBefore = d(h).pid;
      const fromMs = Date.now();
      try {
        const answer = await d(h).upgrade();
        if (options.fail)
          violations.push(
            `${h}: an upgrade whose successor exits succeeded (${pidBefore} -> ${answer.toPid})`,
          );
        note(
          `  ${h} upgraded: pid ${answer.fromPid} -> ${answer.toPid}, ${answer.guests} guest(s), ${answer.wallMs} ms`,
        );
      } catch (err) {
        const code = err instanceof DaemonCallError ? err.code : null;
        if (!options.fail) violations.push(`${h}: upgrade failed: ${String(err).slice(0, 400)}`);
        else if (code !== 'UPGRADE_FAILED' || !d(h).running || d(h).pid !== pidBefore)
          violations.push(
            `${h}: a failed upgrade did not leave the old process serving: ${String(err).slice(0, 400)}`,
          );
        else note(`  ${h}'s upgrade failed as told; pid ${pidBefore} serves on`);
      } finally {
        if (options.fail) await rm(flag, { force: true });
      }
      await checkWatched(h, `the upgrade of ${h}`, fromMs, watched);
    };
    /** Switches `h`'s default rate limit and reloads (SIGHUP or the API); guests keep owner and log. */
    const reload = async (h: Host, how: 'SIGHUP' | 'POST /v1/reload'): Promise<void> => {
      if (!d(h).running) {
        note(`  reload ${h}: skipped (down)`);
        return;
      }
      const watched = await watch(h);
      note(`  watching ${watched.map((w) => `${w.guest}@${w.epoch}`).join(', ') || 'no guest'} on ${h}`);
      const current = (d(h).config['defaults'] as { rateLimit?: unknown } | undefined)?.rateLimit;
      const next =
        JSON.stringify(current) === JSON.stringify(NO_RATE_LIMIT) ? ROOMY_RATE_LIMIT : NO_RATE_LIMIT;
      await d(h).reconfigure({ defaults: { rateLimit: next } });
      const fromMs = Date.now();
      const reloadsLogged = () =>
        d(h)
          .logs()
          .match(/"msg":"(configuration reloaded|reload refused)/g)?.length ?? 0;
      if (how === 'SIGHUP') {
        const before = reloadsLogged();
        d(h).signal('SIGHUP');
        const done = await waitFor('the reload to be logged', () => reloadsLogged() > before, {
          timeoutMs: 10_000,
        }).catch(() => false);
        if (!done) violations.push(`${h}: a SIGHUP reload was not logged within 10 s`);
        else if (
          /reload refused/.test(
            d(h)
              .logs()
              .split('\n')
              .reverse()
              .find((l) => /"msg":"(configuration reloaded|reload refused)/.test(l)) ?? '',
          )
        )
          violations.push(`${h}: a SIGHUP reload of a changed rate limit was refused`);
      } else {
        const res = await d(h)
          .api('POST', '/v1/reload')
          .catch(() => null);
        const text = res ? await res.text() : 'no answer';
        if (res?.status !== 200)
          violations.push(`${h}: POST /v1/reload -> ${res?.status ?? 0} ${text.slice(0, 300)}`);
      }
      await checkWatched(h, `a reload of ${h} (${how})`, fromMs, watched);
    };

    // Guests start on random hosts, attached explicitly.
    for (let i = 0; i < (options.guests ?? 2); i++) {
      const g = new FaultGuest(`g${i}`, options.burstLines ?? 0);
      guests.push(g);
      const h = pick(HOSTS);
      const port = await g.startOn(h);
      note(`start ${g.id} on ${h}`);
      await put(h, g.id, port);
      admit(g.id, h);
    }

    // At most one host says owner of a guest at the instant it is asked.
    poller = (async () => {
      while (polling) {
        for (const g of guests) {
          const answers = await Promise.all(HOSTS.map(async (h) => [h, await status(h, g.id)] as const));
          polls++;
          const owners = answers.filter(([, s]) => s?.role === 'owner');
          if (owners.length < 2) continue;
          const epochs = owners.map(([, s]) => s!.epoch);
          if (new Set(epochs).size < epochs.length) {
            violations.push(
              `${g.id}: ${owners.map(([h, s]) => `${h}@${s!.epoch}`).join(', ')} all said owner with one epoch`,
            );
            continue;
          }
          // Asked a few ms apart across a handoff: the older one must not say so again.
          const newest = Math.max(...epochs);
          for (const [h, s] of owners) {
            if (s!.epoch === newest) continue;
            const again = await status(h, g.id);
            if (again?.role === 'owner' && again.epoch === s!.epoch)
              violations.push(
                `${g.id}: ${h} still says owner at epoch ${s!.epoch} while another host owns epoch ${newest}`,
              );
          }
        }
        await sleep(150);
      }
    })();

    const count = options.ops ?? 10;
    for (let i = 0; i < count; i++) {
      const u = rand();
      const g = pick(guests);
      // Upgrades and reloads on their own take 10%; the other operations share the rest
      // in their earlier proportions (upgrades also ride on migrations and Redis faults).
      // An upgrade costs a node start (seconds on a loaded machine): about one a history.
      const r = (u - 0.1) / 0.9;
      if (u < 0.06) {
        const h = pick(HOSTS);
        const fail = h === FAILABLE && rand() < 0.4;
        note(`upgrade ${h}${fail ? ' (its successor exits at start)' : ''}`);
        await lifecycle(h, () => upgrade(h, { fail, check: true }));
      } else if (u < 0.1) {
        const h = pick(HOSTS);
        const how = rand() < 0.5 ? 'SIGHUP' : 'POST /v1/reload';
        note(`reload ${h} with a changed rate limit (${how})`);
        await lifecycle(h, () => reload(h, how));
      } else if (r < 0.28) {
        const h = pick(HOSTS);
        const signal = rand() < 0.5 ? 'SIGTERM' : 'SIGKILL';
        const downMs = between(0, 400);
        const overlap = rand() < 0.3;
        note(`${signal} ${h}, down ${downMs} ms${overlap ? ', while the next operations run' : ''}`);
        const restart = lifecycle(h, async () => {
          if (!d(h).running) await d(h).start();
          if (signal === 'SIGTERM') await d(h).stop();
          else await d(h).kill();
          await sleep(downMs);
          await d(h).start();
        });
        if (overlap) background.push(restart);
        else await restart;
      } else if (r < 0.53) {
        const from = g.host;
        const others = HOSTS.filter((h) => h !== from && d(h).running);
        if (!from || others.length === 0) {
          note(`migrate ${g.id}: skipped`);
          continue;
        }
        const to = pick(others);
        const downtimeMs = between(10, 80);
        const closeAfterMs = between(0, 300);
        const deleteSource = rand() < 0.6;
        const fr = rand();
        const fault =
          fr < 0.15
            ? 'source SIGKILLed'
            : fr < 0.25
              ? 'destination SIGKILLed'
              : fr < 0.35
                ? 'Redis paused'
                : null;
        const up =
          rand() < (options.upgradeRate ?? 0.15)
            ? {
                host: rand() < 0.5 ? (from as Host) : to,
                when: rand() < 0.5 ? ('during' as const) : ('right after' as const),
              }
            : null;
        note(
          `migrate ${g.id} ${from} -> ${to} (downtime ${downtimeMs} ms, source closes after ${closeAfterMs} ms${deleteSource ? ', then DELETE on the source' : ''}${fault ? `, ${fault} meanwhile` : ''}${up ? `, upgrade ${up.host} ${up.when}` : ''})`,
        );
        const port = await g.prepare(to);
        // No answer (0: the daemon is down, a restart of its own under way) is no attach
        // either: the guest would run there with nobody reading, a hole no host can mark.
        const answer = await put(to, g.id, port, true);
        if (answer === 0 || answer >= 300) {
          note(`  PUT incoming on ${to} ${answer === 0 ? 'not answered' : 'refused'}`);
          continue;
        }
        admit(g.id, to);
        await g
          .chardev(to)
          ?.waitForConnections(1, 5_000)
          .catch(() => undefined);
        const before = (await status(to, g.id))?.epoch ?? 0;
        const src = from as Host;
        if (fault === 'source SIGKILLed') {
          // The source host dies with the migration: no seal comes, the destination forces.
          await lifecycle(src, () => d(src).kill());
          background.push(lifecycle(src, () => sleep(between(2_000, 3_000)).then(() => d(src).start())));
        }
        const paused = fault === 'Redis paused' ? redis.pause(between(300, 1_500)) : null;
        const upgrading = up?.when === 'during' ? lifecycle(up.host, () => upgrade(up.host)) : null;
        await g.migrate(to, downtimeMs, closeAfterMs);
        if (fault === 'destination SIGKILLed') {
          await sleep(between(0, 200));
          await lifecycle(to, async () => {
            await d(to).kill();
            await sleep(between(0, 500));
            await d(to).start();
          });
        }
        await paused;
        await upgrading;
        const done = await waitFor(
          'the destination to own the guest',
          async () => {
            const s = await status(to, g.id);
            return s?.role === 'owner' && s.epoch > before ? s : false;
          },
          { timeoutMs: 8_000 },
        ).catch(() => null);
        if (done) {
          const list = handoffs.get(g.id) ?? [];
          list.push({ source: `host-${from}`, destEpoch: done.epoch, atMs: Date.now() });
          handoffs.set(g.id, list);
          note(`  ${to} owns ${g.id} at epoch ${done.epoch} (${done.handoffPhase})`);
        } else {
          note(`  ${to} did not own ${g.id} within 8 s`);
        }
        if (up?.when === 'right after') await lifecycle(up.host, () => upgrade(up.host));
        if (deleteSource && d(src).running) {
          const res = await d(from as Host)
            .api('DELETE', `/v1/guests/${g.id}`)
            .catch(() => null);
          if (res) await res.arrayBuffer();
        }
      } else if (r < 0.63) {
        const h = g.host as Host | null;
        if (!h || !d(h).running) {
          note(`detach and re-attach ${g.id}: skipped`);
          continue;
        }
        const pauseMs = between(50, 400);
        note(`detach ${g.id} on ${h}, re-attach after ${pauseMs} ms`);
        const res = await d(h)
          .api('DELETE', `/v1/guests/${g.id}`)
          .catch(() => null);
        if (res) await res.arrayBuffer();
        await sleep(pauseMs);
        const port = g.chardev(h)?.port;
        if (port !== undefined && g.host === h) {
          admit(g.id, h);
          await put(h, g.id, port);
        }
      } else if (r < 0.73) {
        const owner = await ownerHost(g.id);
        const candidates = HOSTS.filter((h) => `host-${h}` !== owner && h !== g.host && d(h).running);
        if (!owner || candidates.length === 0) {
          note(`stale re-attach of ${g.id}: skipped (owner ${owner ?? 'none'})`);
          continue;
        }
        const h = pick(candidates);
        note(`stale re-attach of ${g.id} on ${h} (the stream is ${owner}'s)`);
        await put(h, g.id, await g.staleChardev());
      } else if (r < 0.8) {
        const from = g.host as Host | null;
        const others = HOSTS.filter((h) => h !== from && d(h).running);
        if (!from || !d(from).running || others.length === 0) {
          note(`cold migration of ${g.id}: skipped`);
          continue;
        }
        const to = pick(others);
        note(`cold migration of ${g.id}: DELETE on ${from}, start on ${to}`);
        const res = await d(from)
          .api('DELETE', `/v1/guests/${g.id}`)
          .catch(() => null);
        if (res) await res.arrayBuffer();
        await g.stop();
        const port = await g.startOn(to);
        admit(g.id, to);
        await put(to, g.id, port);
      } else {
        const fault = pick(['empty', 'crash', 'pause', 'failover'] as const);
        const ms = fault === 'pause' ? between(200, 1_500) : between(0, 300);
        const alongside = rand() < 0.15 ? pick(HOSTS) : null;
        note(
          `redis ${fault}${fault === 'pause' || fault === 'failover' ? ` ${ms} ms` : ''}${alongside ? `, upgrade ${alongside} meanwhile` : ''}`,
        );
        client.disconnect();
        const upgrading = alongside ? lifecycle(alongside, () => upgrade(alongside)) : null;
        if (fault === 'empty') await redis.restartEmpty();
        else if (fault === 'crash') await redis.crashAndRecover();
        else if (fault === 'pause') await redis.pause(ms);
        else await redis.failover(ms);
        client = redis.client();
        await upgrading;
      }
      await sleep(between(100, 600));
    }

    // Quiesce: every daemon up, guests quiet, every owner has published everything.
    note('quiesce');
    await Promise.allSettled(background);
    for (const h of HOSTS) await lifecycle(h, async () => (d(h).running ? undefined : d(h).start()));
    for (const g of guests) g.pause();
    for (const g of guests) {
      const settled = await waitFor(
        `${g.id} to settle`,
        async () => {
          const all = await Promise.all(HOSTS.map((h) => status(h, g.id)));
          if (
            all.some(
              (s) =>
                s && (TRANSITIONAL.has(s.role) || (s.role === 'incoming' && s.handoffPhase !== 'waiting')),
            )
          )
            return false;
          const owner = await ownerHost(g.id);
          const h = HOSTS.find((x) => `host-${x}` === owner);
          if (!h) return true;
          const s = all[HOSTS.indexOf(h)];
          return !s || (s.role === 'owner' && s.offset === s.flushedOffset && s.cursor === s.flushedOffset);
        },
        { timeoutMs: 25_000, intervalMs: 100 },
      ).catch((err: unknown) => (err instanceof Error ? err.message : String(err)));
      if (settled !== true) violations.push(`${g.id}: never settled: ${String(settled)}`);
    }
    polling = false;
    await poller;

    const epochs: Record<string, number> = {};
    for (const g of guests) {
      const entries = await readEntries(client, g.id);
      epochs[g.id] = Math.max(0, ...entries.map((e) => e.epoch));
      const skips = (await client.zrange(skipsKey('consoled:', g.id), '0', '-1')).map(
        (m) => m.split('-').map(Number) as [number, number],
      );
      const locals: LocalCopy[] = [];
      for (const h of HOSTS) {
        const s = await status(h, g.id);
        if (!s) continue;
        const read = await readLog(d(h), g.id, { scope: 'local', start: 0, limit: 64 * 1024 * 1024 }).catch(
          () => null,
        );
        if (read) locals.push({ host: `host-${h}`, role: s.role, start: read.start, bytes: read.bytes });
      }
      const markers = (await client.zrange(guestKeys('consoled:', g.id).markers, '0', '-1'))
        .map(decodeMarker)
        .filter((m): m is MarkerRecord => m !== null)
        .sort((x, y) => x.offset - y.offset);
      const found = checkGuest({
        guest: g.id,
        entries,
        markers,
        skips,
        locals,
        handoffs: handoffs.get(g.id) ?? [],
        admissions: admissions.get(g.id) ?? [],
        handovers: handovers.get(g.id) ?? [],
      });
      violations.push(...found);
      if (found.length > 0) {
        await dumpForReplay(options.seed, g.id, entries, markers, locals);
        await dumpHostLogs(options.seed, daemons);
      }
    }
    return { seed: options.seed, ops, violations, polls, epochs };
  } finally {
    polling = false;
    await poller.catch(() => undefined);
    for (const g of guests) await g.close();
    await Promise.all([...daemons.values()].map((dh) => (dh.running ? dh.kill() : undefined)));
    client.disconnect();
    await redis.stop();
  }
}

/** Every entry of a guest's stream, raw (XRANGE), with the fields the checker needs. */
async function readEntries(client: Redis, guest: string): Promise<CheckedEntry[]> {
  const key = guestKeys('consoled:', guest).log;
  const out: CheckedEntry[] = [];
  let cursor = '-';
  for (;;) {
    const batch = await client.xrangeBuffer(key, cursor, '+', 'COUNT', 500);
    for (const [rawId, fields] of batch) {
      const f = new Map<string, Buffer>();
      for (let i = 0; i + 1 < fields.length; i += 2) f.set(fields[i]!.toString('latin1'), fields[i + 1]!);
      const id = rawId.toString('latin1');
      out.push({
        offset: Number(id.split('-')[0]),
        bytes: f.get('d') ?? Buffer.alloc(0),
        host: f.get('h')?.toString() ?? '',
        epoch: Number(f.get('e')?.toString() ?? 0),
        timestampMs: Number(f.get('t')?.toString() ?? 0),
      });
      cursor = `(${id}`;
    }
    if (batch.length < 500) break;
  }
  return out;
}

/** What a failing history left, for a reader: `test-artifacts/fault/<seed>-<guest>.json`. */
async function dumpForReplay(
  seed: number,
  guest: string,
  entries: CheckedEntry[],
  markers: MarkerRecord[],
  locals: LocalCopy[],
): Promise<void> {
  const dir = join('test-artifacts', 'fault');
  await mkdir(dir, { recursive: true });
  const text = (b: Buffer) => b.toString('latin1');
  await writeFile(
    join(dir, `${seed}-${guest}.json`),
    JSON.stringify(
      {
        entries: entries.map((e) => ({ ...e, bytes: text(e.bytes) })),
        markers,
        locals: locals.map((l) => ({ ...l, bytes: text(l.bytes) })),
      },
      null,
      1,
    ),
  );
}

/** What each host logged last (test/support/daemon.ts keeps its last lines): `<seed>-host-<h>.log`. */
async function dumpHostLogs(seed: number, daemons: ReadonlyMap<Host, DaemonHandle>): Promise<void> {
  const dir = join('test-artifacts', 'fault');
  for (const [h, daemon] of daemons)
    await writeFile(join(dir, `${seed}-host-${h}.log`), `${daemon.logs()}\n`);
}

/** A failing history, told so that it can be replayed. */
export function describeHistory(result: HistoryResult): string {
  return [
    `ownership history seed ${result.seed}: ${result.violations.length} violation(s)`,
    ...result.violations.map((v) => `  ! ${v}`),
    'operations:',
    ...result.ops.map((op, i) => `  ${String(i + 1).padStart(2)}. ${op}`),
    `replay: npm run fault:ownership -- --seed ${result.seed} --histories 1`,
  ].join('\n');
}
