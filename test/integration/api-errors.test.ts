/**
 * Bad input gets a clear error with a stable code (asserted on `code`, never on
 * wording), and the guest lifecycle calls behave: PUT is idempotent, runtime
 * attachments survive a restart, DELETE keeps the logs readable. Paths are sent
 * exactly as written (no client-side normalisation), so traversal attempts reach
 * the daemon as an attacker would send them.
 *
 * About 540 lines on purpose: one daemon serves every bad-input case, a table per route.
 */
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, readdir, writeFile } from 'node:fs/promises';
import { request } from 'node:http';
import { join, relative } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ERROR_CODES } from '../../common/errors.js';
import {
  CONSOLED_BIN,
  closeAllPeers,
  type DaemonHandle,
  readWholeLog,
  SocketPeer,
  startDaemon,
  stopAllDaemons,
} from '../support/daemon.js';
import { rawRequest } from '../support/raw-http.js';
import { removeTmpDirs, tmpDir } from '../support/tmp.js';
import { waitFor } from '../support/wait.js';

const execFileAsync = promisify(execFile);

interface Answer {
  status: number;
  headers: Readonly<Record<string, string | undefined>>;
  body: string;
}

/** One HTTP request with the path sent byte for byte as given. */
function raw(
  d: DaemonHandle,
  method: string,
  path: string,
  options: {
    body?: string | Buffer;
    headers?: Record<string, string>;
    auth?: string | null;
    chunked?: boolean;
  } = {},
): Promise<Answer> {
  const headers: Record<string, string> = { ...options.headers };
  const auth = options.auth === undefined ? `Bearer ${d.token}` : options.auth;
  if (auth !== null) headers['authorization'] = auth;
  if (options.body !== undefined && !options.chunked)
    headers['content-length'] = String(Buffer.byteLength(options.body));
  if (options.body !== undefined) headers['content-type'] ??= 'application/json';
  return rawRequest(d.url, method, path, headers, options.body).then((answer) => ({
    ...answer,
    body: answer.body.toString('utf8'),
  }));
}

/** Asserts an error answer: the status that goes with the code, and the code. */
function expectError(answer: Answer, code: keyof typeof ERROR_CODES, what = ''): void {
  const context = `${what} -> ${answer.status} ${answer.body}`;
  expect(answer.status, context).toBe(ERROR_CODES[code].http);
  expect(answer.headers['content-type'], context).toBe('application/json');
  const body = JSON.parse(answer.body) as { error: { code: string; message: string } };
  expect(body.error.code, context).toBe(code);
  expect(body.error.message.length, context).toBeGreaterThan(0);
}

/** Every path under `root`, relative, sorted. */
async function tree(root: string): Promise<string[]> {
  const out: string[] = [];
  const walk = async (dir: string): Promise<void> => {
    for (const entry of await readdir(dir, { withFileTypes: true })) {
      const path = join(dir, entry.name);
      out.push(relative(root, path));
      if (entry.isDirectory()) await walk(path);
    }
  };
  await walk(root);
  return out.sort();
}

let d: DaemonHandle;
let root: string;
let peer: SocketPeer;
const tcp = () => ({ type: 'tcp', host: '127.0.0.1', port: peer.port });

beforeAll(async () => {
  // The state dir sits two levels down in a dir of its own, so that a path escaping it
  // (guests/<id>/../../x) would land somewhere this test can see.
  root = tmpDir('api');
  const stateDir = join(root, 'a', 'b', 'state');
  await mkdir(stateDir, { recursive: true, mode: 0o750 });
  peer = await SocketPeer.listen();
  d = await startDaemon({
    stateDir,
    config: { guests: [{ id: 'declared', source: { type: 'tcp', host: '127.0.0.1', port: peer.port } }] },
  });
});

afterAll(async () => {
  await stopAllDaemons();
  await closeAllPeers();
  await removeTmpDirs();
});

