/**
 * Memory that stays flat under churn (issue 9, item 6): viewers that join and leave
 * (token in the header or the first frame; leaving with a close frame or by dropping
 * the connection), tokens issued (single-use ones spent, then replayed and refused),
 * log followers that go away, and guests attached under new names and detached. After
 * many such cycles the daemon holds what it held after the first few: the same
 * timers, sockets and file descriptors, no viewer or connection left counted, and no
 * metric line naming a guest that is gone. The heap itself is looked at by
 * test/bench/heap-churn.mjs (snapshots); this test checks what leaks with it.
 */
import { readdirSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ConsoleViewer } from '../support/console-viewer.js';
import {
  closeAllPeers,
  type InProcessDaemon,
  SocketPeer,
  startInProcessDaemon,
  stopAllInProcessDaemons,
} from '../support/daemon.js';
import { removeTmpDirs } from '../support/tmp.js';
import { waitFor } from '../support/wait.js';

const WARMUP_CYCLES = 5;
const CYCLES = 40;
/** What the test process itself may open or close meanwhile (fetch's pooled sockets). */
const SLACK = 4;

let d: InProcessDaemon;
let steady: SocketPeer;
let churnPeer: SocketPeer;

beforeAll(async () => {
  steady = await SocketPeer.listen();
  churnPeer = await SocketPeer.listen();
  d = await startInProcessDaemon({
    config: { guests: [{ id: 'steady', source: { type: 'tcp', host: '127.0.0.1', port: steady.port } }] },
  });
  await waitFor('steady guest connected', () => steady.current !== null);
});

afterAll(async () => {
  await stopAllInProcessDaemons();
  await closeAllPeers();
  await removeTmpDirs();
});

async function issue(singleUse: boolean): Promise<string> {
  const res = await d.api('POST', '/v1/guests/steady/tokens', { mode: 'ro', ttl: '10m', singleUse });
  expect(res.status).toBe(201);
  return ((await res.json()) as { token: string }).token;
}

let n = 0;
async function cycle(): Promise<void> {
  const i = n++;
  steady.current?.write(`line ${i}\r\n`);
  const singleUse = i % 2 === 0;
  const token = await issue(singleUse);
  const viewer = await ConsoleViewer.connect(d.url, 'steady', { token, header: i % 3 === 0, mode: 'ro' });
  if (i % 2 === 0) await viewer.close();
  else {
    viewer.ws.terminate();
    await viewer.closed;
  }
  if (singleUse) {
    const refused = await ConsoleViewer.refusal(d.url, 'steady', { token, header: true, mode: 'ro' });
    expect(refused.kind === 'http' ? refused.code : refused.error).toBe('TOKEN_REUSED');
  }
  await issue(!singleUse); // never used
  const follow = new AbortController();
  const res = await fetch(`${d.url}/v1/guests/steady/log?tail=64&follow=1`, {
    headers: { authorization: `Bearer ${d.token}` },
    signal: follow.signal,
  });
  expect(res.status).toBe(200);
  await res.body?.getReader().read();
  follow.abort();
  const id = `churn-${i}`;
  expect(
    (
      await d.api('PUT', `/v1/guests/${id}?waitConnectedMs=5000`, {
        source: { type: 'tcp', host: '127.0.0.1', port: churnPeer.port },
      })
    ).status,
  ).toBe(201);
  expect((await d.api('DELETE', `/v1/guests/${id}`)).status).toBe(200);
}

/** What the process holds that a leak would grow: active handles and timers by kind, and fds. */
function holdings(): Map<string, number> {
  const counts = new Map<string, number>();
  for (const kind of process.getActiveResourcesInfo()) counts.set(kind, (counts.get(kind) ?? 0) + 1);
  counts.set('fd', readdirSync('/proc/self/fd').length);
  return counts;
}

async function metricsText(): Promise<string> {
  return (await d.api('GET', '/metrics')).text();
}

function gauge(text: string, name: string): number {
  return [...text.matchAll(new RegExp(`^${name}(?:\\{[^}]*\\})? (\\S+)$`, 'gm'))].reduce(
    (sum, m) => sum + Number(m[1]),
    0,
  );
}

describe('churn', () => {
  it('holds no more timers, sockets, fds, viewers or metric lines after many join/leave, token and attach/detach cycles', async () => {
    for (let k = 0; k < WARMUP_CYCLES; k++) await cycle();
    const settled = async () => {
      const text = await metricsText();
      return gauge(text, 'consoled_console_connections') === 0 &&
        gauge(text, 'consoled_console_pending_connections') === 0 &&
        gauge(text, 'consoled_console_viewers') === 0
        ? text
        : false;
    };
    const baselineMetrics = await waitFor('viewers gone after the warm-up', settled);
    // Closing connections finish on timers (close grace); let them run out first.
    const baseline = await waitFor(
      'the warm-up settled',
      async () => {
        const a = holdings();
        await new Promise((r) => setTimeout(r, 2500));
        const b = holdings();
        return [...b].every(([k, v]) => (a.get(k) ?? 0) >= v) ? b : false;
      },
      { timeoutMs: 20_000 },
    );

    for (let k = 0; k < CYCLES; k++) await cycle();

    const text = await waitFor('viewers gone after the cycles', settled);
    expect(text.split('\n').filter((l) => /guest="churn-/.test(l))).toEqual([]);
    // What the soak (test/bench/soak.mjs) samples besides RSS.
    expect(gauge(text, 'consoled_process_heap_used_bytes')).toBeGreaterThan(0);
    expect(gauge(text, 'consoled_process_external_memory_bytes')).toBeGreaterThan(0);
    expect(text.split('\n').length).toBe(baselineMetrics.split('\n').length);
    const grown = await waitFor(
      'holdings back to the warm-up level',
      () => {
        const now = holdings();
        const over = [...now].filter(([k, v]) => v > (baseline.get(k) ?? 0) + SLACK);
        return over.length === 0 ? over : false;
      },
      { timeoutMs: 20_000 },
    ).catch(() => {
      const now = holdings();
      return [...now].filter(([k, v]) => v > (baseline.get(k) ?? 0) + SLACK);
    });
    expect(Object.fromEntries(grown), `grew by more than ${SLACK} over ${CYCLES} cycles`).toEqual({});
  }, 120_000);
});
