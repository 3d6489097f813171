/**
 * docs/openapi.yaml describes the daemon that runs: real calls to the built daemon
 * (with Redis, so the replication route and status exist), success and error cases of
 * every route family, each checked against the spec: the route and method are there,
 * the status is one the spec lists for them, the headers it marks required are
 * present, and the JSON body matches the schema. The spec's routes are also compared
 * with the ones the sources register and with the `Allow` the daemon answers, and its
 * error codes with common/errors.ts.
 */
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { request } from 'node:http';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ERROR_CODES } from '../../common/errors.js';
import { CONSOLE_ASSET_PREFIX } from '../../sidecar/console/page-assets.js';
import {
  closeAllPeers,
  type DaemonHandle,
  REPO_ROOT,
  SocketPeer,
  startDaemon,
  stopAllDaemons,
} from '../support/daemon.js';
import {
  checkResponse,
  deref,
  loadOpenApi,
  type SeenResponse,
  specMethods,
  specPathFor,
  validate,
} from '../support/openapi.js';
import { rawRequest } from '../support/raw-http.js';
import { type RedisHandle, startRedis, stopAllRedis } from '../support/redis-server.js';
import { replicationConfig } from '../support/replication.js';
import { removeTmpDirs } from '../support/tmp.js';
import { waitFor } from '../support/wait.js';

type Json = Record<string, unknown>;

const spec = loadOpenApi();
const paths = spec['paths'] as Record<string, Json>;

let redis: RedisHandle;
let d: DaemonHandle;
let peer: SocketPeer;
let viewerToken = '';
/** `METHOD path-template` of every operation a check saw. */
const exercised = new Set<string>();

/** One request, the path sent as written; `auth` null sends no Authorization. */
function call(
  method: string,
  path: string,
  options: { body?: string; headers?: Record<string, string>; auth?: string | null } = {},
): Promise<SeenResponse> {
  const headers: Record<string, string> = { ...options.headers };
  const auth = options.auth === undefined ? `Bearer ${d.token}` : options.auth;
  if (auth !== null) headers['authorization'] = auth;
  if (options.body !== undefined) {
    headers['content-type'] ??= 'application/json';
    headers['content-length'] = String(Buffer.byteLength(options.body));
  }
  return rawRequest(d.url, method, path, headers, options.body);
}

/** A WebSocket upgrade request on the console path: 101, or the refusal as a response. */
function upgrade(path: string, auth: string | null): Promise<SeenResponse> {
  const url = new URL(d.url);
  const headers: Record<string, string> = {
    connection: 'Upgrade',
    upgrade: 'websocket',
    'sec-websocket-version': '13',
    'sec-websocket-key': Buffer.from('0123456789abcdef').toString('base64'),
  };
  if (auth !== null) headers['authorization'] = auth;
  return new Promise((resolve, reject) => {
    const req = request({ host: url.hostname, port: url.port, method: 'GET', path, headers });
    req.on('upgrade', (res, socket) => {
      socket.destroy();
      resolve({ status: res.statusCode ?? 0, headers: {}, body: Buffer.alloc(0) });
    });
    req.on('response', (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () =>
        resolve({
          status: res.statusCode ?? 0,
          headers: res.headers as Record<string, string>,
          body: Buffer.concat(chunks),
        }),
      );
    });
    req.on('error', reject);
    req.end();
  });
}

/**
 * Asserts that `seen`, the answer to `method path`, is what the spec documents for
 * that operation; `code` (for errors) is the error code expected in the body.
 */
function expectDocumented(method: string, path: string, seen: SeenResponse, code?: string): void {
  const pathname = new URL(path, 'http://x').pathname;
  const template = specPathFor(spec, pathname);
  const context = `${method} ${path} -> ${seen.status} ${seen.body.toString('utf8').slice(0, 300)}`;
  expect(template, `${context}: no path of the spec matches`).toBeDefined();
  const operation = paths[template!]![method.toLowerCase()] as Json | undefined;
  expect(operation, `${context}: ${method} is not documented on ${template}`).toBeDefined();
  const responses = operation!['responses'] as Json;
  expect(Object.keys(responses), `${context}: status not listed`).toContain(String(seen.status));
  expect(checkResponse(spec, responses[String(seen.status)], seen), context).toEqual([]);
  if (code !== undefined) {
    const body = JSON.parse(seen.body.toString('utf8')) as { error: { code: string } };
    expect(body.error.code, context).toBe(code);
  }
  exercised.add(`${method} ${template}`);
}

