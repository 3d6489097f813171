import { it } from 'vitest';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { CounterFlood, COUNTER_LINE_BYTES, SocketPeer, startDaemon, stopAllDaemons, readLog } from './support/daemon.js';
import { waitFor } from './support/wait.js';
function analyze(dir: string, label: string) {
  const names = readdirSync(dir).filter((n) => n.startsWith('console.log'));
  const idx = (n: string) => (n === 'console.log' ? 0 : Number(n.split('.')[2]));
  names.sort((a, b) => idx(b) - idx(a)); // oldest first
  const out: string[] = [];
  for (const n of names) {
    const b = readFileSync(dir + '/' + n).toString('latin1');
    const first = /L(\d{10})/.exec(b)?.[1];
    const lastM = [...b.matchAll(/L(\d{10})/g)].pop()?.[1];
    out.push(`${n}[ino ${statSync(dir + '/' + n).ino % 100000} size ${b.length} lines ${Number(first)}..${Number(lastM)}]`);
  }
  console.log(label, '\n', out.join('\n '), '\n', readFileSync(dir + '/log-state.json', 'utf8'));
}
it.each([1,2,3,4,5])('dbg %i', async () => {
  const peer = await SocketPeer.listen();
  const BURST = Math.floor((512 * 1024) / COUNTER_LINE_BYTES);
  const flood = new CounterFlood(peer, { linesPerConnection: BURST });
  const d = await startDaemon({ config: { defaults: { rateLimit: { bytesPerSec: 0, burstBytes: 1 } } } });
  await d.json('PUT', '/v1/guests/flood', { source: { type: 'tcp', host: '127.0.0.1', port: peer.port }, rotation: { maxFileBytes: 16384, maxFiles: 200 } });
  const dir = `${d.stateDir}/guests/flood`;
  for (let k = 1; k <= 3; k++) {
    await peer.waitForConnections(k);
    const base = (await d.json<any>('GET', '/v1/guests/flood')).flushedOffset;
    const t = base + Math.floor((0.2 + Math.random() * 0.6) * 512 * 1024);
    await waitFor('x', async () => (await d.json<any>('GET', '/v1/guests/flood')).flushedOffset > t, { intervalMs: 5 });
    await d.kill();
    analyze(dir, `AFTER KILL ${k}`);
    await d.start();
    const s = await d.json<any>('GET', '/v1/guests/flood');
    console.log('STATUS after start', k, s.oldestOffset, s.flushedOffset, s.offset);
  }
  await peer.waitForConnections(4);
  await waitFor('burst', () => flood.burstsDone >= 1);
  await new Promise((r) => setTimeout(r, 500));
  const st = await d.json<any>('GET', '/v1/guests/flood');
  const r = await readLog(d, 'flood', { start: 0 });
  console.log('FINAL', st.oldestOffset, st.flushedOffset, r.start, r.next, JSON.stringify(r.bytes.subarray(0, 60).toString('latin1')));
  await d.stop();
  analyze(dir, 'AFTER STOP');
  await stopAllDaemons();
}, 60000);
