/**
 * The TLS listener (`listen.tls`, README "TLS") of the built daemon, with certificates
 * the test makes: the API and the console over https and wss with the certificate
 * checked; the Origin rule compares the https scheme; a reload serves a renewed
 * certificate to new connections and refuses one that does not load (keeping the
 * old); adding or removing the listener needs a restart; an upgrade hands the TLS
 * listener over like the plain one.
 */
import { once } from 'node:events';
import { rm, writeFile } from 'node:fs/promises';
import { request } from 'node:https';
import { connect as connectTls, type TLSSocket } from 'node:tls';
import { afterAll, describe, expect, it } from 'vitest';
import { WebSocket } from 'ws';
import { type DaemonHandle, startDaemon, stopAllDaemons } from '../support/daemon.js';
import { freePort } from '../support/free-port.js';
import { makeTestCert, type TestCert } from '../support/tls-cert.js';
import { removeTmpDirs, tmpDir } from '../support/tmp.js';
import { waitFor } from '../support/wait.js';

afterAll(async () => {
  await stopAllDaemons();
  await removeTmpDirs();
});

const SECRET = 'tls-test-console-secret-0123456789abcdef';

interface Answer {
  status: number;
  body: string;
  fingerprint256: string;
}

/** An https request to the daemon's TLS port, trusting `ca` only (the name checked is `localhost`). */
function httpsGet(port: number, path: string, ca: Buffer, token?: string): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = request(
      {
        host: '127.0.0.1',
        servername: 'localhost',
        port,
        path,
        ca,
        agent: false,
        headers: token ? { authorization: `Bearer ${token}` } : {},
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () =>
          resolve({
            status: res.statusCode ?? 0,
            body: Buffer.concat(chunks).toString(),
            fingerprint256: (res.socket as TLSSocket).getPeerCertificate().fingerprint256,
          }),
        );
      },
    );
    req.on('error', reject);
    req.end();
  });
}

async function tlsDaemon(): Promise<{ d: DaemonHandle; port: number; cert: TestCert; dir: string }> {
  const dir = tmpDir('tls');
  const cert = makeTestCert(dir);
  const port = await freePort();
  const d = await startDaemon({
    config: {
      listen: { tls: { port, cert: cert.cert, key: cert.key } },
      console: { tokenSecret: SECRET },
    },
  });
  return { d, port, cert, dir };
}

async function viewerToken(d: DaemonHandle, guest: string): Promise<string> {
  const res = await d.api('POST', `/v1/guests/${guest}/tokens`, { mode: 'ro', ttl: '10m' });
  expect(res.status).toBe(201);
  return ((await res.json()) as { token: string }).token;
}

/** Opens a wss console; resolves with the first message, or the close code and reason. */
function wssConsole(port: number, guest: string, token: string, origin: string, ca: Buffer) {
  return new Promise<{ first?: Record<string, unknown>; close?: { code: number; reason: string } }>(
    (resolve, reject) => {
      const ws = new WebSocket(`wss://localhost:${port}/v1/guests/${guest}/console`, {
        ca,
        origin,
        headers: { authorization: `Bearer ${token}` },
      });
      ws.once('message', (data) => {
        resolve({ first: JSON.parse(String(data)) as Record<string, unknown> });
        ws.close();
      });
      ws.on('unexpected-response', (_req, res) => {
        let body = '';
        res.on('data', (c: Buffer) => (body += c));
        res.on('end', () => resolve({ close: { code: res.statusCode ?? 0, reason: body } }));
      });
      ws.on('close', (code, reason) => resolve({ close: { code, reason: String(reason) } }));
      ws.on('error', (err) => {
        if (!String(err).includes('Unexpected server response')) reject(err);
      });
    },
  );
}