/** `call` and `expectDocumented` in one, checking the status too. */
async function documented(
  method: string,
  path: string,
  status: number,
  options: Parameters<typeof call>[2] & { code?: string } = {},
): Promise<SeenResponse> {
  const seen = await call(method, path, options);
  expect(seen.status, `${method} ${path}: ${seen.body.toString('utf8').slice(0, 300)}`).toBe(status);
  expectDocumented(method, path, seen, options.code);
  return seen;
}

beforeAll(async () => {
  redis = await startRedis();
  peer = await SocketPeer.listen();
  const declared = await SocketPeer.listen();
  d = await startDaemon({
    config: replicationConfig(
      'host-a',
      { url: redis.url },
      { guests: [{ id: 'declared-1', source: { type: 'tcp', host: '127.0.0.1', port: declared.port } }] },
    ),
    // A successor that exits at once: the upgrade route answers its documented failure
    // and this daemon serves on (a real upgrade is test/e2e/upgrade.test.ts).
    env: { CONSOLED_SUCCESSOR_COMMAND: JSON.stringify([process.execPath, '-e', 'process.exit(3)']) },
  });
  const issued = await d.json<{ token: string }>('POST', '/v1/guests/g1/tokens', { mode: 'ro', ttl: '1h' });
  viewerToken = issued.token;
}, 60_000);

afterAll(async () => {
  await stopAllDaemons();
  await closeAllPeers();
  await stopAllRedis();
  await removeTmpDirs();
});

describe('the checker', () => {
  it('finds what is wrong in a body, and refuses a keyword it does not check', () => {
    const error = (spec['components'] as Json)['schemas'] as Json;
    expect(validate(spec, error['Error'] as Json, { error: { code: 'BAD_JSON', message: 'x' } })).toEqual([]);
    expect(validate(spec, error['Error'] as Json, { error: { code: 'NOPE', message: 'x' } })).toHaveLength(1);
    expect(validate(spec, error['Error'] as Json, { error: { code: 'BAD_JSON' }, extra: 1 })).toHaveLength(2);
    expect(
      validate(spec, error['Markers'] as Json, {
        id: 'g',
        scope: 'local',
        start: 0,
        end: null,
        markers: [{ offset: 1.5, length: 1, kind: 'boot' }],
      }),
    ).toHaveLength(1);
    expect(() => validate(spec, { anyOf: [] }, 1)).toThrow(/not supported/);
    const missing = checkResponse(
      spec,
      { $ref: '#/components/responses/LogBytes' },
      {
        status: 200,
        headers: { 'content-type': 'application/octet-stream', 'x-content-type-options': 'nosniff' },
        body: Buffer.alloc(0),
      },
    );
    expect(missing).toEqual([
      'header X-Consoled-Start is missing',
      'header X-Consoled-Next is missing',
      'header X-Consoled-Scope is missing',
    ]);
  });
});