describe('guest ids', () => {
  it('rejects bad ids with 400 BAD_GUEST_ID on every route, and creates no file anywhere', async () => {
    const before = await tree(root);
    const body = JSON.stringify({ source: tcp() });
    const bad = [
      '..%2F..%2Fetc',
      '..%2F..%2F..%2Fescaped',
      encodeURIComponent('a/b'),
      'x'.repeat(129),
      'y'.repeat(200),
      '', // empty
      '.hidden',
      '...',
      '-leading-dash',
      'sp%20ace',
      '%00nul',
      '%ZZ', // a malformed escape is the client's mistake too
      encodeURIComponent('ünïcode'),
    ];
    for (const id of bad) {
      expectError(await raw(d, 'PUT', `/v1/guests/${id}`, { body }), 'BAD_GUEST_ID', `PUT ${id}`);
      expectError(await raw(d, 'GET', `/v1/guests/${id}`), 'BAD_GUEST_ID', `GET ${id}`);
      expectError(await raw(d, 'DELETE', `/v1/guests/${id}`), 'BAD_GUEST_ID', `DELETE ${id}`);
      expectError(await raw(d, 'GET', `/v1/guests/${id}/log`), 'BAD_GUEST_ID', `GET ${id}/log`);
      expectError(await raw(d, 'POST', `/v1/guests/${id}/boots`), 'BAD_GUEST_ID', `POST ${id}/boots`);
    }
    // A bare `..` segment is path syntax: it resolves to another path, which has no route.
    expectError(await raw(d, 'PUT', '/v1/guests/..', { body }), 'NOT_FOUND');
    expectError(await raw(d, 'PUT', '/v1/guests/%2e%2e', { body }), 'NOT_FOUND');
    // The longest valid id is fine.
    const longest = `z${'9'.repeat(127)}`;
    expect((await raw(d, 'PUT', `/v1/guests/${longest}`, { body })).status).toBe(201);
    expect((await raw(d, 'DELETE', `/v1/guests/${longest}`)).status).toBe(200);

    const after = await tree(root);
    const outside = after.filter((p) => !p.startsWith(join('a', 'b', 'state')));
    expect(outside).toEqual(before.filter((p) => !p.startsWith(join('a', 'b', 'state'))));
    const guestDirs = await readdir(join(d.stateDir, 'guests'));
    expect(guestDirs.sort()).toEqual(['declared', longest].sort());
  });
});

describe('bodies', () => {
  it('malformed JSON is BAD_JSON, an empty body too', async () => {
    expectError(await raw(d, 'PUT', '/v1/guests/j1', { body: '{"source": ' }), 'BAD_JSON');
    expectError(await raw(d, 'PUT', '/v1/guests/j1', { body: "{'source': 1}" }), 'BAD_JSON');
    expectError(await raw(d, 'PUT', '/v1/guests/j1', { body: '' }), 'BAD_JSON');
    expectError(await raw(d, 'PUT', '/v1/guests/j1'), 'BAD_JSON');
  });

  it('unknown source types and missing or wrong source fields are BAD_SOURCE', async () => {
    const cases: unknown[] = [
      {},
      { source: null },
      { source: 'tcp:127.0.0.1:4555' },
      { source: { type: 'serial', path: '/dev/ttyS0' } },
      { source: { type: 'tcp', host: '127.0.0.1' } },
      { source: { type: 'tcp', host: '127.0.0.1', port: 70_000 } },
      { source: { type: 'tcp', host: '127.0.0.1', port: '4555' } },
      { source: { type: 'tcp-listen', port: 4555 } },
      { source: { type: 'unix', path: 'relative/sock' } },
      { source: { type: 'pty' } },
      { source: { type: 'exec', command: [] } },
      { source: { type: 'exec', command: 'sh -c true' } },
      { source: { type: 'tcp', host: '127.0.0.1', port: 4555, extra: true } },
    ];
    for (const body of cases)
      expectError(
        await raw(d, 'PUT', '/v1/guests/s1', { body: JSON.stringify(body) }),
        'BAD_SOURCE',
        JSON.stringify(body),
      );
    // A good source with a bad field elsewhere is a plain BAD_REQUEST.
    expectError(
      await raw(d, 'PUT', '/v1/guests/s1', {
        body: JSON.stringify({ source: tcp(), rotation: { maxFileBytes: 1, maxFiles: 1 } }),
      }),
      'BAD_REQUEST',
    );
    expectError(
      await raw(d, 'PUT', '/v1/guests/s1', { body: JSON.stringify({ source: tcp(), colour: 'blue' }) }),
      'BAD_REQUEST',
    );
    expect((await raw(d, 'GET', '/v1/guests/s1')).status).toBe(404);
  });

  it('a body over the limit is PAYLOAD_TOO_LARGE, declared or streamed', async () => {
    const big = JSON.stringify({ source: tcp(), pad: 'x'.repeat(100 * 1024) });
    expectError(
      await raw(d, 'PUT', '/v1/guests/big1', { body: big }),
      'PAYLOAD_TOO_LARGE',
      'with content-length',
    );
    expectError(
      await raw(d, 'PUT', '/v1/guests/big1', { body: big, chunked: true }),
      'PAYLOAD_TOO_LARGE',
      'chunked',
    );
    expect((await fetch(`${d.url}/healthz`)).status).toBe(200);
  });
});

