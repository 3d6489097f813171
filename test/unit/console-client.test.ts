// The interactive console client (consolectl console) against a real ws server speaking the protocol.
import { createServer, type IncomingMessage } from 'node:http';
import type { AddressInfo } from 'node:net';
import { PassThrough } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type WebSocket, WebSocketServer } from 'ws';
import { runConsoleClient } from '../../cli/console-client.js';
import { ERROR_CODES } from '../../common/errors.js';

interface Conn {
  ws: WebSocket;
  req: IncomingMessage;
  first: Promise<string | null>;
}
const conns: Conn[] = [];
let behaviour: (c: Conn) => void = () => {};
const http = createServer((_req, res) => {
  res.writeHead(400, { 'content-type': 'application/json' });
  res.end(JSON.stringify({ error: { code: 'BAD_GUEST_ID', message: 'nope' } }));
});
const wss = new WebSocketServer({ noServer: true });
http.on('upgrade', (req, socket, head) => {
  if (req.url?.startsWith('/bad')) {
    socket.end(
      'HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 51\r\nconnection: close\r\n\r\n{"error":{"code":"BAD_GUEST_ID","message":"nope!"}}',
    );
    return;
  }
  wss.handleUpgrade(req, socket, head, (ws) => {
    const c: Conn = { ws, req, first: Promise.resolve(null) };
    if (!req.headers.authorization) {
      c.first = new Promise((resolve) => ws.once('message', (d) => resolve(d.toString())));
    }
    conns.push(c);
    behaviour(c);
  });
});
let port = 0;
beforeAll(async () => {
  await new Promise<void>((r) => http.listen(0, '127.0.0.1', r));
  port = (http.address() as AddressInfo).port;
});
afterAll(async () => {
  for (const c of conns) c.ws.terminate();
  http.closeAllConnections();
  await new Promise((r) => http.close(r));
});

function tty() {
  const stdin = new PassThrough() as PassThrough & {
    isTTY: boolean;
    setRawMode: (b: boolean) => void;
    raw: boolean[];
  };
  stdin.isTTY = true;
  stdin.raw = [];
  stdin.setRawMode = (b) => {
    stdin.raw.push(b);
  };
  const stdout = new PassThrough();
  const stderr = new PassThrough();
  let out = '';
  let err = '';
  stdout.on('data', (d) => {
    out += d.toString('latin1');
  });
  stderr.on('data', (d) => {
    err += d.toString();
  });
  return { stdin, stdout, stderr, out: () => out, err: () => err };
}
async function until(p: () => boolean) {
  const t = Date.now();
  while (!p()) {
    if (Date.now() - t > 5000) throw new Error('timeout');
    await new Promise((r) => setTimeout(r, 10));
  }
}

const welcome = (writer: boolean) =>
  JSON.stringify({
    type: 'welcome',
    guest: 'g1',
    viewerId: 'v1',
    mode: 'rw',
    boot: 3,
    offset: 0,
    clamped: false,
    writer: writer ? { viewerId: 'v1', name: 'me' } : { viewerId: 'v9', name: 'alice' },
    viewers: 2,
    canTakeover: true,
    resizable: true,
  });