describe('the spec lists what the daemon serves', () => {
  it('documents exactly the routes the sources register (and the WebSocket console)', () => {
    const registered = new Set<string>();
    const walk = (dir: string): string[] =>
      readdirSync(dir).flatMap((name) => {
        const p = join(dir, name);
        return statSync(p).isDirectory() ? walk(p) : p.endsWith('.ts') ? [p] : [];
      });
    for (const file of walk(join(REPO_ROOT, 'sidecar'))) {
      const text = readFileSync(file, 'utf8');
      for (const m of text.matchAll(/router\.add\(\s*'([A-Z]+)',\s*(['`])(.*?)\2/g)) {
        const path = m[3]!
          .replace(/\$\{CONSOLE_ASSET_PREFIX\}/, CONSOLE_ASSET_PREFIX)
          .replace(/:(\w+)/g, '{$1}');
        registered.add(`${m[1]} ${path}`);
      }
    }
    const documentedOps = new Set(
      Object.keys(paths).flatMap((p) => specMethods(spec, p).map((m) => `${m} ${p}`)),
    );
    documentedOps.delete('GET /v1/guests/{id}/console'); // served by the upgrade handler, not the router
    expect([...registered].sort()).toEqual([...documentedOps].sort());
  });

  it('lists every error code of common/errors.ts', () => {
    const codes = deref<Json>(spec, { $ref: '#/components/schemas/ErrorCode' })['enum'] as string[];
    expect([...codes].sort()).toEqual(Object.keys(ERROR_CODES).sort());
  });

  it('answers a method a path lacks with 405 and the Allow the spec gives that path', async () => {
    const examples: Record<string, string> = { '{id}': 'g1', '{file}': 'console.js', '{jti}': 'a-token-id' };
    for (const template of Object.keys(paths)) {
      if (template === '/v1/guests/{id}/console') continue; // no router route: 404 without an upgrade
      const path = template.replace(/\{\w+\}/g, (p) => examples[p]!);
      const seen = await call('PATCH', path);
      expect(seen.status, `PATCH ${path}`).toBe(405);
      const allowed = (seen.headers['allow'] ?? '').split(/,\s*/).sort();
      expect(allowed, `Allow of ${path}`).toEqual(specMethods(spec, template).sort());
      const problems = checkResponse(spec, { $ref: '#/components/responses/MethodNotAllowed' }, seen);
      expect(problems, `PATCH ${path}`).toEqual([]);
    }
  });

  it('answers an unknown path with 404 NOT_FOUND in the error schema', async () => {
    const seen = await call('GET', '/v2/nothing');
    expect(seen.status).toBe(404);
    expect(specPathFor(spec, '/v2/nothing')).toBeUndefined();
    expect(checkResponse(spec, { $ref: '#/components/responses/NotFound' }, seen)).toEqual([]);
    expect(JSON.parse(seen.body.toString('utf8')).error.code).toBe('NOT_FOUND');
  });
});

describe('real calls match the spec', () => {
  it('health and metrics, with and without auth', async () => {
    await documented('GET', '/healthz', 200, { auth: null });
    await documented('GET', '/metrics', 200);
    const noAuth = await documented('GET', '/metrics', 401, { auth: null, code: 'UNAUTHORIZED' });
    expect(noAuth.headers['www-authenticate']).toBe('Bearer realm="consoled"');
    const bad = await documented('GET', '/metrics', 401, {
      auth: 'Bearer not-a-token',
      code: 'TOKEN_INVALID',
    });
    expect(bad.headers['www-authenticate']).toContain('error="invalid_token"');
    const viewer = await documented('GET', '/metrics', 403, {
      auth: `Bearer ${viewerToken}`,
      code: 'FORBIDDEN',
    });
    expect(viewer.headers['www-authenticate']).toContain('error="insufficient_scope"');
  });

  it('guests: attach, list, status, errors', async () => {
    const spec1 = JSON.stringify({ source: { type: 'tcp', host: '127.0.0.1', port: peer.port } });
    await documented('PUT', '/v1/guests/g1', 201, { body: spec1 });
    await documented('PUT', '/v1/guests/g1', 200, { body: spec1 });
    await peer.waitForConnections(1);
    peer.send('hello\r\nworld\r\n');
    await waitFor('the bytes in the log, and the stream owned', async () => {
      const status = JSON.parse((await call('GET', '/v1/guests/g1')).body.toString('utf8')) as Json;
      const role = (status['replication'] as Json | undefined)?.['role'];
      return (status['flushedOffset'] as number) > 60 && role === 'owner' && status;
    });
    const one = await documented('GET', '/v1/guests/g1', 200);
    expect(JSON.parse(one.body.toString('utf8')).replication.role).toBe('owner');
    await documented('GET', '/v1/guests', 200);
    await documented('GET', '/v1/guests', 403, { auth: `Bearer ${viewerToken}`, code: 'FORBIDDEN' });
    await documented('GET', '/v1/guests/nope', 404, { code: 'GUEST_NOT_FOUND' });
    await documented('GET', '/v1/guests/bad%20id', 400, { code: 'BAD_GUEST_ID' });
    await documented('PUT', '/v1/guests/g2', 400, { body: '{"source":{"type":"nope"}}', code: 'BAD_SOURCE' });
    await documented('PUT', '/v1/guests/g2', 400, { body: '{"source":', code: 'BAD_JSON' });
    await documented('PUT', '/v1/guests/g2', 400, {
      body: `${spec1.slice(0, -1)},"x":1}`,
      code: 'BAD_REQUEST',
    });
    await documented('PUT', '/v1/guests/g2', 415, {
      body: spec1,
      headers: { 'content-type': 'text/plain' },
      code: 'UNSUPPORTED_MEDIA_TYPE',
    });
    await documented('PUT', '/v1/guests/g2', 413, {
      body: JSON.stringify({ source: { type: 'exec', command: ['x'.repeat(70 * 1024)] } }),
      code: 'PAYLOAD_TOO_LARGE',
    });
    await documented('PUT', '/v1/guests/g2', 401, { body: spec1, auth: null, code: 'UNAUTHORIZED' });
    await documented('DELETE', '/v1/guests/declared-1', 409, { code: 'GUEST_DECLARED' });
    await documented('DELETE', '/v1/guests/nope', 404, { code: 'GUEST_NOT_FOUND' });
  });

  it('log reads: bytes with their offsets, and the parameter errors', async () => {
    const whole = await documented('GET', '/v1/guests/g1/log?start=0', 200);
    expect(whole.body.toString('latin1')).toContain('hello\r\nworld\r\n');
    expect(Number(whole.headers['x-consoled-next']) - Number(whole.headers['x-consoled-start'])).toBe(
      whole.body.length,
    );
    await documented('GET', '/v1/guests/g1/log?lines=1&scope=local', 200);
    await documented('GET', '/v1/guests/g1/log?start=1&tail=1', 400, { code: 'BAD_PARAMETER' });
    await documented('GET', '/v1/guests/g1/log?scope=everywhere', 400, { code: 'BAD_PARAMETER' });
    await documented('GET', '/v1/guests/g1/log?boot=99', 416, { code: 'RANGE_NOT_AVAILABLE' });
    await documented('GET', '/v1/guests/never-here/log', 404, { code: 'GUEST_NOT_FOUND' });
    await documented('GET', '/v1/guests/g1/log', 401, { auth: null, code: 'UNAUTHORIZED' });
    await documented('GET', '/console/g1/log?tail=5', 200, { auth: `Bearer ${viewerToken}` });
    await documented('GET', '/console/g1/log', 401, { auth: null, code: 'UNAUTHORIZED' });
    await documented('GET', '/console/g1/log', 401, { auth: 'Bearer x.y', code: 'TOKEN_INVALID' });
  });

  it('markers and boots', async () => {
    const markers = await documented('GET', '/v1/guests/g1/markers?scope=local', 200);
    expect(JSON.parse(markers.body.toString('utf8')).markers[0].kind).toBe('boot');
    await documented('GET', '/v1/guests/g1/markers?start=5&end=1', 400, { code: 'BAD_PARAMETER' });
    await documented('POST', '/v1/guests/g1/boots', 201);
    await documented('POST', '/v1/guests/nope/boots', 404, { code: 'GUEST_NOT_FOUND' });
    await documented('POST', '/v1/guests/g1/boots', 403, {
      auth: `Bearer ${viewerToken}`,
      code: 'FORBIDDEN',
    });
  });

  it('tokens', async () => {
    await documented('POST', '/v1/guests/g1/tokens', 201, {
      body: JSON.stringify({ mode: 'rw', ttl: '10m', singleUse: true, name: 'alice' }),
    });
    await documented('POST', '/v1/guests/g1/tokens', 400, {
      body: '{"mode":"xx","ttl":"1h"}',
      code: 'BAD_REQUEST',
    });
    await documented('POST', '/v1/guests/g1/tokens', 400, {
      body: '{"mode":"ro","ttl":"forever"}',
      code: 'BAD_PARAMETER',
    });
    await documented('POST', '/v1/guests/g1/tokens', 415, {
      body: '{"mode":"ro","ttl":"1h"}',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      code: 'UNSUPPORTED_MEDIA_TYPE',
    });
    const renewable = await documented('POST', '/v1/guests/g1/tokens', 201, {
      body: JSON.stringify({ mode: 'ro', ttl: '10m', renewableFor: '12h' }),
    });
    const { id } = JSON.parse(renewable.body.toString('utf8')) as { id: string };
    await documented('POST', '/v1/guests/g1/tokens', 400, {
      body: JSON.stringify({ mode: 'ro', ttl: '10m', renewableFor: '13h' }),
      code: 'BAD_PARAMETER',
    });
    const revoked = await documented('DELETE', `/v1/tokens/${id}`, 200);
    expect(JSON.parse(revoked.body.toString('utf8'))).toMatchObject({ revoked: id, shared: true });
    await documented('DELETE', '/v1/tokens/not.a.token.id', 400, { code: 'BAD_PARAMETER' });
    await documented('DELETE', `/v1/tokens/${id}`, 403, { auth: `Bearer ${viewerToken}`, code: 'FORBIDDEN' });
  });

  it('handoff: refused on the owner, accepted on an incoming guest; detach', async () => {
    await documented('POST', '/v1/guests/g1/handoff', 409, { code: 'HANDOFF_STATE' });
    await documented('POST', '/v1/guests/nope/handoff', 404, { code: 'GUEST_NOT_FOUND' });
    const mig = await SocketPeer.listen();
    const body = JSON.stringify({
      source: { type: 'tcp', host: '127.0.0.1', port: mig.port },
      incoming: true,
    });
    await documented('PUT', '/v1/guests/mig-1', 201, { body });
    const accepted = await documented('POST', '/v1/guests/mig-1/handoff', 202);
    expect(JSON.parse(accepted.body.toString('utf8')).replication.role).toMatch(
      /incoming|adopting|owner|claiming/,
    );
    await documented('DELETE', '/v1/guests/mig-1', 200);
  });

  it('history purge: refused while attached, a scope wanted, nothing to purge', async () => {
    await documented('DELETE', '/v1/guests/g1/history?scope=all', 409, { code: 'GUEST_ATTACHED' });
    await documented('DELETE', '/v1/guests/gone-here/history', 400, { code: 'BAD_PARAMETER' });
    const purged = await documented('DELETE', '/v1/guests/gone-here/history?scope=all', 200);
    expect(JSON.parse(purged.body.toString('utf8'))).toMatchObject({ local: { removed: false } });
  });

  it('the console page, its assets and the WebSocket upgrade', async () => {
    await documented('GET', '/console/g1', 200, { auth: null });
    await documented('GET', '/console/bad%20id', 400, { auth: null, code: 'BAD_GUEST_ID' });
    await documented('GET', '/console/assets/console.js', 200, { auth: null });
    await documented('GET', '/console/assets/nothing.js', 404, { auth: null, code: 'NOT_FOUND' });
    const refused = await upgrade('/v1/guests/g1/console', 'Bearer not-a-token');
    expect(refused.status).toBe(401);
    expectDocumented('GET', '/v1/guests/g1/console', refused, 'TOKEN_INVALID');
    const missing = await upgrade('/v1/guests/nope/console', `Bearer ${d.token}`);
    expectDocumented('GET', '/v1/guests/nope/console', missing, 'GUEST_NOT_FOUND');
    const opened = await upgrade('/v1/guests/g1/console', `Bearer ${d.token}`);
    expect(opened.status).toBe(101);
    expectDocumented('GET', '/v1/guests/g1/console', opened);
  });

  it('reload: applied, refused for a field that needs a restart, refused for an invalid file', async () => {
    const same = await documented('POST', '/v1/reload', 200);
    expect(JSON.parse(same.body.toString('utf8')).result).toBe('unchanged');
    await documented('POST', '/v1/reload', 403, { auth: `Bearer ${viewerToken}`, code: 'FORBIDDEN' });
    const hostId = d.config['hostId'];
    await d.reconfigure({ hostId: 'another-host' });
    await documented('POST', '/v1/reload', 409, { code: 'RELOAD_REFUSED' });
    await d.reconfigure({ hostId, limits: { maxGuests: 0 } });
    await documented('POST', '/v1/reload', 500, { code: 'BAD_CONFIG' });
    await d.reconfigure({ limits: { maxGuests: 4096 } });
    await documented('POST', '/v1/reload', 200);
  });

  it('hosts: the registry, admin only, and 503 while Redis is away', async () => {
    const listed = await waitFor('this host in the registry', async () => {
      const seen = await call('GET', '/v1/hosts');
      return seen.status === 200 && JSON.parse(seen.body.toString('utf8')).hosts.length > 0 && seen;
    });
    expectDocumented('GET', '/v1/hosts', listed);
    await documented('GET', '/v1/hosts', 401, { auth: null, code: 'UNAUTHORIZED' });
    await documented('GET', '/v1/hosts', 403, { auth: `Bearer ${viewerToken}`, code: 'FORBIDDEN' });
    await redis.stop();
    try {
      const away = await waitFor('503 while Redis is away', async () => {
        const seen = await call('GET', '/v1/hosts');
        return seen.status === 503 && seen;
      });
      expectDocumented('GET', '/v1/hosts', away, 'REPLICATION_UNAVAILABLE');
    } finally {
      await redis.start();
    }
  });

  it('upgrade: a successor that does not start leaves this daemon serving', async () => {
    await documented('POST', '/v1/upgrade', 401, { auth: null, code: 'UNAUTHORIZED' });
    const failed = await documented('POST', '/v1/upgrade', 500, { code: 'UPGRADE_FAILED' });
    expect(failed.body.toString('utf8')).toMatch(/exit code 3/);
    await documented('GET', '/v1/guests/g1', 200);
  });

  it('the calls above used every operation of the spec', () => {
    const all = Object.keys(paths).flatMap((p) => specMethods(spec, p).map((m) => `${m} ${p}`));
    expect(all.filter((op) => !exercised.has(op))).toEqual([]);
  });

  it('detaches the guest last', async () => {
    await documented('DELETE', '/v1/guests/g1', 200);
  });
});