describe('auth and routing', () => {
  it('RFC 6750: no token is 401, a wrong token 401 invalid_token, a viewer token 403, on every admin call', async () => {
    const viewer = await d.json<{ token: string }>('POST', '/v1/guests/declared/tokens', {
      mode: 'rw',
      ttl: '10m',
    });
    const shortLived = await d.json<{ token: string }>('POST', '/v1/guests/declared/tokens', {
      mode: 'ro',
      ttl: 1000,
    });
    for (const [method, path] of [
      ['GET', '/v1/guests'],
      ['PUT', '/v1/guests/x1'],
      ['GET', '/v1/guests/declared'],
      ['DELETE', '/v1/guests/declared'],
      ['GET', '/v1/guests/declared/log'],
      ['POST', '/v1/guests/declared/boots'],
      ['POST', '/v1/guests/declared/tokens'],
      ['GET', '/metrics'],
    ] as const) {
      const what = `${method} ${path}`;
      const none = await raw(d, method, path, { auth: null });
      expectError(none, 'UNAUTHORIZED', what);
      expect(none.headers['www-authenticate'], what).toBe('Bearer realm="consoled"');
      const wrong = await raw(d, method, path, { auth: 'Bearer not-the-token-at-all' });
      expectError(wrong, 'TOKEN_INVALID', what);
      expect(wrong.headers['www-authenticate'], what).toBe('Bearer realm="consoled", error="invalid_token"');
      // A forged viewer token (the signature of another secret) is just as invalid.
      const forged = `${viewer.token.slice(0, viewer.token.indexOf('.'))}.${'A'.repeat(43)}`;
      expectError(await raw(d, method, path, { auth: `Bearer ${forged}` }), 'TOKEN_INVALID', what);
      const scoped = await raw(d, method, path, { auth: `Bearer ${viewer.token}` });
      expectError(scoped, 'FORBIDDEN', what);
      expect(scoped.headers['www-authenticate'], what).toBe(
        'Bearer realm="consoled", error="insufficient_scope"',
      );
      expectError(
        await raw(d, method, path, { auth: `Basic ${Buffer.from(`admin:${d.token}`).toString('base64')}` }),
        'UNAUTHORIZED',
        what,
      );
    }
    await waitFor('the short-lived viewer token to expire', async () => {
      const answer = await raw(d, 'GET', '/v1/guests', { auth: `Bearer ${shortLived.token}` });
      return answer.status === 401 && answer.body.includes('TOKEN_EXPIRED');
    });
    // Liveness needs no token, and names nothing: no host, no guests.
    const health = await raw(d, 'GET', '/healthz', { auth: null });
    expect(health.status).toBe(200);
    expect(JSON.parse(health.body)).toEqual({ status: 'ok' });
    // Metrics name every guest and the host: admin only by default (metrics.requireAuth).
    const metrics = await raw(d, 'GET', '/metrics');
    expect(metrics.status).toBe(200);
    expect(metrics.body).toContain('consoled_guest_connected{guest="declared"}');
  });

  it('metrics.requireAuth: false serves /metrics without a token', async () => {
    const open = await startDaemon({ config: { metrics: { requireAuth: false } } });
    expect((await raw(open, 'GET', '/metrics', { auth: null })).status).toBe(200);
    await open.stop();
  });

  it('every response carries X-Content-Type-Options: nosniff, errors that echo input included', async () => {
    const answers = [
      await raw(d, 'GET', '/healthz', { auth: null }),
      await raw(d, 'GET', '/metrics'),
      await raw(d, 'GET', '/v1/guests'),
      await raw(d, 'GET', '/v1/guests/%3Cscript%3Ealert(1)%3C%2Fscript%3E'),
      await raw(d, 'GET', '/no/such/<script>'),
      await raw(d, 'GET', '/v1/guests', { auth: null }),
      await raw(d, 'GET', '/console/declared'),
      await raw(d, 'GET', '/v1/guests/declared/log?tail=10'),
    ];
    for (const a of answers)
      expect(a.headers['x-content-type-options'], `${a.status} ${a.body}`).toBe('nosniff');
  });

  it('a JSON body needs Content-Type: application/json: anything else is 415 UNSUPPORTED_MEDIA_TYPE', async () => {
    const body = JSON.stringify({ source: tcp() });
    for (const type of [
      'text/plain',
      'application/x-www-form-urlencoded',
      'multipart/form-data',
      'application/jsonp',
    ]) {
      expectError(
        await raw(d, 'PUT', '/v1/guests/ct1', { body, headers: { 'content-type': type } }),
        'UNSUPPORTED_MEDIA_TYPE',
        type,
      );
    }
    // A simple cross-site form post (no preflight) cannot send application/json; no
    // Content-Type at all is refused too.
    const bare = await new Promise<number>((resolve, reject) => {
      const url = new URL(d.url);
      const req = request(
        {
          host: url.hostname,
          port: url.port,
          method: 'POST',
          path: '/v1/guests/declared/tokens',
          headers: { authorization: `Bearer ${d.token}`, 'content-length': '27' },
        },
        (res) => {
          res.resume();
          resolve(res.statusCode ?? 0);
        },
      );
      req.on('error', reject);
      req.end('{"mode":"ro","ttl":"1m"}   ');
    });
    expect(bare).toBe(415);
    expect((await raw(d, 'GET', '/v1/guests/ct1')).status).toBe(404);
    // With a charset parameter it is accepted.
    const ok = await raw(d, 'PUT', '/v1/guests/ct1', {
      body,
      headers: { 'content-type': 'application/json; charset=utf-8' },
    });
    expect(ok.status).toBe(201);
    expect((await raw(d, 'DELETE', '/v1/guests/ct1')).status).toBe(200);
  });

  it('an unknown route is NOT_FOUND, a wrong method METHOD_NOT_ALLOWED with Allow', async () => {
    expectError(await raw(d, 'GET', '/v2/guests'), 'NOT_FOUND');
    expectError(await raw(d, 'GET', '/v1/guests/declared/nothing-here'), 'NOT_FOUND');
    expectError(await raw(d, 'GET', '/'), 'NOT_FOUND');
    const post = await raw(d, 'POST', '/v1/guests/declared');
    expectError(post, 'METHOD_NOT_ALLOWED');
    expect(String(post.headers['allow']).split(', ').sort()).toEqual(['DELETE', 'GET', 'PUT']);
    expectError(await raw(d, 'DELETE', '/healthz'), 'METHOD_NOT_ALLOWED');
    expectError(await raw(d, 'PUT', '/v1/guests'), 'METHOD_NOT_ALLOWED');
  });

  it('calls on a guest that is not here are GUEST_NOT_FOUND', async () => {
    expectError(await raw(d, 'GET', '/v1/guests/nobody'), 'GUEST_NOT_FOUND');
    expectError(await raw(d, 'DELETE', '/v1/guests/nobody'), 'GUEST_NOT_FOUND');
    expectError(await raw(d, 'POST', '/v1/guests/nobody/boots'), 'GUEST_NOT_FOUND');
    expectError(await raw(d, 'GET', '/v1/guests/nobody/log'), 'GUEST_NOT_FOUND');
  });
});

