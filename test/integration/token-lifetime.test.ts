/**
 * Sessions end when their tokens do (README "Tokens"), against the built daemon over
 * real sockets: a connection admitted with a viewer token is closed with 4402
 * TOKEN_EXPIRED when the token expires, unless it renewed the token in band
 * (`{"type":"renew"}`) within `ren`; a token without `ren`, or past it, is refused
 * TOKEN_NOT_RENEWABLE and the connection stays; `DELETE /v1/tokens/{jti}` ends the
 * live sessions of a token or of its whole chain (4407 TOKEN_REVOKED) and refuses
 * them afterwards, across a restart too. Tokens live 2 to 3 seconds here, so each case
 * takes a few seconds of real time.
 */
import { readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { issueViewerToken } from '../../sidecar/console/viewer-token.js';
import { ConsoleViewer, type ControlMessage } from '../support/console-viewer.js';
import {
  closeAllPeers,
  type DaemonHandle,
  SocketPeer,
  startDaemon,
  stopAllDaemons,
} from '../support/daemon.js';
import { removeTmpDirs } from '../support/tmp.js';
import { sleep, waitFor } from '../support/wait.js';

const SECRET = 'token-lifetime-test-secret-0123456789abcdef';

interface Issued {
  token: string;
  id: string;
  expiresAt: string;
  renewableUntil?: string;
}

let peer: SocketPeer;
let d: DaemonHandle;

beforeAll(async () => {
  peer = await SocketPeer.listen();
  d = await startDaemon({
    config: {
      console: { tokenSecret: SECRET },
      guests: [{ id: 'vm', source: { type: 'tcp', host: '127.0.0.1', port: peer.port } }],
    },
  });
  await peer.waitForConnections(1);
});

afterAll(async () => {
  await stopAllDaemons();
  await closeAllPeers();
  await removeTmpDirs();
});

function issue(body: Record<string, unknown>): Promise<Issued> {
  return d.json<Issued>('POST', '/v1/guests/vm/tokens', body, 201);
}

/** The claims of a token (the payload before the dot). */
function claims(token: string): { jti: string; exp: number; iat: number; ren?: number; chn?: string } {
  return JSON.parse(Buffer.from(token.split('.')[0]!, 'base64url').toString('utf8'));
}

/** Sends `renew` and waits for its answer: the `token` message (renewed) or an `error`. */
async function renew(v: ConsoleViewer): Promise<ControlMessage> {
  const since = v.messages.length;
  v.control({ type: 'renew' });
  return waitFor('the answer to renew', () =>
    v.messages.slice(since).find((m) => (m.type === 'token' && m['renewed'] === true) || m.type === 'error'),
  );
}

/** The daemon's audit lines of `event`, parsed. */
function auditLines(event: string): Array<Record<string, unknown>> {
  return d
    .logs()
    .split('\n')
    .filter((l) => l.includes(`"event":"${event}"`))
    .map((l) => JSON.parse(l.slice(l.indexOf('{'))) as Record<string, unknown>);
}

describe('expiry', () => {
  it('closes a connection with 4402 TOKEN_EXPIRED, after an error message, when its token expires', async () => {
    const t = await issue({ mode: 'ro', ttl: '2s' });
    const v = await ConsoleViewer.connect(d.url, 'vm', { token: t.token });
    const { code, reason } = await v.closed;
    expect({ code, reason }).toEqual({ code: 4402, reason: 'TOKEN_EXPIRED' });
    expect(v.messages.at(-1)).toMatchObject({ type: 'error', code: 'TOKEN_EXPIRED' });
    // Not before the token's expiry.
    expect(Date.now()).toBeGreaterThanOrEqual(Date.parse(t.expiresAt));
    await waitFor('the audit line', () => auditLines('console.expire').find((l) => l['jti'] === t.id));
    const detach = await waitFor('the detach line', () =>
      auditLines('console.detach').find((l) => l['jti'] === t.id),
    );
    expect(detach).toMatchObject({ code: 4402, reason: 'TOKEN_EXPIRED' });
  });

  it('stays open past the expiry once renewed in band, and goes on getting output', async () => {
    const t = await issue({ mode: 'ro', ttl: '2s', renewableFor: '1m' });
    expect(Date.parse(t.renewableUntil!)).toBeGreaterThan(Date.parse(t.expiresAt));
    const v = await ConsoleViewer.connect(d.url, 'vm', { token: t.token });
    await sleep(1100); // into the token's next second, so the renewal reaches further
    const answer = await renew(v);
    expect(answer).toMatchObject({ type: 'token', renewed: true });
    const renewed = answer['token'] as string;
    expect(claims(renewed)).toMatchObject({ chn: t.id, ren: claims(t.token).ren });
    expect(Date.parse(answer['expiresAt'] as string)).toBeGreaterThan(Date.parse(t.expiresAt));
    // Past the first token's expiry: still open, still getting the guest's output.
    await waitFor('the first expiry to pass', () => Date.now() > Date.parse(t.expiresAt) + 200);
    peer.send('after-the-first-expiry\r\n');
    await v.waitForText('after-the-first-expiry');
    expect(v.closeInfo).toBeNull();
    // The renewed token opens a console of its own (it is not single-use).
    const w = await ConsoleViewer.connect(d.url, 'vm', { token: renewed });
    await w.close();
    // Without another renewal it ends at the renewed expiry.
    expect(await v.closed).toEqual({ code: 4402, reason: 'TOKEN_EXPIRED' });
    expect(Date.now()).toBeGreaterThanOrEqual(Date.parse(answer['expiresAt'] as string));
    const line = auditLines('console.renew').find((l) => l['jti'] === t.id);
    expect(line).toMatchObject({ newJti: answer['id'], chain: t.id });
  });

  it('refuses to renew a token without ren, or past it, with TOKEN_NOT_RENEWABLE, and keeps the connection', async () => {
    const plain = await issue({ mode: 'ro', ttl: '1m' });
    const v = await ConsoleViewer.connect(d.url, 'vm', { token: plain.token });
    expect(await renew(v)).toMatchObject({ type: 'error', code: 'TOKEN_NOT_RENEWABLE' });
    // A signed token whose renewal time has passed (the API never issues one: ren >= exp).
    const stale = issueViewerToken(Buffer.from(SECRET), {
      guest: 'vm',
      mode: 'ro',
      ttlMs: 60_000,
      renewableUntilMs: Date.now() - 5_000,
    });
    const w = await ConsoleViewer.connect(d.url, 'vm', { token: stale });
    const refused = await renew(w);
    expect(refused).toMatchObject({ type: 'error', code: 'TOKEN_NOT_RENEWABLE' });
    expect(refused['message']).toMatch(/renewable until/);
    // The admin token does not expire: nothing to renew.
    const admin = await ConsoleViewer.connect(d.url, 'vm', { token: d.token });
    expect(await renew(admin)).toMatchObject({ type: 'error', code: 'TOKEN_NOT_RENEWABLE' });
    peer.send('still-open\r\n');
    for (const viewer of [v, w, admin]) {
      await viewer.waitForText('still-open');
      expect(viewer.closeInfo).toBeNull();
      await viewer.close();
    }
  });

  it('renews a single-use session: the renewal is its next reconnect key and the key it replaces is spent', async () => {
    const t = await issue({ mode: 'ro', ttl: '1m', singleUse: true, renewableFor: '10m' });
    const v = await ConsoleViewer.connect(d.url, 'vm', { token: t.token });
    const successor = await v.waitFor('token');
    expect(successor['renewed']).toBeUndefined();
    expect(claims(successor['token'] as string)).toMatchObject({ chn: t.id, ren: claims(t.token).ren });
    const renewal = await renew(v);
    expect(claims(renewal['token'] as string)).toMatchObject({ chn: t.id, once: true });
    await v.close();
    expect(await ConsoleViewer.refusal(d.url, 'vm', { token: successor['token'] as string })).toMatchObject({
      kind: 'close',
      reason: 'TOKEN_REUSED',
    });
    const next = await ConsoleViewer.connect(d.url, 'vm', { token: renewal['token'] as string });
    await next.close();
  });

  it('issues renewable tokens only within console.maxSessionTtlMs, and for at least their ttl', async () => {
    const tooLong = await d.api('POST', '/v1/guests/vm/tokens', {
      mode: 'ro',
      ttl: '1m',
      renewableFor: '13h',
    });
    expect(tooLong.status).toBe(400);
    expect(((await tooLong.json()) as { error: { code: string } }).error.code).toBe('BAD_PARAMETER');
    const tooShort = await d.api('POST', '/v1/guests/vm/tokens', {
      mode: 'ro',
      ttl: '10m',
      renewableFor: '1m',
    });
    expect(tooShort.status).toBe(400);
    const ok = await issue({ mode: 'ro', ttl: '10m', renewableFor: '12h' });
    expect(Date.parse(ok.renewableUntil!) - Date.now()).toBeGreaterThan(12 * 3_600_000 - 60_000);
  });
});

describe('revocation', () => {
  it('ends the live sessions of a chain, refuses its tokens, and holds across a restart', async () => {
    const t = await issue({ mode: 'ro', ttl: '10m', renewableFor: '1h' });
    const v = await ConsoleViewer.connect(d.url, 'vm', { token: t.token });
    await sleep(1100);
    const renewed = (await renew(v))['token'] as string;
    // A second session, on the renewed token: the same chain.
    const w = await ConsoleViewer.connect(d.url, 'vm', { token: renewed });
    const other = await issue({ mode: 'ro', ttl: '10m' });
    const bystander = await ConsoleViewer.connect(d.url, 'vm', { token: other.token });

    const bad = await d.api('DELETE', '/v1/tokens/not.a.jti');
    expect(bad.status).toBe(400);
    expect(((await bad.json()) as { error: { code: string } }).error.code).toBe('BAD_PARAMETER');

    const answer = await d.json<{ revoked: string; until: string; endedSessions: number; shared: boolean }>(
      'DELETE',
      `/v1/tokens/${t.id}`,
    );
    expect(answer).toMatchObject({ revoked: t.id, endedSessions: 2, shared: false });
    // Held at least as long as the longest token or session (24 h by default).
    expect(Date.parse(answer.until) - Date.now()).toBeGreaterThan(23 * 3_600_000);
    for (const viewer of [v, w]) {
      expect(await viewer.closed).toEqual({ code: 4407, reason: 'TOKEN_REVOKED' });
      expect(viewer.messages.at(-1)).toMatchObject({ type: 'error', code: 'TOKEN_REVOKED' });
    }
    expect(bystander.closeInfo).toBeNull();
    await bystander.close();
    for (const token of [t.token, renewed]) {
      expect(await ConsoleViewer.refusedBothWays(d.url, 'vm', token)).toMatchObject({
        frame: { kind: 'close', closeCode: 4407, reason: 'TOKEN_REVOKED' },
        header: { kind: 'http', status: 401, code: 'TOKEN_REVOKED' },
      });
    }
    const journal = join(d.stateDir, 'revoked-tokens');
    expect(((await stat(journal)).mode & 0o777).toString(8)).toBe('600');
    expect(await readFile(journal, 'utf8')).toContain(t.id);
    expect(auditLines('console.revoke').find((l) => l['id'] === t.id)).toMatchObject({
      endedSessions: 2,
      by: 'admin',
    });

    await d.restart();
    for (const token of [t.token, renewed]) {
      expect(await ConsoleViewer.refusal(d.url, 'vm', { token })).toMatchObject({
        kind: 'close',
        reason: 'TOKEN_REVOKED',
      });
    }
    // Revoking a renewed token's own id ends only what uses that token.
    const again = await issue({ mode: 'ro', ttl: '10m' });
    const x = await ConsoleViewer.connect(d.url, 'vm', { token: again.token });
    const r = await d.json<{ endedSessions: number }>('DELETE', `/v1/tokens/${again.id}`);
    expect(r.endedSessions).toBe(1);
    expect((await x.closed).reason).toBe('TOKEN_REVOKED');
  });
});
