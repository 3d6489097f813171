import { createServer } from 'node:net';

/**
 * A TCP port that was free a moment ago: listens on port 0, reads the port the kernel chose,
 * and closes. Another process may take it before the caller binds it; tests that hand the
 * port to a child (QEMU, redis-server) accept that small race.
 */
export function freePort(host = '127.0.0.1'): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.unref();
    server.once('error', reject);
    server.listen({ host, port: 0, exclusive: true }, () => {
      const address = server.address();
      if (address === null || typeof address === 'string') {
        server.close();
        reject(new Error(`unexpected server address ${String(address)}`));
        return;
      }
      const { port } = address;
      server.close((err) => (err ? reject(err) : resolve(port)));
    });
  });
}
