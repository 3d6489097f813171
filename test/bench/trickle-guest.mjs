// A guest that prints steadily: a TCP server (QEMU's `server=on` chardev stand-in) that
// writes `chunkBytes` chunks at `bytesPerSec` to its first connection, Nagle off so each
// chunk travels on its own, as a serial console's output reaches QEMU's socket.
import { createServer } from 'node:net';

export async function trickleServer({ bytesPerSec, chunkBytes }) {
  const chunk = Buffer.alloc(chunkBytes);
  for (let i = 0; i < chunk.length; i++) chunk[i] = 32 + (i % 90);
  chunk[chunk.length - 1] = 10;
  let sent = 0;
  let timer = null;
  const server = createServer((socket) => {
    socket.on('error', () => undefined);
    if (timer) return;
    socket.setNoDelay(true);
    const t0 = performance.now();
    timer = setInterval(() => {
      const due = ((performance.now() - t0) / 1000) * bytesPerSec;
      while (sent + chunkBytes <= due) {
        socket.write(chunk);
        sent += chunkBytes;
      }
    }, 1);
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  return {
    port: server.address().port,
    get sent() {
      return sent;
    },
    close: () => {
      if (timer) clearInterval(timer);
      server.close();
    },
  };
}