describe('log parameters', () => {
  it('malformed or contradictory parameters are BAD_PARAMETER', async () => {
    for (const q of [
      'tail=-1',
      'tail=abc',
      'tail=1.5',
      'lines=x',
      'lines=-3',
      'lines=2000000',
      'limit=-5',
      'start=1e3',
      'start=',
      'boot=zero',
      'boot=0',
      'boot=-1',
      'start=0&tail=10',
      'start=0&lines=10',
      'tail=10&lines=10',
      'follow=2',
      'follow=yes',
      'scope=everywhere',
      `start=${'9'.repeat(30)}`,
    ]) {
      expectError(await raw(d, 'GET', `/v1/guests/declared/log?${q}`), 'BAD_PARAMETER', q);
    }
  });

  it('a boot that does not exist is RANGE_NOT_AVAILABLE', async () => {
    await waitFor(
      'the declared guest to start boot 1',
      async () => (await d.json<{ boot: number }>('GET', '/v1/guests/declared')).boot === 1,
    );
    expectError(await raw(d, 'GET', '/v1/guests/declared/log?boot=2'), 'RANGE_NOT_AVAILABLE');
    expectError(await raw(d, 'GET', '/v1/guests/declared/log?boot=previous'), 'RANGE_NOT_AVAILABLE');
    expect((await raw(d, 'GET', '/v1/guests/declared/log?boot=1')).status).toBe(200);
  });
});