describe('runConsoleClient', () => {
  it('streams output, sends the writer keystrokes, leaves on ^] and restores the terminal', async () => {
    const got: Buffer[] = [];
    behaviour = (c) => {
      c.ws.send(welcome(true));
      c.ws.send(Buffer.from([0x00, 0xff, 0x1b, 0x5b, 0x41, 0x0d, 0x0a]));
      c.ws.on('message', (d, bin) => {
        if (bin) got.push(d as Buffer);
      });
    };
    const t = tty();
    const run = runConsoleClient({
      url: `ws://127.0.0.1:${port}/v1/guests/g1/console`,
      token: 'tok',
      mode: 'rw',
      from: 42,
      stdin: t.stdin,
      stdout: t.stdout,
      stderr: t.stderr,
    });
    await until(() => t.out().length >= 7);
    expect(Buffer.from(t.out(), 'latin1')).toEqual(Buffer.from([0x00, 0xff, 0x1b, 0x5b, 0x41, 0x0d, 0x0a]));
    const c = conns.at(-1)!;
    expect(c.req.headers.authorization).toBe('Bearer tok');
    expect(c.req.url).toBe('/v1/guests/g1/console?from=42&mode=rw');
    t.stdin.write('ls\r');
    await until(() => Buffer.concat(got).toString() === 'ls\r');
    t.stdin.write(Buffer.from('ab\x1dcd'));
    const res = await run;
    // `next`: where a resume would start, the welcome's offset plus the 7 bytes shown.
    expect(res).toEqual({ exitCode: 0, reason: 'escape', next: 7 });
    await until(() => Buffer.concat(got).toString() === 'ls\rab');
    expect(t.stdin.raw).toEqual([true, false]);
    expect(t.err()).toContain(
      '\r\n[consolectl] connected to g1 (boot 3, rw): you hold the writer lock. Escape character is ^]\r\n',
    );
  });

  it('as a watcher sends nothing, reports lock changes, skipped and guest messages', async () => {
    const got: Buffer[] = [];
    behaviour = (c) => {
      c.ws.send(welcome(false));
      c.ws.on('message', (d, bin) => {
        if (bin) got.push(d as Buffer);
      });
      setTimeout(() => {
        c.ws.send(JSON.stringify({ type: 'skipped', bytes: 100, offset: 500 }));
        c.ws.send(JSON.stringify({ type: 'guest', state: 'disconnected', reason: 'eof' }));
        c.ws.send(JSON.stringify({ type: 'lock', writer: { viewerId: 'v1' }, viewers: 2 }));
      }, 100);
    };
    const t = tty();
    const run = runConsoleClient({
      url: `ws://127.0.0.1:${port}/v1/guests/g1/console`,
      token: 'tok',
      mode: 'rw',
      stdin: t.stdin,
      stdout: t.stdout,
      stderr: t.stderr,
    });
    await until(() => t.err().includes('watching (writer: alice)'));
    t.stdin.write('x');
    await until(() => t.err().includes('alice holds the writer lock; keystrokes are not sent'));
    await until(() => t.err().includes('you hold the writer lock\r\n'));
    expect(t.err()).toContain('[consolectl] output too fast for this terminal: 100 bytes skipped\r\n');
    expect(t.err()).toContain('[consolectl] guest disconnected: eof\r\n');
    t.stdin.write('y');
    await until(() => got.length === 1);
    expect(Buffer.concat(got).toString()).toBe('y');
    t.stdin.end();
    expect(await run).toEqual({ exitCode: 0, reason: 'eof', next: 100 }); // the 100 skipped bytes count
  });

  it('sends an anonymous auth frame without a token, takes over with takeover:true, and sends its size', async () => {
    const texts: string[] = [];
    behaviour = (c) => {
      c.first.then(() => {
        c.ws.send(welcome(false));
        c.ws.on('message', (d, bin) => {
          if (!bin) texts.push(d.toString());
        });
      });
    };
    const t = tty();
    Object.assign(t.stdout, { isTTY: true, columns: 132, rows: 43 });
    const ac = new AbortController();
    const run = runConsoleClient({
      url: `ws://127.0.0.1:${port}/v1/guests/g1/console`,
      mode: 'rw',
      takeover: true,
      stdin: t.stdin,
      stdout: t.stdout,
      stderr: t.stderr,
      signal: ac.signal,
    });
    await until(() => texts.length > 0);
    expect(await conns.at(-1)!.first).toBe('{"type":"auth"}');
    expect(JSON.parse(texts[0]!)).toEqual({ type: 'takeover' });
    conns.at(-1)!.ws.send(JSON.stringify({ type: 'lock', writer: { viewerId: 'v1' }, viewers: 1 }));
    await until(() => texts.length > 1);
    expect(JSON.parse(texts[1]!)).toEqual({ type: 'resize', cols: 132, rows: 43 });
    ac.abort();
    expect(await run).toEqual({ exitCode: 0, reason: 'aborted', next: 0 });
  });

  /** A read-only session with a token, against a server that closes it with `code` and `reason` (1006: cut). */
  async function closedWith(code: number, reason?: string) {
    behaviour = (c) => {
      if (code === 1006) c.ws.terminate();
      else c.ws.close(code, reason);
    };
    const t = tty();
    const res = await runConsoleClient({
      url: `ws://127.0.0.1:${port}/v1/guests/g1/console`,
      token: 'some-token',
      mode: 'ro',
      stdin: t.stdin,
      stdout: t.stdout,
      stderr: t.stderr,
    });
    return { res, err: t.err(), raw: t.stdin.raw };
  }

  it('exits non-zero with the code of an error close', async () => {
    const { res, err, raw } = await closedWith(4402, 'TOKEN_EXPIRED');
    expect(res).toMatchObject({ exitCode: 1, reason: 'closed', code: 'TOKEN_EXPIRED', closeCode: 4402 });
    expect(err).toContain('[consolectl] connection closed: TOKEN_EXPIRED (The token has expired.)');
    expect(raw).toEqual([true, false]);
  });

  it('explains a close by its reason first, then by its close code', async () => {
    // 4401 is UNAUTHORIZED and TOKEN_INVALID: the reason tells them apart.
    const forged = await closedWith(4401, 'TOKEN_INVALID');
    expect(forged.res).toMatchObject({
      exitCode: 1,
      code: 'TOKEN_INVALID',
      closeCode: 4401,
      message: ERROR_CODES.TOKEN_INVALID.text,
    });
    expect(forged.err).toContain(`connection closed: TOKEN_INVALID (${ERROR_CODES.TOKEN_INVALID.text})`);
    const noReason = await closedWith(4403);
    expect(noReason.res).toMatchObject({ exitCode: 1, code: 'FORBIDDEN', closeCode: 4403 });
    expect(noReason.err).toContain(`connection closed: FORBIDDEN (${ERROR_CODES.FORBIDDEN.text})`);
    // 1008 was missing from this client's own copy of the table.
    expect((await closedWith(1008)).res).toMatchObject({ code: 'BAD_REQUEST', closeCode: 1008 });
    const lost = await closedWith(1006);
    expect(lost.res).toMatchObject({ exitCode: 1, code: 'CONNECTION_LOST', closeCode: 1006 });
    const normal = await closedWith(1000);
    expect(normal.res).toEqual({ exitCode: 0, reason: 'closed', closeCode: 1000 });
  });

  it('reports an HTTP refusal of the upgrade with its error code, and a refused connection', async () => {
    const t = tty();
    const res = await runConsoleClient({
      url: `ws://127.0.0.1:${port}/bad`,
      token: 'x',
      mode: 'ro',
      stdin: t.stdin,
      stdout: t.stdout,
      stderr: t.stderr,
    });
    expect(res).toMatchObject({ exitCode: 1, reason: 'error', code: 'BAD_GUEST_ID', message: 'nope!' });
    expect(t.stdin.raw).toEqual([]);
    const srv = createServer();
    await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
    const dead = (srv.address() as AddressInfo).port;
    await new Promise((r) => srv.close(r));
    const t2 = tty();
    const res2 = await runConsoleClient({
      url: `ws://127.0.0.1:${dead}/v1/guests/g1/console`,
      mode: 'ro',
      stdin: t2.stdin,
      stdout: t2.stdout,
      stderr: t2.stderr,
    });
    expect(res2).toMatchObject({ exitCode: 1, reason: 'error', code: 'ECONNREFUSED' });
  });

  it('pauses the socket while stdout is full (the server skips it ahead instead)', async () => {
    behaviour = (c) => {
      c.ws.send(welcome(false));
      for (let i = 0; i < 50; i++) c.ws.send(Buffer.alloc(64 * 1024, 0x41));
    };
    const t = tty();
    const slow = new PassThrough({ highWaterMark: 1024 });
    const run = runConsoleClient({
      url: `ws://127.0.0.1:${port}/v1/guests/g1/console`,
      mode: 'ro',
      stdin: t.stdin,
      stdout: slow,
      stderr: t.stderr,
    });
    // A sleep: the client reading no further ahead has no event to wait for.
    await new Promise((r) => setTimeout(r, 300));
    expect(slow.readableLength).toBeLessThan(2 * 64 * 1024 + 1024);
    let total = 0;
    slow.on('data', (d: Buffer) => {
      total += d.length;
    });
    await until(() => total + 0 >= 50 * 64 * 1024 - slow.readableLength - 2 * 64 * 1024);
    t.stdin.write('\x1d');
    expect((await run).reason).toBe('escape');
  });
});
