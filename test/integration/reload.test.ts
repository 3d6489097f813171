/**
 * Reloading the configuration of a running daemon (README "Reload", docs/design.md
 * "Service lifecycle"), black-box on the built daemon: declared guests added and removed
 * by a reload; a changed rate limit applied to a running guest; a field that needs a
 * restart refused by name (RELOAD_REFUSED); an invalid file refused by name (BAD_CONFIG)
 * with the configuration in force kept; SIGHUP and `consolectl reload` doing the same.
 * Throughout, a guest whose declaration never changes keeps its one connection and
 * loses no byte of its counter stream.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  CounterFlood,
  checkCounterLog,
  closeAllPeers,
  type DaemonHandle,
  readWholeLog,
  runConsolectl,
  SocketPeer,
  startDaemon,
  stopAllDaemons,
} from '../support/daemon.js';
import { freePort } from '../support/free-port.js';
import { removeTmpDirs } from '../support/tmp.js';
import { waitFor } from '../support/wait.js';

type Json = Record<string, unknown>;
interface Outcome {
  result: string;
  fields: string[];
  attached: string[];
  detached: string[];
  replaced: string[];
  retuned: string[];
  failed: unknown[];
}

let d: DaemonHandle;
let steady: SocketPeer;
let flood: CounterFlood;
let other: SocketPeer;

const steadyGuest = () => ({
  id: 'vm-steady',
  source: { type: 'tcp', host: '127.0.0.1', port: steady.port },
});
const otherGuest = (extra: Json = {}) => ({
  id: 'vm-other',
  source: { type: 'tcp', host: '127.0.0.1', port: other.port },
  ...extra,
});

async function reload(patch: Json, expectStatus = 200): Promise<Json> {
  await d.reconfigure(patch);
  const res = await d.api('POST', '/v1/reload');
  const body = (await res.json()) as Json;
  expect(res.status, JSON.stringify(body)).toBe(expectStatus);
  return body;
}

async function status(id: string): Promise<Json> {
  return d.json('GET', `/v1/guests/${id}`);
}

beforeAll(async () => {
  steady = await SocketPeer.listen();
  other = await SocketPeer.listen();
  flood = new CounterFlood(steady, { bytesPerSec: 20_000 });
  d = await startDaemon({ config: { guests: [steadyGuest()] } });
  await steady.waitForConnections(1);
});

afterAll(async () => {
  await stopAllDaemons();
  await closeAllPeers();
  await removeTmpDirs();
});

describe('reload', () => {
  it('attaches a guest the file now declares, and detaches it when the file drops it', async () => {
    const added = (await reload({ guests: [steadyGuest(), otherGuest()] })) as unknown as Outcome;
    expect(added).toMatchObject({
      result: 'reloaded',
      fields: ['guests'],
      attached: ['vm-other'],
      detached: [],
    });
    expect(await status('vm-other')).toMatchObject({ declared: true });
    await other.waitForConnections(1);

    const removed = (await reload({ guests: [steadyGuest()] })) as unknown as Outcome;
    expect(removed).toMatchObject({ attached: [], detached: ['vm-other'] });
    expect((await d.api('GET', '/v1/guests/vm-other')).status).toBe(404);

    const again = (await reload({})) as unknown as Outcome;
    expect(again).toMatchObject({ result: 'unchanged', fields: [] });
  });

  it('applies a changed default rate limit to the running guest without reconnecting it', async () => {
    expect(await status('vm-steady')).toMatchObject({ rateLimit: { bytesPerSec: 256 * 1024 } });
    const out = (await reload({
      defaults: { rateLimit: { bytesPerSec: 1000, burstBytes: 2000 } },
    })) as unknown as Outcome;
    expect(out.fields).toEqual(['defaults.rateLimit.burstBytes', 'defaults.rateLimit.bytesPerSec']);
    expect(await status('vm-steady')).toMatchObject({ rateLimit: { bytesPerSec: 1000, burstBytes: 2000 } });
    // The flood writes 20 kB/s: the new limit drops most of it.
    await waitFor('the new limit to suppress bytes', async () => {
      const s = (await status('vm-steady')) as { drops: { suppressedBytes: number } };
      return s.drops.suppressedBytes > 0;
    });
    const back = (await reload({
      defaults: { rateLimit: { bytesPerSec: 256 * 1024, burstBytes: 4 * 1024 * 1024 } },
    })) as unknown as Outcome;
    expect(back.result).toBe('reloaded');
    expect(await status('vm-steady')).toMatchObject({ rateLimit: { bytesPerSec: 256 * 1024 } });
  });

  it('retunes a declared guest whose own rateLimit changed, in place', async () => {
    await reload({ guests: [steadyGuest(), otherGuest()] });
    await other.waitForConnections(1);
    const connectsBefore = ((await status('vm-other')) as { chardev: { connects: number } }).chardev.connects;
    const out = (await reload({
      guests: [steadyGuest(), otherGuest({ rateLimit: { bytesPerSec: 500, burstBytes: 700 } })],
    })) as unknown as Outcome;
    expect(out).toMatchObject({ retuned: ['vm-other'], replaced: [], attached: [] });
    const s = (await status('vm-other')) as { rateLimit: Json; chardev: { connects: number } };
    expect(s.rateLimit).toEqual({ bytesPerSec: 500, burstBytes: 700 });
    expect(s.chardev.connects).toBe(connectsBefore);
    await reload({ guests: [steadyGuest()] });
  });

  it('refuses a field that needs a restart, naming it, and keeps the configuration in force', async () => {
    const body = (await reload({ hostId: 'another-host', guests: [steadyGuest(), otherGuest()] }, 409)) as {
      error: { code: string; message: string; details: { fields: string[] } };
    };
    expect(body.error.code).toBe('RELOAD_REFUSED');
    expect(body.error.details.fields).toEqual(['hostId']);
    expect(body.error.message).toContain('hostId');
    // Nothing of the refused file was applied: the new guest is not attached.
    expect((await d.api('GET', '/v1/guests/vm-other')).status).toBe(404);
    await d.reconfigure({ hostId: 'test-host', guests: [steadyGuest()] });
  });

  it('refuses an invalid file, naming the field, and keeps the configuration in force', async () => {
    const body = (await reload(
      {
        defaults: { rateLimit: { bytesPerSec: -5, burstBytes: 2000 } },
        guests: [steadyGuest(), otherGuest()],
      },
      500,
    )) as { error: { code: string; message: string } };
    expect(body.error.code).toBe('BAD_CONFIG');
    expect(body.error.message).toContain('defaults.rateLimit.bytesPerSec');
    expect((await d.api('GET', '/v1/guests/vm-other')).status).toBe(404);
    expect(await status('vm-steady')).toMatchObject({ rateLimit: { bytesPerSec: 256 * 1024 } });
    await d.reconfigure({
      defaults: { rateLimit: { bytesPerSec: 256 * 1024, burstBytes: 4 * 1024 * 1024 } },
    });
  });

  it('reloads on SIGHUP', async () => {
    await d.reconfigure({ guests: [steadyGuest(), otherGuest()] });
    d.proc.kill('SIGHUP');
    await waitFor(
      'SIGHUP to attach vm-other',
      async () => (await d.api('GET', '/v1/guests/vm-other')).status === 200,
    );
    await d.reconfigure({ guests: [steadyGuest()] });
    d.proc.kill('SIGHUP');
    await waitFor(
      'SIGHUP to detach vm-other',
      async () => (await d.api('GET', '/v1/guests/vm-other')).status === 404,
    );
    expect(d.running).toBe(true);
  });

  it('consolectl reload returns the outcome, and fails with the refusal', async () => {
    await d.reconfigure({ guests: [steadyGuest(), otherGuest()] });
    const ok = await runConsolectl(d, ['reload'], { timeoutMs: 60_000 });
    expect(ok.code, ok.stderr).toBe(0);
    expect(JSON.parse(ok.stdout.toString('utf8'))).toMatchObject({ attached: ['vm-other'] });
    // Returned once done: the guest is attached already.
    expect((await d.api('GET', '/v1/guests/vm-other')).status).toBe(200);

    await d.reconfigure({ stateDir: '/nonexistent/elsewhere' });
    const refused = await runConsolectl(d, ['reload'], { timeoutMs: 60_000 });
    expect(refused.code).toBe(1);
    expect(refused.stderr).toContain('RELOAD_REFUSED');
    expect(refused.stderr).toContain('stateDir');
    await d.reconfigure({ stateDir: d.stateDir, guests: [steadyGuest()] });
    expect((await d.api('POST', '/v1/reload')).status).toBe(200);
  }, 180_000);

  it('consolectl reload --config finds the daemon and its token in the file, as ExecReload= runs it', async () => {
    const port = await freePort();
    const other = await startDaemon({ config: { listen: { host: '0.0.0.0', port } } });
    // --url and --token (which runConsolectl passes) point elsewhere: the file decides.
    const r = await runConsolectl(
      { url: 'http://127.0.0.1:1', token: 'wrong-token-wrong-token' },
      ['reload', '--config', other.configPath],
      { timeoutMs: 60_000 },
    );
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout.toString('utf8'))).toMatchObject({ result: 'unchanged' });
    await other.stop();
  }, 180_000);

  it('left the guest whose declaration never changed untouched: one connection, no byte lost', async () => {
    const s = (await status('vm-steady')) as { chardev: { connects: number }; boot: number };
    expect(s.chardev.connects).toBe(1);
    expect(steady.connections).toBe(1);
    flood.stop();
    const sent = flood.sentBytes;
    await waitFor('the log to hold what was sent', async () => {
      // Read, and written out: the writer gathers small writes for a few ms.
      const st = (await status('vm-steady')) as {
        chardev: { bytesIn: number };
        offset: number;
        flushedOffset: number;
      };
      return st.chardev.bytesIn >= sent && st.flushedOffset >= st.offset;
    });
    const log = await readWholeLog(d, 'vm-steady');
    const report = checkCounterLog(log.bytes);
    // One boot, no reattach: the reloads never touched the connection. The only gaps in
    // the numbering are the ones the lowered rate limit made, each behind its marker.
    expect(report.markers.filter((m) => !m.includes('suppressed by rate limit'))).toEqual([
      expect.stringMatching(/^boot 1 /),
    ]);
    for (const jump of report.jumps) expect(jump.marker).toContain('suppressed by rate limit');
    expect(report.lines.at(-1)).toBe(flood.next - 1);
  });
});