describe('consoled check-config', () => {
  async function checkConfig(text: string): Promise<{ code: number; stdout: string; stderr: string }> {
    const dir = tmpDir('cfg');
    const path = join(dir, 'consoled.yaml');
    await writeFile(path, text);
    try {
      const { stdout, stderr } = await execFileAsync(process.execPath, [CONSOLED_BIN, 'check-config', path]);
      return { code: 0, stdout, stderr };
    } catch (err) {
      const e = err as { code: number; stdout: string; stderr: string };
      return { code: e.code, stdout: e.stdout, stderr: e.stderr };
    }
  }

  it('names the bad field and exits 78 (EX_CONFIG)', async () => {
    const cases: Array<[string, RegExp]> = [
      ['listen:\n  port: seventy\n', /listen\.port/],
      [
        'defaults:\n  rotation:\n    maxFileBytes: 100\n    maxFiles: 4\n',
        /defaults\.rotation\.maxFileBytes/,
      ],
      ['stateDir: relative/dir\n', /stateDir/],
      ['adminToken: short\n', /adminToken/],
      ['store:\n  fileMode: "0999"\n', /store\.fileMode/],
      ['bogusOption: 1\n', /bogusOption/],
      ['guests:\n  - id: ../escape\n    source: {type: tcp, host: 127.0.0.1, port: 4555}\n', /guests\.0\.id/],
      ['guests:\n  - id: g1\n    source: {type: carrier-pigeon}\n', /guests\.0\.source/],
      [
        'guests:\n  - id: twin\n    source: {type: tcp, host: h, port: 1}\n  - id: twin\n    source: {type: tcp, host: h, port: 2}\n',
        /duplicate id twin/,
      ],
      ['listen: [unclosed\n', /not valid YAML/],
    ];
    const results = await Promise.all(cases.map(([text]) => checkConfig(text)));
    results.forEach((r, i) => {
      const [text, field] = cases[i]!;
      expect(r.code, `${text} -> ${r.stderr}`).toBe(78);
      expect(r.stderr, text).toContain('BAD_CONFIG');
      expect(r.stderr, text).toMatch(field);
    });
  });

  it('a missing file exits 78, a good one 0', async () => {
    const missing = await execFileAsync(process.execPath, [
      CONSOLED_BIN,
      'check-config',
      '/nonexistent/consoled.yaml',
    ]).catch((e: { code: number; stderr: string }) => e);
    expect((missing as { code: number }).code).toBe(78);
    const good = await checkConfig(
      'stateDir: /var/lib/consoled\nlisten: {host: 127.0.0.1, port: 7070}\nguests:\n  - id: vm-1\n    source: {type: unix, path: /run/vm-1.sock}\n',
    );
    expect(good.code, good.stderr).toBe(0);
    expect(good.stdout).toContain('ok');
  });
});