describe('the TLS listener', () => {
  it('serves the API over https with its certificate, beside the plain listener', async () => {
    const { d, port, cert } = await tlsDaemon();
    const health = await httpsGet(port, '/healthz', cert.pem);
    expect(health.status).toBe(200);
    expect(health.fingerprint256).toBe(cert.fingerprint256);
    expect((await httpsGet(port, '/v1/guests', cert.pem)).status).toBe(401);
    expect((await httpsGet(port, '/v1/guests', cert.pem, d.token)).status).toBe(200);
    // The plain listener is unchanged (the host's own tools use it).
    expect((await d.api('GET', '/v1/guests')).status).toBe(200);
    // Browsers are sent to the TLS listener: it is the console URL this host advertises.
    const hosts = (await (await d.api('GET', '/v1/hosts')).json()) as {
      hosts: Array<{ consoleUrl: string }>;
    };
    expect(hosts.hosts[0]?.consoleUrl).toBe(`https://127.0.0.1:${port}`);
    // A client that does not trust the certificate is refused by its own TLS check.
    const other = makeTestCert(tmpDir('other'), 'other');
    await expect(httpsGet(port, '/healthz', other.pem)).rejects.toThrow();
  });

  it('serves the console over wss; the Origin rule compares the https scheme', async () => {
    const { d, port, cert } = await tlsDaemon();
    const put = await d.api('PUT', '/v1/guests/g1', {
      source: { type: 'exec', command: ['/bin/sh', '-c', 'echo over-tls; exec sleep 600'] },
    });
    expect(put.status).toBe(201);
    const same = await wssConsole(
      port,
      'g1',
      await viewerToken(d, 'g1'),
      `https://localhost:${port}`,
      cert.pem,
    );
    expect(same.first?.['type']).toBe('welcome');
    // The same host and port over http is another origin.
    const plainOrigin = await wssConsole(
      port,
      'g1',
      await viewerToken(d, 'g1'),
      `http://localhost:${port}`,
      cert.pem,
    );
    expect(plainOrigin.close?.code).toBe(403);
    expect(plainOrigin.close?.reason).toContain('ORIGIN_FORBIDDEN');
  });

  it('an upload refused over TLS gets its 401 though the client goes on sending, and the connection is closed', async () => {
    const { d, port, cert } = await tlsDaemon();
    const clients = await Promise.all(
      Array.from({ length: 40 }, async () => {
        const socket = connectTls({ host: '127.0.0.1', port, servername: 'localhost', ca: cert.pem });
        await once(socket, 'secureConnect');
        const c = { socket, received: '', closedAtMs: 0, feeder: null as NodeJS.Timeout | null };
        socket.setEncoding('latin1');
        socket.on('data', (chunk: string) => {
          c.received += chunk;
        });
        socket.on('error', () => undefined);
        socket.on('close', () => {
          c.closedAtMs = performance.now();
          if (c.feeder) clearInterval(c.feeder);
        });
        socket.write(
          'PUT /v1/guests/x HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n',
        );
        c.feeder = setInterval(() => socket.write('1\r\n \r\n'), 5);
        return c;
      }),
    );
    try {
      await waitFor('every refused TLS client to be closed', () => clients.every((c) => c.closedAtMs > 0));
      expect(
        clients.filter((c) => !c.received.startsWith('HTTP/1.1 401 ')).map((c) => c.received.slice(0, 40)),
      ).toEqual([]);
    } finally {
      for (const c of clients) {
        if (c.feeder) clearInterval(c.feeder);
        c.socket.destroy();
      }
    }
    await d.stop();
  });

  it('a reload serves a renewed certificate to new connections; one that does not load is refused and the old stays', async () => {
    const { d, port, cert, dir } = await tlsDaemon();
    const renewed = makeTestCert(dir); // the same paths, new contents (as certbot renews)
    expect(renewed.fingerprint256).not.toBe(cert.fingerprint256);
    const res = await d.api('POST', '/v1/reload');
    expect(res.status).toBe(200);
    const outcome = (await res.json()) as { tls?: { fingerprint256: string } };
    expect(outcome.tls?.fingerprint256).toBe(renewed.fingerprint256);
    expect((await httpsGet(port, '/healthz', renewed.pem)).fingerprint256).toBe(renewed.fingerprint256);

    await writeFile(renewed.cert, 'not a certificate\n');
    const bad = await d.api('POST', '/v1/reload');
    expect(bad.status).toBe(500);
    expect(((await bad.json()) as { error: { code: string; message: string } }).error).toMatchObject({
      code: 'BAD_CONFIG',
      message: expect.stringContaining('listen.tls.cert'),
    });
    expect((await httpsGet(port, '/healthz', renewed.pem)).fingerprint256).toBe(renewed.fingerprint256);
    await rm(renewed.key);
    const gone = await d.api('POST', '/v1/reload');
    expect(gone.status).toBe(500);
    expect((await httpsGet(port, '/healthz', renewed.pem)).status).toBe(200);
  });

  it('adding or removing the TLS listener, or moving it, needs a restart', async () => {
    const { d, port } = await tlsDaemon();
    const config = JSON.parse(JSON.stringify(d.config)) as { listen: Record<string, unknown> };
    const { tls, ...withoutTls } = config.listen;
    await writeFile(d.configPath, JSON.stringify({ ...config, listen: withoutTls }));
    const removed = await d.api('POST', '/v1/reload');
    expect(removed.status).toBe(409);
    expect(((await removed.json()) as { error: { code: string; message: string } }).error.message).toContain(
      'listen.tls',
    );
    await writeFile(
      d.configPath,
      JSON.stringify({
        ...config,
        listen: { ...config.listen, tls: { ...(tls as object), port: port + 1 } },
      }),
    );
    const moved = await d.api('POST', '/v1/reload');
    expect(moved.status).toBe(409);
    expect(((await moved.json()) as { error: { message: string } }).error.message).toContain(
      'listen.tls.port',
    );
  });

  it('an upgrade hands the TLS listener over: the same port answers from the successor', async () => {
    const { d, port, cert } = await tlsDaemon();
    const before = d.pid;
    const answer = await d.upgrade();
    expect(answer.toPid).not.toBe(before);
    const health = await httpsGet(port, '/healthz', cert.pem);
    expect(health.status).toBe(200);
    expect(health.fingerprint256).toBe(cert.fingerprint256);
  });

  it('refuses to start with a key that is not the certificate’s, saying which file', async () => {
    const dir = tmpDir('tls-mismatch');
    const a = makeTestCert(dir, 'a');
    const b = makeTestCert(dir, 'b');
    const port = await freePort();
    await expect(
      startDaemon({ config: { listen: { tls: { port, cert: a.cert, key: b.key } } } }),
    ).rejects.toThrow(/BAD_CONFIG.*listen\.tls\.key/);
  });
});
