/**
 * `consolectl token`, `consolectl console` and `consolectl revoke` (the built binary)
 * against a real daemon: a token printed by the CLI opens the console; the interactive
 * client types into the guest (a TCP peer that answers in upper case) and leaves on the
 * escape character; a read-only session's keystrokes never reach the guest; a session
 * outlives its short token by renewing it in band; a revoked token's session ends.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import { PassThrough } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runConsoleClient } from '../../cli/console-client.js';
import { ERROR_CODES } from '../../common/errors.js';
import { ConsoleViewer } from '../support/console-viewer.js';
import {
  CONSOLECTL_BIN,
  closeAllPeers,
  type InProcessDaemon,
  REPO_ROOT,
  runConsolectl,
  SocketPeer,
  startInProcessDaemon,
  stopAllInProcessDaemons,
} from '../support/daemon.js';
import { removeTmpDirs } from '../support/tmp.js';
import { sleep, waitFor } from '../support/wait.js';

let d: InProcessDaemon;
let peer: SocketPeer;

beforeAll(async () => {
  d = await startInProcessDaemon();
  peer = await SocketPeer.listen();
  // The guest answers every keystroke in upper case, like a shell echoing.
  peer.onConnection = (socket) =>
    socket.on('data', (chunk: Buffer) => socket.write(chunk.toString('latin1').toUpperCase()));
  await d.api('PUT', '/v1/guests/cli', { source: { type: 'tcp', host: '127.0.0.1', port: peer.port } });
  await peer.waitForConnections(1);
});

afterAll(async () => {
  await stopAllInProcessDaemons();
  await closeAllPeers();
  await removeTmpDirs();
});

interface Session {
  child: ChildProcess;
  stdout: () => string;
  stderr: () => string;
}

function consoleSession(args: string[]): Session {
  const child = spawn(
    process.execPath,
    [CONSOLECTL_BIN, '--url', d.url, '--token', d.token, 'console', 'cli', ...args],
    {
      cwd: REPO_ROOT,
      stdio: ['pipe', 'pipe', 'pipe'],
    },
  );
  let out = '';
  let err = '';
  child.stdout!.on('data', (c: Buffer) => {
    out += c.toString('latin1');
  });
  child.stderr!.on('data', (c: Buffer) => {
    err += c.toString('utf8');
  });
  return { child, stdout: () => out, stderr: () => err };
}

describe('consolectl token', () => {
  it('prints a token that opens the console with its mode and name', async () => {
    const r = await runConsolectl(d, ['token', 'cli', '--mode', 'rw', '--ttl', '10m', '--name', 'ci']);
    expect(r.code, r.stderr).toBe(0);
    const token = r.stdout.toString().trim();
    expect(token).toMatch(/^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/);
    expect(r.stderr).toContain(`${d.url}/console/cli#token=${token}`);
    const v = await ConsoleViewer.connect(d.url, 'cli', { token });
    expect(v.welcome).toMatchObject({ mode: 'rw', name: 'ci' });
    await v.close();

    const single = await runConsolectl(d, [
      'token',
      'cli',
      '--mode',
      'ro',
      '--ttl',
      '1m',
      '--single-use',
      '--json',
    ]);
    const answer = JSON.parse(single.stdout.toString()) as { token: string; id: string; expiresAt: string };
    const s = await ConsoleViewer.connect(d.url, 'cli', { token: answer.token });
    await s.close();
    expect((await ConsoleViewer.refusal(d.url, 'cli', { token: answer.token })).kind).toBe('close');

    const bad = await runConsolectl(d, ['token', 'cli', '--mode', 'rw', '--ttl', '10']);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toContain('BAD_PARAMETER');

    const renewable = await runConsolectl(d, ['token', 'cli', '--ttl', '5m', '--renewable-for', '1h']);
    expect(renewable.code, renewable.stderr).toBe(0);
    expect(renewable.stderr).toMatch(/, renewable until \d{4}-\d\d-\d\dT/);
  });
});

describe('consolectl revoke', () => {
  it('revokes a token: its session ends, and it says so', async () => {
    const issued = await runConsolectl(d, ['token', 'cli', '--mode', 'ro', '--ttl', '10m', '--json']);
    const answer = JSON.parse(issued.stdout.toString()) as { token: string; id: string };
    const v = await ConsoleViewer.connect(d.url, 'cli', { token: answer.token });
    const r = await runConsolectl(d, ['revoke', answer.id]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout.toString()).toMatch(
      new RegExp(
        `^revoked ${answer.id} until \\S+: 1 session\\(s\\) ended here; this host only \\(no Redis\\)\n$`,
      ),
    );
    expect(await v.closed).toEqual({ code: 4407, reason: 'TOKEN_REVOKED' });
    const bad = await runConsolectl(d, ['revoke', 'not/an/id']);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toContain('BAD_PARAMETER');
  });
});

describe('consolectl console', () => {
  it('types into the guest and leaves on the escape character', async () => {
    const s = consoleSession([]);
    await waitFor('the client to connect', () => s.stderr().includes('you hold the writer lock'));
    s.child.stdin!.write('hello-cli\r');
    await waitFor('the echo', () => s.stdout().includes('HELLO-CLI'));
    expect(peer.received.toString()).toContain('hello-cli\r');
    s.child.stdin!.write('\x1d');
    const [code] = (await once(s.child, 'exit')) as [number];
    expect(code).toBe(0);
  });

  it('a read-only session watches and cannot type', async () => {
    const ro = (await runConsolectl(d, ['token', 'cli', '--mode', 'ro', '--ttl', '1m'])).stdout
      .toString()
      .trim();
    const s = consoleSession(['--mode', 'ro', '--token', ro]);
    await waitFor('the client to connect', () => s.stderr().includes('connected to cli'));
    const before = peer.received.length;
    s.child.stdin!.write('sneaky\r');
    peer.send('from-the-guest');
    await waitFor('guest output', () => s.stdout().includes('from-the-guest'));
    // The client says it dropped the keys: past this point they are not going to be sent.
    await waitFor('the read-only notice', () => s.stderr().includes('read-only: keystrokes are not sent'));
    expect(peer.received.length).toBe(before);
    s.child.stdin!.end();
    const [code] = (await once(s.child, 'exit')) as [number];
    expect(code).toBe(0);
  });

  it('exits 1 with the code when refused', async () => {
    const s = consoleSession(['--token', 'forged.token']);
    const [code] = (await once(s.child, 'exit')) as [number];
    expect(code).toBe(1);
    // Refused before the upgrade: the code and message come from the error body.
    expect(s.stderr()).toMatch(/refused: TOKEN_INVALID \(.+\)/);
  });

  it('renews its token in band: a session minted with --ttl 3s is still there, and getting output, after it', async () => {
    const s = consoleSession(['--ttl', '3s']);
    await waitFor('the client to connect', () => s.stderr().includes('you hold the writer lock'));
    // The minted token expires 3 to 4 s after it was issued, which was before the connection.
    await sleep(4500);
    peer.send('output-after-the-first-token');
    await waitFor('the late output', () => s.stdout().includes('output-after-the-first-token'));
    expect(s.child.exitCode).toBeNull();
    expect(s.stderr()).not.toContain('TOKEN_EXPIRED');
    const metrics = await (await d.api('GET', '/metrics')).text();
    const renewals = Number(/^consoled_console_token_renewals_total (\d+)$/m.exec(metrics)?.[1]);
    expect(renewals).toBeGreaterThanOrEqual(1);
    s.child.stdin!.write('\x1d');
    const [code] = (await once(s.child, 'exit')) as [number];
    expect(code).toBe(0);
  });

  it('explains a close by the error code in its reason, with the code’s text', async () => {
    // No token: an anonymous auth frame, which this daemon (auth required) closes 4401 UNAUTHORIZED.
    const stdin = new PassThrough();
    const stderr = new PassThrough();
    let err = '';
    stderr.on('data', (c: Buffer) => {
      err += c.toString('utf8');
    });
    const res = await runConsoleClient({
      url: `${d.url.replace(/^http/, 'ws')}/v1/guests/cli/console`,
      mode: 'ro',
      stdin,
      stdout: new PassThrough(),
      stderr,
    });
    expect(res).toMatchObject({ exitCode: 1, reason: 'closed', code: 'UNAUTHORIZED', closeCode: 4401 });
    expect(err).toContain(`connection closed: UNAUTHORIZED (${ERROR_CODES.UNAUTHORIZED.text})`);
  });
});
