// Worker thread of the replication benchmarks: the guests. It serves one chardev per
// guest (QEMU `server=on` stand-ins) and, once told to start, writes each guest's
// share of bytes every tick; the first line of every write carries the monotonic time
// (process.hrtime, shared by every thread and process of the machine) it was written.
import { createServer } from 'node:net';
import { parentPort, workerData } from 'node:worker_threads';

const { guests, bytesPerSec, lineBytes, tickMs } = workerData;
const sockets = new Array(guests).fill(null);
const ports = [];
for (let i = 0; i < guests; i++) {
  const server = createServer((s) => {
    s.setNoDelay(true);
    s.on('error', () => undefined);
    sockets[i] = s;
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  ports.push(server.address().port);
}
const padding = `${'.'.repeat(lineBytes - 1)}\n`;
let written = 0;
let timer = null;
parentPort.on('message', (msg) => {
  if (msg === 'start') {
    const perTick = (bytesPerSec * tickMs) / 1000;
    const credit = sockets.map(() => Math.random() * perTick);
    timer = setInterval(() => {
      for (let i = 0; i < guests; i++) {
        const s = sockets[i];
        if (!s) continue;
        credit[i] += perTick;
        const lines = Math.floor(credit[i] / lineBytes);
        if (lines === 0) continue;
        credit[i] -= lines * lineBytes;
        const stamp = `T${process.hrtime.bigint()} `;
        const out = `${stamp}${padding.slice(stamp.length)}${padding.repeat(lines - 1)}`;
        s.write(out);
        written += out.length;
      }
    }, tickMs);
  } else if (msg === 'stop') {
    clearInterval(timer);
    parentPort.postMessage({ written });
    for (const s of sockets) s?.destroy();
    process.exit(0);
  }
});
parentPort.postMessage({ ports });