describe('guest lifecycle', () => {
  it('PUT is idempotent: 201 the first time, 200 with the same body', async () => {
    const spec = { source: tcp(), rateLimit: { bytesPerSec: 1000, burstBytes: 2000 } };
    const first = await d.api('PUT', '/v1/guests/idem', spec);
    expect(first.status).toBe(201);
    const firstStatus = (await first.json()) as { id: string; source: unknown };
    expect(firstStatus.id).toBe('idem');
    expect(firstStatus.source).toEqual(tcp());
    const again = await d.api('PUT', '/v1/guests/idem', spec);
    expect(again.status).toBe(200);
    expect(((await again.json()) as { id: string }).id).toBe('idem');
    // Still one guest, one connection: the second PUT did not reattach.
    const list = await d.json<{ guests: Array<{ id: string }> }>('GET', '/v1/guests');
    expect(list.guests.filter((g) => g.id === 'idem')).toHaveLength(1);
  });

  it('a declared guest cannot be changed or detached through the API', async () => {
    expectError(
      await raw(d, 'PUT', '/v1/guests/declared', {
        body: JSON.stringify({ source: { type: 'unix', path: '/x' } }),
      }),
      'GUEST_DECLARED',
    );
    expectError(await raw(d, 'DELETE', '/v1/guests/declared'), 'GUEST_DECLARED');
    // The same spec as declared is accepted as a no-op.
    expect(
      (await raw(d, 'PUT', '/v1/guests/declared', { body: JSON.stringify({ source: tcp() }) })).status,
    ).toBe(200);
  });

  it('runtime attachments come back after a restart; DELETE keeps the logs readable', async () => {
    const keepPeer = await SocketPeer.listen();
    const dropPeer = await SocketPeer.listen();
    await d.json(
      'PUT',
      '/v1/guests/keeper',
      { source: { type: 'tcp', host: '127.0.0.1', port: keepPeer.port } },
      201,
    );
    await d.json(
      'PUT',
      '/v1/guests/dropped',
      { source: { type: 'tcp', host: '127.0.0.1', port: dropPeer.port } },
      201,
    );
    await keepPeer.waitForConnections(1);
    await dropPeer.waitForConnections(1);
    dropPeer.send('bytes of a guest that will be detached\r\n');
    await waitFor('the bytes in the log', async () =>
      (await readWholeLog(d, 'dropped')).bytes.includes('will be detached'),
    );

    const detached = await d.json<{ id: string; detached: boolean; offset: number }>(
      'DELETE',
      '/v1/guests/dropped',
    );
    expect(detached.detached).toBe(true);
    const logAfterDelete = await readWholeLog(d, 'dropped');
    expect(detached.offset).toBe(logAfterDelete.next);
    expect(logAfterDelete.bytes.toString('latin1')).toContain('bytes of a guest that will be detached\r\n');
    expectError(await raw(d, 'GET', '/v1/guests/dropped'), 'GUEST_NOT_FOUND');
    expect(existsSync(join(d.stateDir, 'guests', 'dropped', 'console.log'))).toBe(true);
    await waitFor('the detached guest to hang up', () => dropPeer.current === null);

    expect(await d.stop()).toBe(0);
    await d.start();
    // keeper is back, attached with the same source and connected again; dropped is not.
    const keeper = await d.json<{ source: unknown; declared: boolean; boot: number }>(
      'GET',
      '/v1/guests/keeper',
    );
    expect(keeper.source).toEqual({ type: 'tcp', host: '127.0.0.1', port: keepPeer.port });
    expect(keeper.declared).toBe(false);
    await keepPeer.waitForConnections(2);
    expectError(await raw(d, 'GET', '/v1/guests/dropped'), 'GUEST_NOT_FOUND');
    expect(dropPeer.connections).toBe(1);
    const afterRestart = await readWholeLog(d, 'dropped');
    expect(afterRestart.bytes.equals(logAfterDelete.bytes)).toBe(true);
    // The declared guest and the idempotent one are back too.
    const ids = (await d.json<{ guests: Array<{ id: string }> }>('GET', '/v1/guests')).guests
      .map((g) => g.id)
      .sort();
    expect(ids).toEqual(['declared', 'idem', 'keeper']);
  });

  it('the host-wide guest limit is TOO_MANY_GUESTS', async () => {
    const small = await startDaemon({ config: { limits: { maxGuests: 1 } } });
    await small.json('PUT', '/v1/guests/only', { source: tcp() }, 201);
    expectError(
      await raw(small, 'PUT', '/v1/guests/second', { body: JSON.stringify({ source: tcp() }) }),
      'TOO_MANY_GUESTS',
    );
    // Re-putting the one guest is still fine.
    expect(
      (await raw(small, 'PUT', '/v1/guests/only', { body: JSON.stringify({ source: tcp() }) })).status,
    ).toBe(200);
  });
});
