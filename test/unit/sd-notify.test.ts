/**
 * ServiceNotifier (sidecar/lifecycle/sd-notify.ts) against a real datagram socket the
 * test binds: the wire format (one `KEY=VALUE` a line), MAINPID for an upgrade's
 * successor, no-ops without NOTIFY_SOCKET or with an abstract one, one warning when
 * the socket is gone; and which environment turns the watchdog on.
 */
import { type Logger, pino } from 'pino';
import { afterAll, describe, expect, it } from 'vitest';
import { monotonicUsec, ServiceNotifier, watchdogUsec } from '../../sidecar/lifecycle/sd-notify.js';
import { NotifySocket } from '../support/notify-socket.js';
import { removeTmpDirs } from '../support/tmp.js';

const opened: NotifySocket[] = [];
afterAll(async () => {
  for (const s of opened) s.close();
  await removeTmpDirs();
});

/** A logger that keeps its warnings. */
function recordingLogger(): { logger: Logger; warnings: string[] } {
  const warnings: string[] = [];
  const logger: Logger = pino(
    { level: 'warn' },
    {
      write: (line: string) => {
        warnings.push((JSON.parse(line) as { msg: string }).msg);
      },
    },
  );
  return { logger, warnings };
}

describe('ServiceNotifier', () => {
  it('sends each message as KEY=VALUE lines in one datagram', async () => {
    const socket = NotifySocket.open();
    opened.push(socket);
    const { logger, warnings } = recordingLogger();
    const notifier = new ServiceNotifier(logger, { NOTIFY_SOCKET: socket.path });
    expect(notifier.enabled).toBe(true);
    notifier.ready('2 guests\nattached');
    notifier.reloading();
    notifier.mainPid(4242);
    notifier.watchdog();
    notifier.stopping();
    await socket.waitFor('STOPPING');
    expect(socket.messages.map((m) => m.raw)).toEqual([
      'READY=1\nSTATUS=2 guests attached\n',
      expect.stringMatching(/^RELOADING=1\nMONOTONIC_USEC=\d+\nSTATUS=reloading the configuration\n$/),
      'MAINPID=4242\n',
      'WATCHDOG=1\n',
      'STOPPING=1\nSTATUS=stopping\n',
    ]);
    const sentUsec = BigInt(socket.with('RELOADING')[0]?.fields['MONOTONIC_USEC'] ?? '0');
    expect(sentUsec).toBeGreaterThan(0n);
    expect(sentUsec).toBeLessThanOrEqual(monotonicUsec());
    expect(warnings).toEqual([]);
    notifier.close();
  });

  it('does nothing without NOTIFY_SOCKET, and warns once for an abstract socket it cannot address', async () => {
    const { logger, warnings } = recordingLogger();
    const off = new ServiceNotifier(logger, {});
    expect(off.enabled).toBe(false);
    await off.send({ READY: 1 });
    expect(warnings).toEqual([]);
    const abstract = new ServiceNotifier(logger, { NOTIFY_SOCKET: '@consoled-test' });
    expect(abstract.enabled).toBe(false);
    abstract.ready();
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toContain('@consoled-test');
  });

  it('never throws when the socket is gone: one warning for all the failed sends', async () => {
    const { logger, warnings } = recordingLogger();
    const notifier = new ServiceNotifier(logger, { NOTIFY_SOCKET: '/nonexistent/notify.sock' });
    for (let i = 0; i < 5; i++) await notifier.send({ WATCHDOG: 1 });
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toContain('/nonexistent/notify.sock');
    notifier.close();
  });
});

describe('watchdogUsec', () => {
  it('is on for a positive WATCHDOG_USEC meant for this process', () => {
    expect(watchdogUsec({ WATCHDOG_USEC: '30000000' }, 100)).toBe(30_000_000);
    expect(watchdogUsec({ WATCHDOG_USEC: '30000000', WATCHDOG_PID: '100' }, 100)).toBe(30_000_000);
  });

  it('is off when unset, not a positive integer, or meant for another pid', () => {
    expect(watchdogUsec({}, 100)).toBeNull();
    expect(watchdogUsec({ WATCHDOG_USEC: '0' }, 100)).toBeNull();
    expect(watchdogUsec({ WATCHDOG_USEC: 'soon' }, 100)).toBeNull();
    expect(watchdogUsec({ WATCHDOG_USEC: '30000000', WATCHDOG_PID: '101' }, 100)).toBeNull();
  });
});
