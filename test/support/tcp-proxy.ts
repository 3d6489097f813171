/**
 * A real TCP forwarder standing in for a service address that moves (a virtual IP or
 * a DNS name after a Redis failover): clients connect to the proxy's port, which
 * forwards to the current upstream; `switchTo` closes every connection and sends new
 * ones to another server.
 */
import { connect, createServer, type Server, type Socket } from 'node:net';

export class TcpProxy {
  private readonly sockets = new Set<Socket>();

  private constructor(
    private readonly server: Server,
    private upstream: { host: string; port: number },
  ) {}

  static async start(upstream: { host: string; port: number }): Promise<TcpProxy> {
    let proxy: TcpProxy | undefined;
    const server = createServer((client) => proxy?.accept(client));
    proxy = new TcpProxy(server, upstream);
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    return proxy;
  }

  get port(): number {
    const address = this.server.address();
    if (address === null || typeof address === 'string') throw new Error('proxy not listening');
    return address.port;
  }

  get url(): string {
    return `redis://127.0.0.1:${this.port}`;
  }

  /** New connections go to `upstream`; open ones are closed (the clients reconnect). */
  switchTo(upstream: { host: string; port: number }): void {
    this.upstream = upstream;
    for (const s of this.sockets) s.destroy();
  }

  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private accept(client: Socket): void {
    const server = connect(this.upstream.port, this.upstream.host);
    this.sockets.add(client);
    this.sockets.add(server);
    const close = (): void => {
      client.destroy();
      server.destroy();
      this.sockets.delete(client);
      this.sockets.delete(server);
    };
    client.on('error', close).on('close', close);
    server.on('error', close).on('close', close);
    client.pipe(server);
    server.pipe(client);
  }
}
